"""Weight blocks: per-block downgrade scores, a global FP8 budget, sensitivity-weighted clipping
(docs/policy.md §3-§5)."""

import math

import torch

from ..blocks import DEFAULT_BLOCK_SIZE, dequantize, quantize_blocks, quantize_fp8, quantize_nvfp4

__all__ = ["SCORE_KINDS", "block_scores", "top_fraction", "clip_nvfp4_scales", "quantize_weight",
           "weighted_error"]

SCORE_KINDS = ("fgmp", "unweighted", "magnitude", "random")
CLIP_CANDIDATES = 8  # UE4M3 codes tried, from the amax-derived one down: 8 codes span about 0.6x-1x


def _blocks(t, block_size):
    return t.reshape(*t.shape[:-1], t.shape[-1] // block_size, block_size)


def block_scores(weight, fisher, kind, *, block_size=DEFAULT_BLOCK_SIZE, generator=None):
    """Score of every block (out, in / B), higher = keep in FP8.

    fgmp: sum_i F_i (Q_NVFP4(v_i) - Q_FP8(v_i))**2, the Fisher estimate of the loss increase of the
    downgrade; unweighted: the same without F; magnitude: the block's largest |v|; random: uniform."""
    if kind not in SCORE_KINDS:
        raise ValueError(f"Score kind must be one of {', '.join(SCORE_KINDS)}, not {kind!r}")
    weight = weight.detach().float().cpu()
    if kind == "magnitude":
        return _blocks(weight.abs(), block_size).amax(dim=-1).double()
    if kind == "random":
        n_blocks = weight.shape[-1] // block_size
        return torch.rand(*weight.shape[:-1], n_blocks, generator=generator, dtype=torch.float64)
    delta = (dequantize(quantize_nvfp4(weight, block_size=block_size), dtype=torch.float64)
             - dequantize(quantize_fp8(weight, block_size=block_size), dtype=torch.float64))
    terms = delta.pow(2) if kind == "unweighted" else delta.pow(2) * fisher.double().cpu()
    return _blocks(terms, block_size).sum(dim=-1)


def top_fraction(scores, fraction):
    """FP8 decisions for ``scores`` ({name: float tensor}) keeping the round(fraction * total) highest
    blocks in FP8 across all tensors together (one global threshold; ties broken by position, so the
    count is exact). Returns ({name: bool tensor}, threshold), the threshold being the lowest FP8 score
    (+inf when no block is FP8)."""
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 <= fraction <= 1:
        raise ValueError(f"FP8 fraction must be a number in [0, 1], not {fraction!r}")
    flat = torch.cat([s.reshape(-1).double() for s in scores.values()])
    keep = math.floor(fraction * flat.numel() + 0.5)
    order = torch.argsort(flat, descending=True, stable=True)
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[order[:keep]] = True
    threshold = float(flat[order[keep - 1]]) if keep else math.inf
    decisions, start = {}, 0
    for name, s in scores.items():
        decisions[name] = chosen[start:start + s.numel()].reshape(s.shape)
        start += s.numel()
    return decisions, threshold


def weighted_error(weight, fisher, bt):
    """Per block sum_i F_i (v_i - deq(v_i))**2 of a quantized weight."""
    error = (weight.detach().double().cpu() - dequantize(bt, dtype=torch.float64)).pow(2) * fisher.double().cpu()
    return _blocks(error, bt.block_size).sum(dim=-1)


def clip_nvfp4_scales(weight, fisher, *, block_size=DEFAULT_BLOCK_SIZE, candidates=CLIP_CANDIDATES):
    """UE4M3 scale codes of NVFP4 blocks chosen among the amax-derived code and the ``candidates - 1``
    codes below it, minimising the Fisher-weighted error; ties keep the larger scale, so the result is
    never worse than no clipping."""
    if not isinstance(candidates, int) or isinstance(candidates, bool) or candidates < 1:
        raise ValueError(f"Clipping candidates must be a positive integer, not {candidates!r}")
    weight = weight.detach().float().cpu()
    plain = quantize_nvfp4(weight, block_size=block_size)
    best_codes = plain.scales.clone()
    best_error = weighted_error(weight, fisher, plain)
    for step in range(1, candidates):
        codes = (plain.scales.long() - step).clamp(min=0).to(torch.uint8)
        bt = quantize_blocks(weight, torch.tensor(False), block_size=block_size, scale=plain.global_scale,
                             block_scales=codes)
        error = weighted_error(weight, fisher, bt)
        better = error < best_error
        best_codes = torch.where(better, codes, best_codes)
        best_error = torch.where(better, error, best_error)
    return best_codes


def quantize_weight(weight, precision, fisher=None, *, clipping=False, block_size=DEFAULT_BLOCK_SIZE):
    """The stored form of a weight: FP8 blocks with amax scales, NVFP4 blocks with amax scales or,
    with ``clipping``, the Fisher-weighted clipped ones. One per-tensor G = fl32(amax / 2688)."""
    weight = weight.detach().float().cpu()
    if not clipping:
        return quantize_blocks(weight, precision, block_size=block_size)
    if fisher is None:
        raise ValueError("Clipping needs the weight's Fisher information")
    fp8_scales = quantize_fp8(weight, block_size=block_size).scales
    scales = torch.where(precision, fp8_scales, clip_nvfp4_scales(weight, fisher, block_size=block_size))
    return quantize_blocks(weight, precision, block_size=block_size, block_scales=scales)
