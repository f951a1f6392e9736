"""The energy proxy (fgmp/energy.py): Verilator toggle coverage read back per signal, grouped like the
synthesis breakdown and weighted by it; the layer cases it compares. The measured runs use a unit with
2-element blocks so that synthesis and the coverage build stay fast."""

import re

import pytest
import torch

from fgmp import golden
from fgmp.energy import (energy_proxy, energy_rows, fgmp_case, group_activity, layer_reductions, measure_energy,
                         uniform_case)
from fgmp.flow.area import flip_flop_transistors
from fgmp.sim.activity import Activity, read_toggles
from fgmp.sim.dot_stimuli import Reduction, random_reductions

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _point(hierarchy, signal, count, page="v_toggle/top"):
    fields = {"f": "top.v", "l": "3", "page": page, "o": signal, "h": hierarchy}
    return "C '" + "\x01".join(f"{k}\x02{v}" for k, v in fields.items()) + f"' {count}"


def test_read_toggles_sums_bits_and_directions_per_signal(tmp_path):
    path = tmp_path / "coverage.dat"
    path.write_text("\n".join([
        "# SystemC::Coverage-3",
        _point("top", "acc0[0]:0->1", 3), _point("top", "acc0[0]:1->0", 2), _point("top", "acc0[1]:0->1", 4),
        _point("top", "acc0[1]:1->0", 4), _point("top", "start:0->1", 1), _point("top", "start:1->0", 1),
        _point("top.x0_e4m3", "code[7]:0->1", 5),
        _point("top", "acc0[0]", 9, page="v_line/top"),  # not a toggle point
        _point("other", "acc0[0]:0->1", 9),  # not under the top
    ]) + "\n")
    toggles, bits = read_toggles(path, "top")
    assert toggles == {"acc0": 13, "start": 2, "x0_e4m3.code": 5}
    assert bits == {"acc0": 2, "start": 1, "x0_e4m3.code": 1}


def test_group_activity_follows_the_synthesis_groups_and_skips_what_has_no_gates():
    names = {
        "acc0": (10, 5), "p0_3": (6, 3), "x0_e4m3__02ecode": (4, 8), "t0_l1_0": (2, 2), "unnamed_thing": (1, 1),
        "__024101": (50, 4),  # an anonymous Amaranth wire
        "i__payload__02eactivation": (99, 9), "clk": (20, 1), "rst": (1, 1),  # inputs, clock and reset
        "o__payload": (30, 6), "o__payload__02eresults__05b0__05d": (12, 3),  # a struct and its field
        "o__payload__02eoverflow": (1, 1),
        "decoded__02eexponent": (7, 4),  # the parent-side copy of the first decoder's port
    }
    activity = Activity(toggles={n: t for n, (t, _) in names.items()}, bits={n: b for n, (_, b) in names.items()},
                        cycles=10, block_pairs=8)
    assert group_activity(activity) == {"accumulator": (10, 5), "multipliers": (6, 3), "decoders": (4 + 7, 8 + 4),
                                        "adder tree": (2, 2), "control": (1, 1), "FP32 conversion": (12 + 1, 3 + 1)}
    with pytest.raises(ValueError, match="Unknown unit kind .alu.; choose from dot, reference"):
        group_activity(activity, kind="alu")


def test_flip_flops_that_yosys_does_not_price_are_priced_at_its_gate_costs():
    assert flip_flop_transistors({"$_DFF_P_": 3, "$_AND_": 5}) == 0  # Yosys prices these itself
    assert flip_flop_transistors({"$_DFFE_PP_": 1}) == 16 + 12
    assert flip_flop_transistors({"$_SDFF_PP0_": 1}) == 16 + 6
    assert flip_flop_transistors({"$_SDFFE_PP0N_": 2}) == 2 * (16 + 12 + 6)
    assert flip_flop_transistors({"$_DFF_PP0_": 1}) == 16 + 6  # asynchronous reset


def test_layer_reductions_follow_the_engine_bench_order():
    weights = golden.quantize_blocks(torch.randn(5, 32), torch.rand(5, 2) < 0.5)
    activations = golden.quantize_blocks(torch.randn(3, 32), torch.rand(3, 2) < 0.5)
    reductions = layer_reductions(weights, activations, 2)
    assert len(reductions) == 3 * 3  # groups of rows (0, 1), (2, 3), (4, 4), each once per token
    last = reductions[-1]
    assert torch.equal(last.weights.codes, weights.codes[[4, 4]])
    assert torch.equal(last.activation.codes, activations.codes[[2]])
    assert torch.equal(reductions[1].activation.codes, activations.codes[[1]])
    with pytest.raises(ValueError, match=r"Weights are in blocks of shape \(2, 16\) per row, activations \(1, 16\)"):
        layer_reductions(weights, golden.quantize_blocks(torch.randn(3, 16), torch.zeros(3, 1, dtype=torch.bool)), 2)
    with pytest.raises(ValueError, match="Lanes must be at least 1, not 0"):
        layer_reductions(weights, activations, 0)
    with pytest.raises(TypeError, match="Lanes must be an integer, not 2.0"):
        layer_reductions(weights, activations, 2.0)


