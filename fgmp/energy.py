"""The energy proxy (docs/results.md, "Energy proxy"): switching activity of the dot unit measured in
simulation on a model layer's real blocks, weighted by the synthesized size of each submodule.

For every submodule group g of the unit (decoders, multipliers, adder tree, scale path, accumulator,
FP32 conversion, pipeline registers, control; ``fgmp.flow.groups``):

    activity a_g = transitions of g's named signal bits / (named bits of g)      (Verilator toggle coverage)
    size     A_g = CMOS transistors of g, flip-flops included                    (Yosys, generic target)
    E            = sum_g a_g * A_g / block pairs

E is in transistor-toggles per block pair: the dynamic energy of a gate is proportional to how often
its output switches times its capacitance, taken here as proportional to its transistor count, and a
group's named signals stand for the switching of its gates. No wires, no memories or their reads, no
clock tree and no leakage are modelled; only ratios between units mean anything.
"""

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from fgmp.flow.area import synthesize
from fgmp.flow.groups import CONTROL, GROUP_RULES, name_group
from fgmp.flow.units import DOT_VARIANTS, make_unit
from fgmp.hw.pipeline import check_count
from fgmp.jobs import Inline
from fgmp.sim.activity import build_activity_model, run_dot_activity
from fgmp.sim.dot_stimuli import Reduction

__all__ = ["EnergyResult", "LayerCase", "ModelCase", "UNIT_FORMATS", "layer_reductions", "group_activity", "energy_proxy",
           "measure_energy", "fgmp_case", "uniform_case", "measure_layer", "submit_units", "submit_layer", "energy_rows"]

_ESCAPE = re.compile(r"__0([0-9a-fA-F]{2})")


def _unescape(name):
    """Verilator writes a character outside [A-Za-z0-9_] of a Verilog name as __0 and two hex digits."""
    return _ESCAPE.sub(lambda m: chr(int(m[1], 16)), name)


def layer_reductions(weights, activations, lanes):
    """The reductions the engine bench streams for a layer: output channels in groups of ``lanes``
    (a short last group repeats its last row), each group once per token. ``weights``: BlockTensor
    (M, K); ``activations``: BlockTensor (T, K) as the activation unit emits them."""
    check_count("Lanes", lanes, 1)
    if weights.codes.shape[1:] != activations.codes.shape[1:]:
        raise ValueError(f"Weights are in blocks of shape {tuple(weights.codes.shape[1:])} per row, activations "
                         f"{tuple(activations.codes.shape[1:])}")
    out_features, tokens = weights.codes.shape[0], activations.codes.shape[0]
    reductions = []
    for group in range(0, out_features, lanes):
        rows = torch.tensor([min(group + lane, out_features - 1) for lane in range(lanes)])
        lane_weights = _rows(weights, rows)
        for t in range(tokens):
            reductions.append(Reduction(weights=lane_weights, activation=_rows(activations, torch.tensor([t]))))
    return reductions


def _rows(bt, rows):
    return type(bt)(codes=bt.codes[rows], scales=bt.scales[rows], precision=bt.precision[rows],
                    global_scale=bt.global_scale)


# Names with no gates behind them: the top's input ports (synthesis gives them no cells) and the clock
# and reset nets (the clock tree is outside the proxy).
_UNDRIVEN = {"dot": re.compile(r"^(i__|clk$|rst$)"), "reference": re.compile(r"^(a|b|clk|rst)$")}
# Amaranth names the parent-side wires of the first decoder instance after its ports.
_DECODER_PORT = re.compile(r"^(code|decoded)(\.|$)")


def group_activity(activity, *, kind="dot"):
    """{group: (transitions, bits)} over the named signals of an Activity. Amaranth's anonymous wires
    (``$12``) belong to no group and are left out, so are the names in ``_UNDRIVEN``; a struct signal
    whose fields have their own wires (``o__payload`` and ``o__payload.results[0]``) is counted once,
    through its fields."""
    if kind not in _UNDRIVEN:
        raise ValueError(f"Unknown unit kind {kind!r}; choose from {', '.join(_UNDRIVEN)}")
    names = {_unescape(raw): raw for raw in activity.toggles}
    leaves = [name for name in names if "$" not in name and not _UNDRIVEN[kind].search(name)
              and not any(other.startswith((name + ".", name + "[")) for other in names)]
    totals = {}
    for name in leaves:
        raw = names[name]
        group = name_group(name, GROUP_RULES[kind]) or (
            "decoders" if kind == "dot" and _DECODER_PORT.search(name) else CONTROL)
        transitions, bits = totals.get(group, (0, 0))
        totals[group] = (transitions + activity.toggles[raw], bits + activity.bits[raw])
    return totals


