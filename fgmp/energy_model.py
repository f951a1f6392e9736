"""The energy model on one scale (docs/results.md, "Energy model"): the datapath proxy of fgmp/energy.py
put in picojoules by reference circuits of published energy, plus the on-chip buffer reads of the blocks
a unit consumes, per block pair, for one layer or a whole model's sampled layers.

Every constant comes from one source: M. Horowitz, "Computing's energy problem (and what we can do
about it)", ISSCC 2014, 45 nm at 0.9 V (``HOROWITZ_45NM``). The 8-bit multiply calibrates the proxy (pJ
per transistor-toggle); the 32-bit add, run through the same proxy, checks how far one calibration
carries; the 8 KB SRAM's 64-bit read gives the energy per bit read from a buffer.
"""

import math
import random
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from fgmp.flow.area import synthesize
from fgmp.flow.units import DOT_VARIANTS, Unit
from fgmp.hw.reference import ReferenceCircuit
from fgmp.jobs import Inline
from fgmp.sim.activity import run_reference_activity

from .energy import LayerCase, ModelCase, energy_proxy

__all__ = ["HOROWITZ_45NM", "REFERENCES", "Calibration", "calibrate", "block_bits", "buffer_bits_per_pair",
           "pairing_mix", "sample_rows", "model_case", "accounted_rows"]

HOROWITZ_45NM = {
    "8-bit integer multiply": 0.2,  # pJ
    "32-bit integer add": 0.1,  # pJ
    "64-bit read of an 8 KB SRAM": 10.0,  # pJ
}
# Reference circuit -> (operation, width, published energy). The first calibrates, the others check.
REFERENCES = {"8-bit integer multiply": ("multiply", 8), "32-bit integer add": ("add", 32)}
PJ_PER_BUFFER_BIT = HOROWITZ_45NM["64-bit read of an 8 KB SRAM"] / 64


@dataclass(frozen=True)
class Calibration:
    """pJ per transistor-toggle of the proxy, and each reference's proxy figure and published energy."""

    pj_per_toggle: float
    references: tuple  # ({"circuit", "toggles_per_op", "published_pj", "model_pj"}, ...)


def _reference_energy(name, out, cycles, pool):
    operation, width = REFERENCES[name]
    params = {"operation": operation, "width": width}
    top = f"reference_{operation}{width}"
    unit = Unit("reference", ReferenceCircuit(**params), top, params)
    area = pool.submit(synthesize, unit, "generic", Path(out) / "area" / top, reuse=True)
    activity = pool.submit(run_reference_activity, operation, width, Path(out) / "sim", cycles=cycles)
    return area, activity


def calibrate(out, *, cycles=2000, pool=None):
    """Run every reference circuit through the proxy (generic synthesis with breakdown, Verilator toggle
    coverage on random operands); only the operation's own gates count ("arithmetic" group), as the
    published figures are for the operation alone."""
    pool = pool or Inline()
    steps = {name: _reference_energy(name, out, cycles, pool) for name in REFERENCES}
    measured = {}
    for name, (area, activity) in steps.items():
        result = energy_proxy(name, activity.result(), area.result(), kind="reference")
        measured[name] = result.groups["arithmetic"]["energy"]  # per operation: one per cycle
    first = next(iter(REFERENCES))
    scale = HOROWITZ_45NM[first] / measured[first]
    return Calibration(scale, tuple({"circuit": name, "toggles_per_op": measured[name],
                                     "published_pj": HOROWITZ_45NM[name], "model_pj": measured[name] * scale}
                                    for name in REFERENCES))


def block_bits(variant, block_size, fp8):
    """Bits one stored block takes in ``variant``'s buffers: codes, the UE4M3 scale, and the precision bit
    where a unit takes both formats (B = 16: 73 for NVFP4, 137 for FP8; 136 and 72 in the single-format
    units, which store no precision bit)."""
    formats = DOT_VARIANTS[variant]["formats"]
    return block_size * (8 if fp8 else 4) + 8 + (len(formats) == 2)