@pytest.fixture(scope="module")
def small_energy(tmp_path_factory):
    """A 1-lane FGMP unit with 2-element blocks on random reductions and on reductions of the same shapes
    whose blocks are all the same zero block: the second must switch far less."""
    from fgmp.jobs import step_pool

    params = {"lanes": 1, "block_size": 2, "max_blocks": 8}
    active = random_reductions(lanes=1, formats=("nvfp4", "fp8"), block_size=2, count=30, max_blocks=6, seed=3)
    quiet = [type(r)(weights=_zeroed(r.weights), activation=_zeroed(r.activation)) for r in active]
    # From a working directory away from the checkout into a relative one (the bench reads its stimuli
    # from its own directory), with the synthesis and the simulations side by side.
    with pytest.MonkeyPatch.context() as patch, step_pool(2) as pool:
        patch.chdir(tmp_path_factory.mktemp("energy"))
        return measure_energy(params, {"active": active, "quiet": quiet}, "relative/energy", pool=pool)


def _zeroed(bt):
    """Every element +0, every scale 1.0, every block FP8: nothing on the datapath changes between blocks."""
    return type(bt)(codes=torch.zeros_like(bt.codes), scales=torch.full_like(bt.scales, 0x38),
                    precision=torch.ones_like(bt.precision), global_scale=bt.global_scale)


@pytest.mark.cocotb
def test_energy_proxy_weights_every_group_and_tracks_switching(small_energy):
    active, quiet = small_energy
    assert active.block_pairs == quiet.block_pairs > 30 and active.cycles >= active.block_pairs
    expected = {"decoders", "multipliers", "adder tree", "scale path", "accumulator", "FP32 conversion",
                "pipeline registers", "control"}
    assert set(active.groups) == expected
    for group in active.groups.values():
        assert group["transistors"] > 0 and group["activity"] >= 0
        assert group["energy"] == pytest.approx(group["activity"] * group["transistors"])
    assert active.energy == pytest.approx(sum(g["energy"] for g in active.groups.values()))
    # Constant zero blocks leave the datapath still; control, the first / last markers and the block
    # counter (in the accumulator group) switch whatever the data.
    for group in ("decoders", "multipliers", "adder tree", "scale path", "FP32 conversion"):
        assert quiet.groups[group]["activity"] < 0.1 * active.groups[group]["activity"]
    assert quiet.energy < 0.2 * active.energy


def test_energy_proxy_rejects_an_area_without_the_breakdown():
    class Area:
        target = "ecp5"

        def group_transistor_estimates(self):
            return {}

    activity = Activity(toggles={"acc0": 1}, bits={"acc0": 1}, cycles=1, block_pairs=1)
    with pytest.raises(ValueError, match="needs the generic target's per-group transistor counts"):
        energy_proxy("x", activity, Area())
    with pytest.raises(ValueError, match="The activity of x covers no block pair"):
        energy_proxy("x", Activity(toggles={}, bits={}, cycles=3, block_pairs=0), Area())


def test_energy_rows_need_their_baseline():
    with pytest.raises(ValueError, match="No FP8-only case to compare with"):
        energy_rows([])


@pytest.fixture(scope="module")
def calibration_setup():
    from fgmp.quantize import prepare

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield prepare(None, calib_samples=2, eval_samples=2, progress=False)
    finally:
        torch.set_num_threads(threads)