@dataclass(frozen=True)
class EnergyResult:
    label: str
    block_pairs: int
    cycles: int
    groups: dict  # {group: {"transistors", "activity" (transitions per bit per block pair), "energy"}}

    @property
    def energy(self):
        """Transistor-toggles per block pair."""
        return sum(g["energy"] for g in self.groups.values())

    def as_dict(self):
        return {"label": self.label, "block_pairs": self.block_pairs, "cycles": self.cycles,
                "energy_per_block_pair": self.energy, "groups": self.groups}


def energy_proxy(label, activity, area, *, kind="dot"):
    """EnergyResult of an Activity weighted by an AreaResult (generic target, with its breakdown) of the
    same unit. A group with area but no named signal, or the reverse, is an error: the two views of the
    unit must agree."""
    if activity.block_pairs < 1:
        raise ValueError(f"The activity of {label} covers no block pair")
    sizes = area.group_transistor_estimates() if area.target == "generic" else {}
    if not sizes:
        raise ValueError("The energy proxy needs the generic target's per-group transistor counts")
    measured = group_activity(activity, kind=kind)
    groups = {}
    for group, transistors in sizes.items():
        if group not in measured:
            raise ValueError(f"Group {group!r} of {label} has {transistors} transistors but no named signal")
        transitions, bits = measured[group]
        rate = transitions / bits / activity.block_pairs
        groups[group] = {"transistors": transistors, "activity": rate, "energy": rate * transistors}
    missing = sorted(set(measured) - set(sizes))
    if missing:
        raise ValueError(f"Groups {missing} of {label} toggle but have no synthesized area")
    return EnergyResult(label=label, block_pairs=activity.block_pairs, cycles=activity.cycles, groups=groups)


def measure_energy(unit_params, runs, out, *, reuse=True, pool=None):
    """EnergyResults of one dot unit on several stimulus sets. ``runs``: {label: reductions}. The unit is
    synthesized once (generic, with breakdown; cached under ``out`` with ``reuse``) and built once for
    Verilator with toggle coverage; the synthesis and the simulations are two steps of ``pool``
    (fgmp.jobs; default: one after the other)."""
    return _combine(*_submit_energy(unit_params, runs, out, reuse=reuse, pool=pool or Inline()))


def _submit_energy(unit_params, runs, out, *, reuse, pool, area=None):
    if area is None:
        area = _submit_synthesis(unit_params, out, reuse=reuse, pool=pool)
    activities = pool.submit(lambda: {label: run_dot_activity(unit_params, reductions, Path(out) / "sim")
                                      for label, reductions in runs.items()})
    return area, activities


def _submit_synthesis(unit_params, out, *, reuse, pool):
    unit = make_unit("dot", **unit_params)
    return pool.submit(synthesize, unit, "generic", Path(out) / "area" / unit.slug, reuse=reuse)


def _combine(area, activities):
    area = area.result()
    return [energy_proxy(label, activity, area) for label, activity in activities.result().items()]


UNIT_FORMATS = DOT_VARIANTS  # a variant's name -> the generator parameters of its dot unit


@dataclass(frozen=True)
class LayerCase:
    """One point of a layer comparison: the unit variant and the blocks it runs (weights (M, K) and the
    activation blocks (T, K) its activation path produced)."""

    label: str
    unit: str  # a key of UNIT_FORMATS
    weights: object
    activations: object

    @property
    def weight_fp8(self):
        return float(self.weights.precision.float().mean())

    @property
    def activation_fp8(self):
        return float(self.activations.precision.float().mean())

    def reductions(self, lanes):
        return layer_reductions(self.weights, self.activations, lanes)


@dataclass(frozen=True)
class ModelCase:
    """Several layers streamed one after another through one unit (a whole model's sampled blocks)."""

    label: str
    unit: str
    layers: tuple  # LayerCases

    @property
    def weight_fp8(self):
        return _block_mean([c.weights.precision for c in self.layers])

    @property
    def activation_fp8(self):
        return _block_mean([c.activations.precision for c in self.layers])

    def reductions(self, lanes):
        return [r for case in self.layers for r in case.reductions(lanes)]


def _block_mean(precisions):
    return float(sum(p.sum() for p in precisions)) / sum(p.numel() for p in precisions)