def buffer_bits_per_pair(reductions, variant, lanes):
    """Bits read from the buffers per block pair when ``reductions`` stream through an L-lane ``variant``
    unit: per cycle one activation block (broadcast to the lanes) and one weight block per lane."""
    bits = pairs = 0
    for reduction in reductions:
        block_size = reduction.activation.codes.shape[-1]
        for x_fp8, w_fp8 in zip(reduction.activation.precision[0].tolist(), reduction.weights.precision.T.tolist()):
            bits += block_bits(variant, block_size, x_fp8) + sum(block_bits(variant, block_size, w) for w in w_fp8)
            pairs += lanes
    return bits / pairs


def pairing_mix(reductions):
    """Shares of the streamed block pairs by pairing: FP4xFP4, mixed (either order), FP8xFP8."""
    counts = [0, 0, 0]
    for reduction in reductions:
        x = reduction.activation.precision[0].long()  # (n,)
        w = reduction.weights.precision.long()  # (lanes, n)
        fp8_operands = (w + x).flatten().tolist()
        for value in fp8_operands:
            counts[value] += 1
    total = sum(counts)
    return {"FP4xFP4": counts[0] / total, "mixed": counts[1] / total, "FP8xFP8": counts[2] / total}


def sample_rows(out_features, fraction, seed):
    """Output channels sampled from a layer: ``fraction`` of them, at least one, in order."""
    if not 0 < fraction <= 1:
        raise ValueError(f"Row fraction must be in (0, 1], not {fraction}")
    count = max(1, math.ceil(fraction * out_features))
    return sorted(random.Random(seed).sample(range(out_features), count))


def model_case(label, unit, layer_cases, *, fraction, seed=0):
    """A ModelCase from every layer's LayerCase, each cut to the same ``fraction`` of its output channels
    (all its tokens): the block pairs sampled from a layer are then in proportion to its MACs per token,
    so energy per block pair over the case is the model's, weighted by MACs."""
    layers = []
    for index, case in enumerate(layer_cases):
        rows = torch.tensor(sample_rows(case.weights.codes.shape[0], fraction, seed + index))
        weights = type(case.weights)(codes=case.weights.codes[rows], scales=case.weights.scales[rows],
                                     precision=case.weights.precision[rows], global_scale=case.weights.global_scale)
        layers.append(replace(case, weights=weights))
    return ModelCase(label, unit, tuple(layers))


def accounted_rows(measured, calibration, *, lanes, baseline="FP8-only"):
    """Rows of fgmp.energy.energy_rows with the model's picojoules: datapath (proxy x calibration), buffer
    reads (bits per block pair x pJ per bit), their sum, and each ratio to the ``baseline`` unit's case
    (the first, if several: pass one scope at a time); and the pairing mix of the streamed pairs."""
    rows = []
    for case, result in measured:
        reductions = case.reductions(lanes)
        datapath = result.energy * calibration.pj_per_toggle
        bits = buffer_bits_per_pair(reductions, case.unit, lanes)
        rows.append({"label": case.label, "unit": case.unit, "weight_fp8": case.weight_fp8,
                     "activation_fp8": case.activation_fp8, "pairing": pairing_mix(reductions),
                     "block_pairs": result.block_pairs, "proxy_per_block_pair": result.energy,
                     "datapath_pj": datapath, "buffer_bits": bits, "buffer_pj": bits * PJ_PER_BUFFER_BIT,
                     "total_pj": datapath + bits * PJ_PER_BUFFER_BIT,
                     "groups": {g: {**v, "pj": v["energy"] * calibration.pj_per_toggle}
                                for g, v in result.groups.items()}})
    reference = next((r for r in rows if r["unit"] == baseline), None)
    if reference is None:
        raise ValueError(f"No {baseline} case to compare with")
    for r in rows:
        r["datapath_vs_baseline"] = r["datapath_pj"] / reference["datapath_pj"]
        r["total_vs_baseline"] = r["total_pj"] / reference["total_pj"]
    return rows


def as_unit(case, unit, label=None):
    """The same blocks on another unit variant (the FGMP data on the shared or the split datapath)."""
    if isinstance(case, (LayerCase, ModelCase)):
        return replace(case, unit=unit, label=label or case.label)
    raise TypeError(f"Case must be a LayerCase or a ModelCase, not {case!r}")


__all__ += ["as_unit", "PJ_PER_BUFFER_BIT"]
