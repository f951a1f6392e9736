"""The dot unit in amaranth.sim against the golden model (docs/numerics.md §8): every variant and
pipeline depth under idle cycles and back-pressure, full-rate throughput and latency, the overflow flag
at the accumulator's bound, reduction markers, and parameter validation."""

import pytest
import torch

from fgmp import golden
from fgmp.hw import DotUnit
from fgmp.hw.dot import CUTS, MAX_PIPELINE_STAGES
from amaranth import ClockDomain, Module
from amaranth.sim import Simulator

from fgmp.sim.dot_stimuli import (ONE_SCALE, PayloadPacker, Reduction, exhaustive_reductions,
                                  expected_results, random_reductions)
from rtl_ops import rtl_dot, rtl_dot_words, rtl_readiness

B = 16
NAN = golden.CANONICAL_NAN_BITS


def _bt(codes, scales, precision):
    return golden.BlockTensor(codes=torch.as_tensor(codes, dtype=torch.uint8),
                              scales=torch.as_tensor(scales, dtype=torch.uint8),
                              precision=torch.as_tensor(precision, dtype=torch.bool),
                              global_scale=torch.tensor(1.0))


def _uniform(lanes, n, code, scale, fp8=True):
    return _bt([[[code] * B] * n] * lanes, [[scale] * n] * lanes, [[fp8] * n] * lanes)


DEPTHS = list(range(MAX_PIPELINE_STAGES + 1))


@pytest.mark.parametrize("pipeline_stages", DEPTHS)
def test_fgmp_unit_matches_golden_under_stalls(pipeline_stages):
    unit = DotUnit(lanes=4, pipeline_stages=pipeline_stages, max_blocks=64)
    reductions = random_reductions(lanes=4, formats=unit.formats, block_size=B, count=50, max_blocks=20,
                                   seed=pipeline_stages)
    results, overflows, _, _ = rtl_dot(unit, reductions, idle=0.3, backpressure=0.4, seed=pipeline_stages)
    assert results == expected_results(reductions)
    assert len(results) == 50 and not any(overflows)


@pytest.mark.parametrize("pipeline_stages", DEPTHS)
def test_split_datapath_matches_golden_under_stalls(pipeline_stages):
    """FP4xFP4 pairs on the narrow path, the others on the wide one, switching from block to block and
    lane to lane."""
    unit = DotUnit(lanes=3, pipeline_stages=pipeline_stages, max_blocks=32, datapath="split")
    reductions = random_reductions(lanes=3, formats=unit.formats, block_size=B, count=30, max_blocks=12,
                                   seed=10 + pipeline_stages)
    results, overflows, _, _ = rtl_dot(unit, reductions, idle=0.3, backpressure=0.4, seed=pipeline_stages)
    assert results == expected_results(reductions)
    assert not any(overflows)


def test_split_datapath_every_fp4_code_against_every_fp4_and_fp8_activation():
    """Both paths on every NVFP4 weight code (cocotb covers all pairs)."""
    unit = DotUnit(lanes=16, pipeline_stages=0, datapath="split")
    reductions, _ = exhaustive_reductions(lanes=16, formats=unit.formats, block_size=B)
    subset = [r for r in reductions if not r.weights.precision.any()]
    results, _, _, _ = rtl_dot(unit, subset)
    assert results == expected_results(subset)


@pytest.mark.parametrize("pipeline_stages", [1, MAX_PIPELINE_STAGES])
@pytest.mark.parametrize("formats,lanes", [(("fp8",), 3), (("nvfp4",), 3), (("nvfp4", "fp8"), 1)])
def test_variants_match_golden_under_stalls(formats, lanes, pipeline_stages):
    unit = DotUnit(lanes=lanes, formats=formats, pipeline_stages=pipeline_stages, max_blocks=32)
    reductions = random_reductions(lanes=lanes, formats=formats, block_size=B, count=50, max_blocks=16, seed=9)
    results, overflows, _, _ = rtl_dot(unit, reductions, idle=0.2, backpressure=0.2, seed=4)
    assert results == expected_results(reductions)
    assert not any(overflows)


def test_fp4_only_unit_every_code_pair():
    unit = DotUnit(lanes=4, formats=("nvfp4",))
    reductions, pairs = exhaustive_reductions(lanes=4, formats=unit.formats, block_size=B)
    results, _, _, _ = rtl_dot(unit, reductions)
    assert pairs == 256 and results == expected_results(reductions)


