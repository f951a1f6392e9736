"""Weight blocks: per-block downgrade scores, a global FP8 budget, sensitivity-weighted clipping
(docs/policy.md §3-§5)."""

import math

import torch

from .. import kernels
from ..blocks import DEFAULT_BLOCK_SIZE, BlockTensor, global_scale, quantize_blocks, quantize_fp8, quantize_nvfp4

__all__ = ["SCORE_KINDS", "block_scores", "top_fraction", "clip_nvfp4_scales", "quantize_weight",
           "weighted_error"]

SCORE_KINDS = ("fgmp", "unweighted", "magnitude", "random")
CLIP_CANDIDATES = 8  # UE4M3 codes tried, from the amax-derived one down: 8 codes span about 0.6x-1x


def _blocks(t, block_size):
    return t.reshape(*t.shape[:-1], t.shape[-1] // block_size, block_size)


def _row_chunks(rows, width, device):
    # float64 work in cache-sized pieces: 10x faster on a CPU than whole-tensor float64 passes
    return kernels.chunk_rows(rows, width, device)


def _products(bt, rows):
    """s * dec(code) of the rows ``rows`` of a 2-D BlockTensor: exact FP32 (at most 8 significant bits),
    so G * (this) in float64 is the reference's exact dequantized value."""
    one = torch.ones((), dtype=torch.float32, device=bt.codes.device)
    return kernels.dequantize_fast(bt.codes[rows], bt.scales[rows], bt.precision[rows], one).flatten(-2)


def _flat(weight):
    return weight.detach().reshape(-1, weight.shape[-1])


def block_scores(weight, fisher, kind, *, block_size=DEFAULT_BLOCK_SIZE, generator=None):
    """Score of every block (out, in / B), higher = keep in FP8.

    fgmp: sum_i F_i (Q_NVFP4(v_i) - Q_FP8(v_i))**2, the Fisher estimate of the loss increase of the
    downgrade; unweighted: the same without F; magnitude: the block's largest |v|; random: uniform
    (drawn on the CPU, so a seed gives the same scores on every device). On the weight's device."""
    if kind not in SCORE_KINDS:
        raise ValueError(f"Score kind must be one of {', '.join(SCORE_KINDS)}, not {kind!r}")
    weight = weight.detach().float()
    if kind == "magnitude":
        return _blocks(weight.abs(), block_size).amax(dim=-1).double()
    if kind == "random":
        n_blocks = weight.shape[-1] // block_size
        return torch.rand(*weight.shape[:-1], n_blocks, generator=generator, dtype=torch.float64).to(weight.device)
    nvfp4, fp8 = quantize_nvfp4(weight, block_size=block_size), quantize_fp8(weight, block_size=block_size)
    g = nvfp4.global_scale.to(torch.float64)  # both share G = fl32(amax / 2688)
    flat_w, shape = _flat(weight), weight.shape
    nvfp4 = _flat_blocks(nvfp4, flat_w.shape[0])
    fp8 = _flat_blocks(fp8, flat_w.shape[0])
    flat_f = None if kind == "unweighted" else _flat(fisher)
    scores = torch.empty(flat_w.shape[0], flat_w.shape[1] // block_size, dtype=torch.float64, device=weight.device)
    for start, stop in _row_chunks(flat_w.shape[0], flat_w.shape[1], weight.device):
        rows = slice(start, stop)
        # (p4 - p8) is exact in float64, so its product with G is the reference's G*p4 - G*p8, rounded once.
        delta = (_products(nvfp4, rows).double() - _products(fp8, rows).double()) * g
        terms = delta.pow(2) if flat_f is None else delta.pow(2) * flat_f[rows].to(delta.device).double()
        scores[rows] = _blocks(terms, block_size).sum(dim=-1)
    return scores.reshape(*shape[:-1], shape[-1] // block_size)


def _flat_blocks(bt, rows):
    return BlockTensor(codes=bt.codes.reshape(rows, -1, bt.block_size), scales=bt.scales.reshape(rows, -1),
                       precision=bt.precision.reshape(rows, -1), global_scale=bt.global_scale)


def top_fraction(scores, fraction):
    """FP8 decisions for ``scores`` ({name: float tensor}) keeping the round(fraction * total) highest
    blocks in FP8 across all tensors together (one global threshold; ties broken by position, so the
    count is exact). Returns ({name: bool tensor}, threshold), the threshold being the lowest FP8 score
    (+inf when no block is FP8). Decisions come back on each score tensor's device."""
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 <= fraction <= 1:
        raise ValueError(f"FP8 fraction must be a number in [0, 1], not {fraction!r}")
    device = next(iter(scores.values())).device
    flat = torch.cat([s.reshape(-1).double().to(device) for s in scores.values()])
    keep = math.floor(fraction * flat.numel() + 0.5)
    order = torch.argsort(flat, descending=True, stable=True)
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=device)
    chosen[order[:keep]] = True
    threshold = float(flat[order[keep - 1]]) if keep else math.inf
    decisions, start = {}, 0
    for name, s in scores.items():
        decisions[name] = chosen[start:start + s.numel()].reshape(s.shape).to(s.device)
        start += s.numel()
    return decisions, threshold


def weighted_error(weight, fisher, bt):
    """Per block sum_i F_i (v_i - deq(v_i))**2 of a quantized weight (float64, deq exact)."""
    flat_w = _flat(weight)
    flat_f = _flat(fisher)
    blocks = _flat_blocks(bt, flat_w.shape[0])
    g = bt.global_scale.to(torch.float64)
    errors = torch.empty(flat_w.shape[0], flat_w.shape[1] // bt.block_size, dtype=torch.float64,
                         device=flat_w.device)
    for start, stop in _row_chunks(flat_w.shape[0], flat_w.shape[1], flat_w.device):
        rows = slice(start, stop)
        error = (flat_w[rows].double() - _products(blocks, rows).double() * g).pow(2) * flat_f[rows].double()
        errors[rows] = _blocks(error, bt.block_size).sum(dim=-1)
    return errors.reshape(bt.precision.shape)


def clip_nvfp4_scales(weight, fisher, *, block_size=DEFAULT_BLOCK_SIZE, candidates=CLIP_CANDIDATES):
    """UE4M3 scale codes of NVFP4 blocks chosen among the amax-derived code and the ``candidates - 1``
    codes below it, minimising the Fisher-weighted error; ties keep the larger scale, so the result is
    never worse than no clipping. Row chunk by row chunk, so every candidate stays in cache: the FP32
    magnitudes and the float64 weight and Fisher are made once per chunk, and each candidate costs one
    quantization of the chunk's elements (the fast exact kernel) and one float64 error."""
    if not isinstance(candidates, int) or isinstance(candidates, bool) or candidates < 1:
        raise ValueError(f"Clipping candidates must be a positive integer, not {candidates!r}")
    weight = weight.detach().float()
    plain = quantize_nvfp4(weight, block_size=block_size)
    g, g64 = plain.global_scale, plain.global_scale.to(torch.float64)
    low, high = kernels.FAST_SCALE_RANGE
    if not low <= float(g) <= high:
        return _clip_reference(weight, fisher, plain, block_size, candidates)
    flat_w, flat_f = _flat(weight), _flat(fisher)
    plain_scales = plain.scales.reshape(flat_w.shape[0], -1)
    best = torch.empty_like(plain_scales)
    table = kernels.tables(weight.device)
    for start, stop in _row_chunks(flat_w.shape[0], flat_w.shape[1], weight.device):
        w = flat_w[start:stop]
        blocks = w.reshape(w.shape[0], -1, block_size)
        magnitudes = blocks.abs()
        w64, f64 = w.double(), flat_f[start:stop].to(w.device).double()
        nvfp4 = torch.zeros(blocks.shape[:-1], dtype=torch.bool, device=w.device)
        best_codes, best_error = None, None
        for step in range(candidates):
            codes = (plain_scales[start:stop].long() - step).clamp(min=0).to(torch.uint8)
            elements, _ = kernels.quantize_blocks_fast(blocks, magnitudes, None, nvfp4, g, codes)
            values = (table.e2m1.index_select(0, elements.reshape(-1).to(torch.int32)).reshape(blocks.shape)
                      * table.ue4m3.index_select(0, codes.reshape(-1).to(torch.int32)).reshape(codes.shape).unsqueeze(-1))
            # values = s * dec(code), exact in FP32: times G in float64 is the exact dequantized weight.
            error = ((w64 - values.reshape(w.shape).double() * g64).pow(2) * f64)
            error = _blocks(error, block_size).sum(dim=-1)
            if best_codes is None:
                best_codes, best_error = codes, error
                continue
            better = error < best_error
            best_codes = torch.where(better, codes, best_codes)
            best_error = torch.where(better, error, best_error)
        best[start:stop] = best_codes
    return best.reshape(*weight.shape[:-1], weight.shape[-1] // block_size)


def _clip_reference(weight, fisher, plain, block_size, candidates):
    """The same choice through quantize_blocks and weighted_error (global scales outside the fast range)."""
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
    with ``clipping``, the Fisher-weighted clipped ones. One per-tensor G = fl32(amax / 2688). On the
    weight's device."""
    weight = weight.detach().float()
    if not clipping:
        return quantize_blocks(weight, precision, block_size=block_size)
    if fisher is None:
        raise ValueError("Clipping needs the weight's Fisher information")
    fp8_scales = quantize_fp8(weight, block_size=block_size).scales
    precision = precision.to(weight.device)
    scales = torch.where(precision, fp8_scales, clip_nvfp4_scales(weight, fisher, block_size=block_size))
    return quantize_blocks(weight, precision, block_size=block_size, block_scales=scales)