def fgmp_case(label, plan, name, x, *, activation_plan=None, unit="FGMP"):
    """An FGMP unit (``unit``: 'FGMP', 'FGMP split', ...) under ``plan``: the plan's weight blocks,
    activations as the activation unit quantizes the BF16 inputs ``x`` (T, K) with the registers of
    ``activation_plan`` (default ``plan``; golden model, bit-exact)."""
    from fgmp.golden import quantize_activations

    activation_plan = activation_plan or plan
    rule = activation_plan.activations[name]
    if rule.config is None:
        raise ValueError(f"Plan {activation_plan.policy!r} does not drive the activation unit for {name}")
    blocks = quantize_activations(x, rule.config, block_size=plan.weights[name].block_size).blocks
    return LayerCase(label, unit, plan.weights[name], blocks)


def uniform_case(label, calibration, name, x, precision, *, plan=None):
    """The single-precision unit ``precision`` ('fp8' or 'nvfp4') on the same layer: every weight and
    activation block in that format, activations with the layer's calibrated G = 2**k. ``plan``: the
    calibration's all-``precision`` plan, when the caller has it already."""
    from fgmp.golden import quantize_blocks
    from fgmp.golden.policy import build_plan

    if precision not in ("fp8", "nvfp4"):
        raise ValueError(f"Precision must be 'fp8' or 'nvfp4', not {precision!r}")
    plan = plan or build_plan(calibration, policy=precision, clipping=False)
    weights = plan.weights[name]
    activations = quantize_blocks(x, torch.full((x.shape[0], x.shape[1] // weights.block_size),
                                                        precision == "fp8"),
                                  block_size=weights.block_size, scale=2.0 ** plan.activations[name].scale_exponent)
    return LayerCase(label, "FP8-only" if precision == "fp8" else "FP4-only", weights, activations)


def _variant_params(variant, lanes, pipeline_stages):
    if variant not in UNIT_FORMATS:
        raise ValueError(f"Unit must be one of {', '.join(UNIT_FORMATS)}, not {variant!r}")
    return {"lanes": lanes, "pipeline_stages": pipeline_stages, **UNIT_FORMATS[variant]}


def measure_layer(cases, *, lanes, out, pipeline_stages=1, reuse=True, pool=None):
    """[(LayerCase, EnergyResult)] for every case, each variant synthesized and built once; with a
    ``pool`` (fgmp.jobs), the variants' synthesis and simulation steps run side by side."""
    return submit_layer(cases, lanes=lanes, out=out, pipeline_stages=pipeline_stages, reuse=reuse,
                        pool=pool or Inline())()


def submit_units(variants, *, lanes, out, pool, pipeline_stages=1, reuse=True):
    """Start what measuring ``variants`` (keys of UNIT_FORMATS) needs before any layer data exists: each
    unit's synthesis and its toggle-counting simulator model. Returns the ``areas`` to hand to
    submit_layer with the same ``out``, ``lanes`` and ``pipeline_stages``."""
    areas = {}
    for variant in variants:
        params = _variant_params(variant, lanes, pipeline_stages)
        areas[variant] = _submit_synthesis(params, out, reuse=reuse, pool=pool)
        pool.submit(build_activity_model, params, Path(out) / "sim")  # run_dot_activity finds it built
    return areas


def submit_layer(cases, *, lanes, out, pool, pipeline_stages=1, reuse=True, areas=None):
    """measure_layer's steps submitted to ``pool`` without waiting; returns the function that waits
    for them and gives measure_layer's result (call it from the thread that owns the pool)."""
    variants = []
    for variant in dict.fromkeys(case.unit for case in cases):
        chosen = [case for case in cases if case.unit == variant]
        runs = {case.label: case.reductions(lanes) for case in chosen}
        params = _variant_params(variant, lanes, pipeline_stages)
        variants.append((chosen, _submit_energy(params, runs, out, reuse=reuse, pool=pool,
                                                area=(areas or {}).get(variant))))

    def collect():
        results = {}
        for chosen, steps in variants:
            for case, result in zip(chosen, _combine(*steps)):
                results[case.label] = (case, result)
        return [results[case.label] for case in cases]

    return collect


def energy_rows(measured, *, baseline="FP8-only"):
    """Table rows (dicts) with each point's energy relative to the first case of the ``baseline`` unit."""
    reference = next((r.energy for case, r in measured if case.unit == baseline), None)
    if reference is None:
        raise ValueError(f"No {baseline} case to compare with")
    return [{"label": case.label, "unit": case.unit, "weight_fp8": case.weight_fp8,
             "activation_fp8": case.activation_fp8, "block_pairs": result.block_pairs,
             "energy_per_block_pair": result.energy,
             "vs_baseline": result.energy / reference,
             "groups": result.groups} for case, result in measured]