def test_mixed_pairings_every_fp4_code_against_every_fp4_and_fp8_activation():
    """FP4xFP4 and FP4xFP8 on the FGMP unit (the cocotb bench covers all four pairings exhaustively)."""
    unit = DotUnit(lanes=16, pipeline_stages=0)
    reductions, _ = exhaustive_reductions(lanes=16, formats=unit.formats, block_size=B)
    subset = [r for r in reductions if not r.weights.precision.any()]
    assert len(subset) == 16 + 256
    results, _, _, _ = rtl_dot(unit, subset)
    assert results == expected_results(subset)


@pytest.mark.parametrize("pipeline_stages", DEPTHS)
@pytest.mark.parametrize("datapath", ["shared", "split"])
def test_full_rate_throughput_and_latency(pipeline_stages, datapath):
    """Without idle or back-pressure the unit takes a block pair on every cycle (II = 1), and a result
    appears ``latency`` cycles after its last block: two registers and one per cut; the split datapath's
    operand registers add one until the depth includes the decode cut, which they then stand in for."""
    unit = DotUnit(lanes=2, pipeline_stages=pipeline_stages, datapath=datapath)
    reductions = random_reductions(lanes=2, formats=unit.formats, block_size=B, count=20, max_blocks=6, seed=1)
    results, _, accepted, delivered = rtl_dot(unit, reductions)
    assert results == expected_results(reductions)
    total = sum(r.blocks for r in reductions)
    assert accepted == list(range(accepted[0], accepted[0] + total))
    assert unit.latency == pipeline_stages + 2 + (datapath == "split" and pipeline_stages <= CUTS.index("decode"))
    last_blocks = [accepted[sum(r.blocks for r in reductions[:k + 1]) - 1] for k in range(len(reductions))]
    assert [d - a for d, a in zip(delivered, last_blocks)] == [unit.latency] * len(reductions)


@pytest.mark.parametrize("sign", [0x00, 0x80])
def test_largest_reduction_fits_and_one_more_block_is_flagged(sign):
    """All-448 blocks at scale 448, the largest term, over max_blocks blocks are exact; max_blocks + 1
    blocks raise the overflow flag."""
    unit = DotUnit(lanes=1, max_blocks=8, pipeline_stages=0)
    reductions = [Reduction(_uniform(1, n, 0x7E | sign, 0x7E), _uniform(1, n, 0x7E, 0x7E)) for n in (8, 9, 1, 20)]
    results, overflows, _, _ = rtl_dot(unit, reductions)
    assert overflows == [0, 1, 0, 1]
    expected = expected_results(reductions)
    assert results[0] == expected[0] and results[2] == expected[2]
    assert golden.bits_to_float32(torch.tensor(results[0])).item() == (-1) ** bool(sign) * 8 * B * 448.0**4


def test_default_accumulator_holds_max_blocks_of_largest_terms():
    unit = DotUnit(lanes=1, pipeline_stages=0)
    assert unit.max_blocks == 1024 and unit.accumulator_width == 87
    n = unit.max_blocks
    reductions = [Reduction(_uniform(1, n, 0x7E, 0x7E), _uniform(1, n, 0xFE, 0x7E))]
    results, overflows, _, _ = rtl_dot(unit, reductions)
    assert overflows == [0] and results == expected_results(reductions)


def test_block_after_last_starts_a_new_reduction_without_first():
    """A missing ``first`` cannot fold one reduction into the next."""
    unit = DotUnit(lanes=1, pipeline_stages=1)
    ones, twos = _uniform(1, 2, 0x38, ONE_SCALE), _uniform(1, 2, 0x40, ONE_SCALE)
    reductions = [Reduction(ones, ones), Reduction(twos, ones)]
    results, _, _, _ = rtl_dot(unit, reductions, drop_first=True)
    assert results == expected_results(reductions) == [[0x42000000], [0x42800000]]  # 32.0, 64.0