def test_layer_cases_are_the_units_inputs(calibration_setup):
    from fgmp.e2e import capture_layer_input
    from fgmp.golden.policy import build_plan

    name = "blocks.0.mlp.up_proj"
    plan = build_plan(calibration_setup.calibration, policy="fgmp", fp8_fraction=0.3)
    x = capture_layer_input(calibration_setup, plan, name, 3)
    mixed = fgmp_case("FGMP", plan, name, x)
    want = golden.quantize_activations(x, plan.activations[name].config).blocks
    assert torch.equal(mixed.activations.codes, want.codes) and torch.equal(mixed.weights.codes,
                                                                           plan.weights[name].codes)
    assert 0 < mixed.weight_fp8 < 1
    fp8 = uniform_case("FP8-only", calibration_setup.calibration, name, x, "fp8")
    assert fp8.unit == "FP8-only" and fp8.weight_fp8 == fp8.activation_fp8 == 1.0
    fp4 = uniform_case("FP4-only", calibration_setup.calibration, name, x, "nvfp4")
    assert fp4.unit == "FP4-only" and fp4.weight_fp8 == fp4.activation_fp8 == 0.0
    with pytest.raises(ValueError, match="Precision must be 'fp8' or 'nvfp4', not 'fp16'"):
        uniform_case("x", calibration_setup.calibration, name, x, "fp16")
    # Same inputs: FP8 blocks of the layer input dequantize to within FP8's resolution of x.
    assert torch.allclose(golden.dequantize(fp8.activations), x.float(), rtol=2 ** -3, atol=1e-6)


@pytest.mark.cocotb
def test_split_datapath_holds_the_idle_path_still(tmp_path):
    """Toggle coverage of the split unit: on a stream of FP4xFP4 pairs only the FP8 path's operand
    registers, multipliers, adder tree and scale multiply never switch (its registers hold, no new values
    reach its logic), on FP8xFP8 or mixed pairs the FP4 path's; the running path switches. The one
    transition an idle path shows is each register whose initial value is 1 taking it when the simulation
    starts: the FP8 path's activation exponents and weight precision bits (the weight registers hold
    codes, initially 0, which decodes to a zero of exponent 1; the FP4 path holds both codes, so none of
    its registers starts at 1). The decoders after the registers (the FP8 path's weight decoders, the FP4
    path's weight and activation decoders) settle once at power-up and then hold too."""
    from fgmp.sim.activity import run_dot_activity

    params = {"lanes": 2, "block_size": 2, "max_blocks": 8, "pipeline_stages": 1, "datapath": "split"}
    paths = {"FP4": "n", "FP8": ""}  # the narrow path runs FP4xFP4 pairs, the wide one every other pairing

    def stream(weight, activation, seed):
        torch.manual_seed(seed)
        reductions = []
        for blocks in (1, 3, 2, 4) * 5:
            w = golden.quantize_blocks(torch.randn(2, 2 * blocks) * 4, torch.full((2, blocks), weight == "fp8"),
                                       block_size=2)
            x = golden.quantize_blocks(torch.randn(1, 2 * blocks) * 4, torch.full((1, blocks), activation == "fp8"),
                                       block_size=2)
            reductions.append(Reduction(weights=w, activation=x))
        return reductions

    def switching(activity, prefix):
        pattern = re.compile(rf"^{prefix}(op\d+_|p\d+_\d+(_shift)?$|t\d+_l\d+_\d+$|sum\d+(_q)?$|term\d+(_q)?$)")
        return sum(count for name, count in activity.toggles.items() if pattern.match(name))

    def decoders(activity, prefix):
        """(transitions, bits) of the path's decoders after its registers (per lane and element: the
        activation's decoders before the registers are named x<element>_..., with no lane)."""
        pattern = re.compile(rf"^{prefix}[xw]\d+_\d+_((sign|sig|exp)$|e(4m3|2m1)\.)")
        names = [name for name in activity.toggles if pattern.match(name)]
        return sum(activity.toggles[n] for n in names), sum(activity.bits[n] for n in names)

    for (weight, activation), running in {("nvfp4", "nvfp4"): "FP4", ("nvfp4", "fp8"): "FP8",
                                          ("fp8", "fp8"): "FP8"}.items():
        activity = run_dot_activity(params, stream(weight, activation, len(weight + activation)), tmp_path)
        assert activity.block_pairs > 20
        for path, prefix in paths.items():
            toggles = switching(activity, prefix)
            initialised = [name for name in activity.toggles if re.match(rf"^{prefix}op\d+_(\d+_a_exp|b_fp8)$", name)]
            assert len(initialised) == (path == "FP8") * (2 * 2 + 2)  # lanes x elements + lanes, FP8 path only
            if path == running:
                assert toggles > 10 * max(len(initialised), 2), f"{weight} x {activation}: its path switched {toggles} times"
            else:
                assert toggles == len(initialised), f"{weight} x {activation}: the {path} path switched {toggles} times"
            # An idle path's weight decoders only settle once at power-up (at most one transition per bit,
            # from 0 to what code 0 decodes to); a running path's switch with every pair.
            transitions, bits = decoders(activity, prefix)
            assert bits > 0
            if path == running:
                assert transitions > 2 * bits, f"{weight} x {activation}: its decoders switched {transitions} times"
            else:
                assert transitions <= bits, f"{weight} x {activation}: the {path} decoders switched {transitions} times"