@pytest.mark.parametrize("datapath", ["shared", "split"])
def test_nan_stays_in_its_lane_and_clears_with_the_next_reduction(datapath):
    unit = DotUnit(lanes=2, pipeline_stages=0, datapath=datapath)
    poisoned = _bt([[[0x38] * B] * 2, [[0x38] * B] * 2], [[ONE_SCALE, 0x7F], [ONE_SCALE] * 2], [[True] * 2] * 2)
    clean = _uniform(2, 2, 0x38, ONE_SCALE)
    x = _uniform(1, 2, 0x38, ONE_SCALE)
    results, _, _, _ = rtl_dot(unit, [Reduction(poisoned, x), Reduction(clean, x)])
    assert results == [[NAN, 0x42000000], [0x42000000, 0x42000000]]


@pytest.mark.parametrize("datapath", ["shared", "split"])
def test_fgmp_unit_ignores_the_high_nibble_of_nvfp4_codes(datapath):
    unit = DotUnit(lanes=1, pipeline_stages=0, datapath=datapath)
    clean = _uniform(1, 1, 0x03, ONE_SCALE, fp8=False)  # E2M1 1.5
    dirty = _uniform(1, 1, 0xF3, ONE_SCALE, fp8=False)
    for x in (_uniform(1, 1, 0x38, ONE_SCALE), _uniform(1, 1, 0x02, ONE_SCALE, fp8=False)):  # FP8 1.0, E2M1 1.0
        results, _, _, _ = rtl_dot(unit, [Reduction(clean, x), Reduction(dirty, x)])
        assert results == [[0x41C00000], [0x41C00000]]  # 16 * 1.5 = 24.0


def test_widths_follow_the_numerics_contract():
    fgmp = DotUnit(lanes=1)
    assert (fgmp.product_bits, fgmp.block_sum_bits, fgmp.product_lsb_exponent) == (36, 40, -18)
    assert fgmp.accumulator_lsb_exponent == golden.ACCUMULATOR_LSB_EXPONENT == -36
    assert DotUnit(lanes=1, max_blocks=1).accumulator_width == 73 + 4
    assert DotUnit(lanes=1, block_size=32, max_blocks=4096).accumulator_width == 73 + 5 + 12
    fp4 = DotUnit(lanes=1, formats=("nvfp4",))
    assert (fp4.product_bits, fp4.product_lsb_exponent, fp4.accumulator_lsb_exponent) == (8, -2, -20)
    assert fp4.accumulator_width < fgmp.accumulator_width
    assert DotUnit(lanes=1, formats=("fp8", "nvfp4")).formats == ("nvfp4", "fp8")
    split = DotUnit(lanes=1, datapath="split")  # the narrow path joins the same exact accumulator
    assert (split.product_bits, split.product_lsb_exponent, split.accumulator_width) == (36, -18, 87)
    assert split.datapath == "split" and fgmp.datapath == "shared"


def test_properties_are_read_only():
    unit = DotUnit(lanes=2)
    with pytest.raises(AttributeError):
        unit.lanes = 3


@pytest.mark.parametrize("pipeline_stages,datapath", [(0, "shared"), (3, "split"), (MAX_PIPELINE_STAGES, "shared"),
                                                     (MAX_PIPELINE_STAGES, "split")])
def test_credit_flow_control_matches_golden_under_stalls(pipeline_stages, datapath):
    """Credit flow control: the registers run free and results queue; long back-pressure fills the queue
    (one-block reductions are frequent here), no result is lost or reordered."""
    unit = DotUnit(lanes=3, pipeline_stages=pipeline_stages, max_blocks=32, datapath=datapath, flow_control="credit")
    assert unit.result_entries == unit.latency + 1
    reductions = random_reductions(lanes=3, formats=unit.formats, block_size=B, count=60, max_blocks=3,
                                   seed=20 + pipeline_stages)
    results, overflows, _, _ = rtl_dot(unit, reductions, idle=0.2, backpressure=0.7, seed=pipeline_stages)
    assert results == expected_results(reductions)
    assert not any(overflows)


@pytest.mark.parametrize("pipeline_stages", [0, 5, MAX_PIPELINE_STAGES])
def test_credit_flow_control_full_rate_with_one_block_reductions(pipeline_stages):
    """II = 1 and the same latency as the stall discipline, even when every block ends a reduction (each
    takes a credit for ``latency`` cycles)."""
    unit = DotUnit(lanes=2, pipeline_stages=pipeline_stages, flow_control="credit")
    stall = DotUnit(lanes=2, pipeline_stages=pipeline_stages)
    assert unit.latency == stall.latency and stall.result_entries == 0
    reductions = [r for r in random_reductions(lanes=2, formats=unit.formats, block_size=B, count=90, max_blocks=1,
                                               seed=3) if r.blocks == 1]
    assert len(reductions) > 3 * unit.result_entries
    results, _, accepted, delivered = rtl_dot(unit, reductions)
    assert results == expected_results(reductions)
    assert accepted == list(range(accepted[0], accepted[0] + len(reductions)))
    assert [d - a for d, a in zip(delivered, accepted)] == [unit.latency] * len(reductions)


def test_credit_flow_control_ready_does_not_follow_the_sink():
    """``i.ready`` comes from the credit count: a sink that stops does not take it away in the same cycle
    (under the stall discipline it does), and once the queue's entries are spoken for the unit stops."""
    def readiness(flow_control):
        unit = DotUnit(lanes=1, pipeline_stages=2, flow_control=flow_control)
        word = PayloadPacker(unit).words(random_reductions(lanes=1, formats=unit.formats, block_size=B, count=1,
                                                           max_blocks=1, seed=0))
        return unit, rtl_readiness(unit, next(iter(word)), cycles=unit.latency + 6)

    unit, seen = readiness("credit")
    assert all(with_sink == without for with_sink, without in seen)
    # Every block ends a reduction and nothing leaves: the first edge and result_entries - 1 more take one,
    # then none.
    taken = unit.result_entries - 1
    assert [ready for ready, _ in seen] == [1] * taken + [0] * (len(seen) - taken)
    _, seen = readiness("stall")
    assert any(with_sink != without for with_sink, without in seen)


@pytest.mark.parametrize("kwargs,error,message", [
    ({"lanes": 1, "flow_control": "skid"}, ValueError, "Unknown flow control 'skid'; choose from 'stall', 'credit'"),
    ({"lanes": 1, "flow_control": 1}, TypeError, "Flow control must be one of 'stall', 'credit', not 1"),
    ({"lanes": 0}, ValueError, "Lanes must be at least 1, not 0"),
    ({"lanes": 2.0}, TypeError, "Lanes must be an integer, not 2.0"),
    ({"lanes": True}, TypeError, "Lanes must be an integer, not True"),
    ({"lanes": 1, "block_size": 0}, ValueError, "Block size must be at least 1, not 0"),
    ({"lanes": 1, "max_blocks": 0}, ValueError, "Maximum blocks must be at least 1, not 0"),
    ({"lanes": 1, "max_blocks": "8"}, TypeError, "Maximum blocks must be an integer, not '8'"),
    ({"lanes": 1, "pipeline_stages": MAX_PIPELINE_STAGES + 1}, ValueError,
     f"Pipeline stages must be between 0 and {MAX_PIPELINE_STAGES}, not {MAX_PIPELINE_STAGES + 1}"),
    ({"lanes": 1, "pipeline_stages": None}, TypeError, "Pipeline stages must be an integer, not None"),
    ({"lanes": 1, "formats": ["fp8"]}, TypeError, "Formats must be a tuple of format names, not ['fp8']"),
    ({"lanes": 1, "formats": ()}, ValueError, "Formats must name at least one of 'nvfp4', 'fp8'"),
    ({"lanes": 1, "formats": ("fp6",)}, ValueError, "Unknown format 'fp6'; choose from 'nvfp4', 'fp8'"),
    ({"lanes": 1, "formats": ("fp8", "fp8")}, ValueError, "Formats must not repeat, not ('fp8', 'fp8')"),
    ({"lanes": 1, "datapath": "wide"}, ValueError, "Unknown datapath 'wide'; choose from 'shared', 'split'"),
    ({"lanes": 1, "datapath": None}, TypeError, "Datapath must be one of 'shared', 'split', not None"),
    ({"lanes": 1, "formats": ("fp8",), "datapath": "split"}, ValueError,
     "The split datapath needs both formats ('nvfp4', 'fp8'), not ('fp8',)"),
    ({"lanes": 1, "formats": ("nvfp4",), "datapath": "split"}, ValueError,
     "The split datapath needs both formats ('nvfp4', 'fp8'), not ('nvfp4',)"),
])
def test_invalid_parameters_raise_clear_errors(kwargs, error, message):
    with pytest.raises(error) as info:
        DotUnit(**kwargs)
    assert str(info.value) == message


def test_parameters_are_keyword_only():
    with pytest.raises(TypeError):
        DotUnit(4)


def test_first_in_the_middle_of_a_reduction_restarts_it():
    unit = DotUnit(lanes=1, pipeline_stages=0)
    x = _uniform(1, 3, 0x38, ONE_SCALE)
    w = _bt([[[0x38] * B, [0x40] * B, [0x48] * B]], [[ONE_SCALE] * 3], [[True] * 3])  # 1, 2, 4
    words = list(PayloadPacker(unit).words([Reduction(w, x)]))
    first_bit = 1 << dict(unit.i.payload.shape())["first"].offset
    words[2] |= first_bit  # the third block restarts: only 16 * 4 = 64 remains
    results, _, _, _ = rtl_dot_words(unit, words, expected_results=1)
    assert results == [[0x42800000]]


def test_nvfp4_activation_bytes_with_nan_patterns_are_e2m1_codes():
    """0x7F and 0xFF in an NVFP4 activation block are E2M1 0xF (-6), never NaN."""
    unit = DotUnit(lanes=1, pipeline_stages=0)
    w = _uniform(1, 1, 0x38, ONE_SCALE)
    x = _bt([[[0x7F] * (B // 2) + [0xFF] * (B // 2)]], [[ONE_SCALE]], [[False]])
    results, _, _, _ = rtl_dot(unit, [Reduction(w, x)])
    assert results == expected_results([Reduction(w, x)]) == [[0xC2C00000]]  # 16 * -6 = -96


def test_other_block_sizes_match_golden():
    unit = DotUnit(lanes=2, block_size=4, max_blocks=16, pipeline_stages=2)
    reductions = random_reductions(lanes=2, formats=unit.formats, block_size=4, count=40, max_blocks=12, seed=6)
    results, _, _, _ = rtl_dot(unit, reductions, idle=0.2, backpressure=0.2)
    assert results == expected_results(reductions)


def test_random_suites_exercise_nan_and_zero_results():
    reductions = random_reductions(lanes=4, formats=("nvfp4", "fp8"), block_size=B, count=50, max_blocks=20, seed=0)
    flat = [bits for lanes in expected_results(reductions) for bits in lanes]
    assert flat.count(NAN) > 0 and flat.count(0) > 0 and len(set(flat)) > 100


def test_not_ready_during_reset():
    unit = DotUnit(lanes=1, pipeline_stages=0)
    m = Module()
    m.domains.sync = domain = ClockDomain()
    m.submodules.dut = unit
    seen = []

    async def testbench(ctx):
        ctx.set(unit.o.ready, 1)
        seen.append(ctx.get(unit.i.ready))
        ctx.set(domain.rst, 1)
        seen.append(ctx.get(unit.i.ready))
        await ctx.tick()
        ctx.set(domain.rst, 0)
        seen.append(ctx.get(unit.i.ready))

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    assert seen == [1, 0, 1]


def test_reduction_longer_than_fp32_range_is_rejected():
    with pytest.raises(ValueError, match="A reduction of 309485009821345068724781056 blocks of 16 elements can "
                                         "exceed the FP32 range; reduce the maximum blocks or the block size"):
        DotUnit(lanes=1, max_blocks=1 << 88)
    assert DotUnit(lanes=1, max_blocks=1 << 86).accumulator_width == 163


@pytest.mark.parametrize("formats", [("nvfp4", "fp8"), ("fp8",), ("nvfp4",)])
def test_fast_payload_packer_equals_the_layout(formats):
    """PayloadPacker (used by every bench) against Amaranth's own layout packing and the generic packer."""
    from fgmp.sim.dot_stimuli import transactions
    from fgmp.sim.fields import pack_value, unpack_value

    unit = DotUnit(lanes=3, formats=formats)
    layout = unit.i.payload.shape()
    reductions = random_reductions(lanes=3, formats=formats, block_size=B, count=20, max_blocks=5, seed=3)
    payloads = list(transactions(unit, reductions))
    words = list(PayloadPacker(unit).words(reductions))
    assert len(words) == len(payloads) == sum(r.blocks for r in reductions)
    for word, payload in zip(words, payloads):
        assert word == pack_value(layout, payload) == layout.const(payload).as_value().value
        assert unpack_value(layout, word) == payload
