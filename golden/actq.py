"""Bit-exact model of the mixed-precision activation quantization unit (docs/numerics.md §9).

Each block of B BF16 activations becomes an NVFP4 or an FP8 block, decided at run time by a Fisher-
weighted score of how much the NVFP4 candidate perturbs the block relative to the FP8 one. These are
the functions the hardware matches bit for bit and the model-level policy calls for activations.
"""

import math
from dataclasses import dataclass
from fractions import Fraction

import torch

from . import kernels
from .blocks import DEFAULT_BLOCK_SIZE, BlockTensor, dequantize, dequantize_reference, quantize_blocks_reference
from .formats import E2M1, E4M3, UE4M3, _code_values_f64, encode_ratio

__all__ = [
    "ActivationConfig", "ActivationBlocks", "quantize_activations", "quantize_activations_reference",
    "fake_quantize_activations", "fake_quantize_blocks", "exact_scores", "exact_decisions",
    "SCALE_EXPONENT_RANGE", "DELTA_BITS", "SCORE_WINDOW_BITS", "SCORE_LSB_EXPONENT",
]

SCALE_EXPONENT_RANGE = (-128, 127)
DELTA_BITS = 12  # Δ̂ keeps this many significant bits of |D|
SCORE_WINDOW_BITS = 40  # terms are truncated to 2**(E - 40), E the largest term's leading bit
SCORE_LSB_EXPONENT = -45  # term = F * Δ̂² is an integer at this power of two (F at 2**-9, D at 2**-18)
_D_LSB_EXPONENT = -18
_F_LSB_EXPONENT = -9
_FP8_MAX_CODE = 0x7E  # E4M3 and UE4M3 448
_E4M3_NAN_CODE = 0x7F


@dataclass(frozen=True)
class ActivationConfig:
    """The unit's configuration registers for one layer (numerics §9).

    ``scale_exponent`` k (G = 2**k); ``threshold`` T, a non-negative FP32 value (+Inf: never FP8);
    ``sensitivities``: uint8 UE4M3 codes, one per input channel (the reduction dimension).
    """

    scale_exponent: int
    threshold: float
    sensitivities: torch.Tensor

    def __post_init__(self):
        k = self.scale_exponent
        if not isinstance(k, int) or isinstance(k, bool):
            raise TypeError(f"Scale exponent must be an integer, not {k!r}")
        low, high = SCALE_EXPONENT_RANGE
        if not low <= k <= high:
            raise ValueError(f"Scale exponent must be between {low} and {high}, not {k}")
        t = self.threshold
        if not isinstance(t, (int, float)) or isinstance(t, bool):
            raise TypeError(f"Threshold must be a number, not {t!r}")
        if math.isnan(t) or t < 0:
            raise ValueError(f"Threshold must be non-negative, not {t}")
        if float(torch.tensor(t, dtype=torch.float32)) != t:
            raise ValueError(f"Threshold {t!r} is not exactly representable in FP32")
        f = self.sensitivities
        if not isinstance(f, torch.Tensor) or f.dtype != torch.uint8 or f.dim() != 1:
            raise TypeError("Sensitivities must be a 1-D uint8 tensor of UE4M3 codes")
        if bool((f > _FP8_MAX_CODE).any()):
            raise ValueError("Sensitivities must be finite UE4M3 codes (0x00..0x7E)")

    @property
    def threshold_bits(self):
        return int(torch.tensor(self.threshold, dtype=torch.float32).view(torch.int32))


@dataclass(frozen=True)
class ActivationBlocks:
    """What the unit emits for a tensor of activations: the blocks (global scale 2**k), each block's
    truncated score (float64, exact: a 45-bit integer times a power of two; 0 for non-finite blocks)
    and whether non-finite input forced FP8."""

    blocks: BlockTensor
    scores: torch.Tensor
    forced_fp8: torch.Tensor


def _check_input(x, config, block_size):
    if not isinstance(x, torch.Tensor) or x.dtype != torch.bfloat16:
        raise TypeError("Activations must be a torch.bfloat16 tensor")
    if x.dim() < 1 or x.shape[-1] % block_size:
        raise ValueError(f"The last dimension ({x.shape[-1] if x.dim() else 'none'}) must be a multiple of "
                         f"the block size {block_size}")
    if config.sensitivities.numel() != x.shape[-1]:
        raise ValueError(f"{config.sensitivities.numel()} sensitivities for {x.shape[-1]} input channels")


def _candidates(scaled, finite, element_max, fmt):
    """Scale codes and element codes of one candidate format, and its exact values (float64)."""
    magnitudes = torch.where(finite, scaled.abs(), 0.0)
    amax = magnitudes.amax(dim=-1)
    scales = encode_ratio(amax, torch.tensor(element_max, dtype=torch.float64), UE4M3)
    scale_values = _code_values_f64(scales, UE4M3)
    zero = scale_values == 0
    denominator = torch.where(zero, 1.0, scale_values).unsqueeze(-1)
    codes = encode_ratio(torch.where(finite, scaled, 0.0), denominator, fmt)
    codes = torch.where(zero.unsqueeze(-1), 0, codes)
    values = scale_values.unsqueeze(-1) * _code_values_f64(codes, fmt)
    return scales, codes, values


def _perturbation(x, config, block_size):
    """Blocks of x' = x * 2**-k, finite/NaN/Inf masks, both candidates and D (int64, LSB 2**-18)."""
    scaled = x.to(torch.float64) * 2.0 ** -config.scale_exponent
    scaled = scaled.reshape(*x.shape[:-1], x.shape[-1] // block_size, block_size)
    finite = torch.isfinite(scaled)
    s4, q4, v4 = _candidates(scaled, finite, 6.0, E2M1)
    s8, q8, v8 = _candidates(scaled, finite, 448.0, E4M3)
    # Both values are multiples of 2**-18 below 2**18: the difference is exact in float64.
    d = ((v4 - v8) * 2.0 ** -_D_LSB_EXPONENT).to(torch.int64)
    return scaled, finite, (s4, q4), (s8, q8), d


def _sensitivity_integers(config, shape):
    """F_i = f_i * 2**9 as int64, laid out like the blocks."""
    f = (UE4M3._code_values[config.sensitivities.cpu().long()] * 2.0 ** -_F_LSB_EXPONENT).to(torch.int64)
    return f.reshape(shape[-2:]).expand(shape)


def _truncated_scores(d, f):
    """Numerics §9 step 5, vectorized in int64: returns the score as float64 (exact)."""
    magnitude = d.abs()
    bits = torch.where(magnitude > 0, torch.frexp(magnitude.double()).exponent, 0).to(torch.int64)
    shift = (bits - DELTA_BITS).clamp(min=0)
    mantissa = magnitude >> shift  # < 2**12
    term_mantissa = f * mantissa * mantissa  # < 2**18 * 2**24
    term_exponent = 2 * shift  # term = term_mantissa * 2**term_exponent (at LSB 2**-45)
    term_bits = torch.where(term_mantissa > 0, torch.frexp(term_mantissa.double()).exponent, 0).to(torch.int64)
    leading = torch.where(term_mantissa > 0, term_bits - 1 + term_exponent, -1)
    top = leading.amax(dim=-1, keepdim=True)  # E
    offset = term_exponent - (top - SCORE_WINDOW_BITS)  # shift into units of 2**(E - 40)
    left = term_mantissa << offset.clamp(min=0, max=62)
    right = term_mantissa >> (-offset).clamp(min=0, max=63)
    units = torch.where(offset >= 0, left, right)
    units = torch.where(term_mantissa > 0, units, 0)
    total = units.sum(dim=-1)  # < 16 * 2**41
    exponent = top.squeeze(-1) - SCORE_WINDOW_BITS + SCORE_LSB_EXPONENT
    return torch.where(total > 0, torch.ldexp(total.double(), exponent.double()), 0.0)


def _unit_on_blocks(scaled, f, threshold):
    """Numerics §9 on blocks of x' = x * 2**-k (float64 (..., B), exact) with F_i = f_i * 2**9 (int64,
    like the blocks), the reference way: (codes, scale codes, FP8 decisions, scores, forced)."""
    finite = torch.isfinite(scaled)
    s4, q4, v4 = _candidates(scaled, finite, 6.0, E2M1)
    s8, q8, v8 = _candidates(scaled, finite, 448.0, E4M3)
    # Both values are multiples of 2**-18 below 2**18: the difference is exact in float64.
    d = ((v4 - v8) * 2.0 ** -_D_LSB_EXPONENT).to(torch.int64)
    scores = _truncated_scores(d, f)
    nan = torch.isnan(scaled)
    inf = torch.isinf(scaled)
    has_inf = inf.any(dim=-1)
    forced = ~finite.all(dim=-1)
    fp8 = forced | (scores > threshold)

    # Non-finite blocks (numerics §9 step 7): Inf forces the largest scale, saturates to +-448.
    inf_scale = torch.full_like(s8, _FP8_MAX_CODE)
    finite_vs_max = encode_ratio(torch.where(finite, scaled, 0.0), torch.tensor(448.0, dtype=torch.float64), E4M3)
    q8 = torch.where(has_inf.unsqueeze(-1), finite_vs_max, q8)
    s8 = torch.where(has_inf, inf_scale, s8)
    sign = torch.signbit(scaled).long() << 7
    q8 = torch.where(inf, _FP8_MAX_CODE | sign, q8)
    q8 = torch.where(nan, _E4M3_NAN_CODE, q8)

    codes = torch.where(fp8.unsqueeze(-1), q8, q4).to(torch.uint8)
    scales = torch.where(fp8, s8, s4).to(torch.uint8)
    return codes, scales, fp8, torch.where(forced, 0.0, scores), forced


def _result(codes, scales, fp8, scores, forced, k):
    blocks = BlockTensor(codes=codes, scales=scales, precision=fp8,
                         global_scale=torch.tensor(2.0**k, dtype=torch.float32, device=codes.device))
    return ActivationBlocks(blocks=blocks, scores=scores, forced_fp8=forced)


def _fast_eligible(x, config):
    low, high = kernels.ACTIVATION_FAST_EXPONENTS
    return low <= config.scale_exponent <= high and x.numel() > 0


def _reference_rows(blocks, rows, config):
    """The reference on the blocks ``rows`` (flat indices into FP32 ``blocks`` (n, n_blocks, B)): for
    non-finite blocks and blocks whose NVFP4 scale saturates."""
    block_size = blocks.shape[-1]
    x = blocks.reshape(-1, block_size)[rows]
    scaled = x.to(torch.float64) * 2.0 ** -config.scale_exponent
    f = _sensitivity_integers(config, blocks.shape[1:]).to(x.device)[rows % blocks.shape[1]]
    return _unit_on_blocks(scaled, f, config.threshold)


def _blocks_chunk(x, config, block_size):
    blocks, fast, s4, s8, q4, q8, scores = kernels.unit_blocks(x, config.sensitivities, config.scale_exponent,
                                                               block_size)
    fp8 = scores > config.threshold
    sign = torch.signbit(blocks).view(torch.uint8)
    pick = fp8.unsqueeze(-1).to(torch.uint8)
    codes = q4 + pick * (q8 - q4)  # uint8 arithmetic wraps exactly: one of the two codes
    codes = codes | (sign << torch.where(fp8, 7, 3).to(torch.uint8).unsqueeze(-1))
    scales = torch.where(fp8, s8, s4)
    codes = codes.masked_fill((scales == 0).unsqueeze(-1), 0)  # a zero scale stores +0 codes
    forced = torch.zeros_like(fp8)
    slow = (~fast).reshape(-1).nonzero().squeeze(-1)
    if slow.numel():
        flat = [t.reshape(-1, *t.shape[2:]) for t in (codes, scales, fp8, scores, forced)]
        for target, value in zip(flat, _reference_rows(blocks, slow, config)):
            target[slow] = value.to(target.dtype)
    return codes, scales, fp8, torch.where(forced, 0.0, scores), forced


def quantize_activations(x, config, *, block_size=DEFAULT_BLOCK_SIZE):
    """Quantize BF16 activations (..., K) block by block per numerics §9. Returns ActivationBlocks.

    Runs on x's device with the fast exact kernels of numerics §9.1 (FP32 quotients, native casts,
    exact FP32 terms summed in int32 parts); ``quantize_activations_reference`` is the reference."""
    if not isinstance(config, ActivationConfig):
        raise TypeError(f"Config must be an ActivationConfig, not {type(config).__name__}")
    _check_input(x, config, block_size)
    if not _fast_eligible(x, config):
        return quantize_activations_reference(x, config, block_size=block_size)
    rows = x.reshape(-1, x.shape[-1])
    parts = [_blocks_chunk(rows[start:stop], config, block_size)
             for start, stop in kernels.chunk_rows(rows.shape[0], rows.shape[1], x.device)]
    codes, scales, fp8, scores, forced = (torch.cat(p) for p in zip(*parts))
    shape = (*x.shape[:-1], x.shape[-1] // block_size)
    return _result(codes.reshape(*shape, block_size), scales.reshape(shape), fp8.reshape(shape),
                   scores.reshape(shape), forced.reshape(shape), config.scale_exponent)


def fake_quantize_activations(x, config, *, block_size=DEFAULT_BLOCK_SIZE, constants=None):
    """(values, precision): what ``dequantize(quantize_activations(x, config).blocks)`` and its
    ``.blocks.precision`` give, bit for bit, computing exact scores only for the blocks whose decision
    needs them (numerics §9.1): the fast path of plan evaluation. ``constants``: the config's
    ``kernels.UnitConstants`` on x's device, to reuse across calls."""
    if not isinstance(config, ActivationConfig):
        raise TypeError(f"Config must be an ActivationConfig, not {type(config).__name__}")
    _check_input(x, config, block_size)
    if not _fast_eligible(x, config):
        result = quantize_activations_reference(x, config, block_size=block_size)
        return dequantize(result.blocks), result.blocks.precision
    if constants is None:
        constants = kernels.UnitConstants(config.sensitivities, config.scale_exponent, config.threshold,
                                          block_size, x.device)
    rows = x.reshape(-1, x.shape[-1])
    values = torch.empty(rows.shape, dtype=torch.float32, device=x.device)
    fp8 = torch.empty((rows.shape[0], rows.shape[1] // block_size), dtype=torch.bool, device=x.device)
    power = torch.tensor(2.0**config.scale_exponent, device=x.device)
    for start, stop in kernels.chunk_rows(rows.shape[0], rows.shape[1], x.device):
        chunk = rows[start:stop]
        chunk_values = values[start:stop]
        chunk_fp8, slow = kernels.unit_values(chunk, constants, chunk_values)
        if slow.numel():
            blocks = chunk.float().reshape(chunk.shape[0], -1, block_size)
            codes, scales, chosen, _, _ = _reference_rows(blocks, slow, config)
            exact = dequantize_reference(BlockTensor(codes=codes, scales=scales, precision=chosen,
                                                     global_scale=power))
            chunk_values.view(-1, block_size)[slow] = exact.reshape(-1, block_size)
            chunk_fp8.view(-1)[slow] = chosen
        fp8[start:stop] = chunk_fp8
    return values.reshape(x.shape), fp8.reshape(*x.shape[:-1], x.shape[-1] // block_size)


def fake_quantize_blocks(x, precision, config, *, block_size=DEFAULT_BLOCK_SIZE, constants=None):
    """``dequantize(quantize_blocks(x, precision, scale=2**k))`` for BF16 x, bit for bit, through the
    activation unit's candidates with the decisions given (numerics §9.1); ``config`` supplies k.
    Non-finite input raises ValueError, as quantize_blocks does."""
    if constants is None:
        constants = kernels.UnitConstants(config.sensitivities, config.scale_exponent, math.inf, block_size,
                                          x.device)
    rows = x.reshape(-1, x.shape[-1])
    decisions = precision.reshape(rows.shape[0], -1).to(x.device)
    values = torch.empty(rows.shape, dtype=torch.float32, device=x.device)
    for start, stop in kernels.chunk_rows(rows.shape[0], rows.shape[1], x.device):
        chunk = rows[start:stop]
        chunk_values = values[start:stop]
        _, slow = kernels.unit_values(chunk, constants, chunk_values, precision=decisions[start:stop])
        if slow.numel():
            blocks = chunk.reshape(-1, block_size)[slow]
            exact = dequantize_reference(quantize_blocks_reference(
                blocks, decisions[start:stop].reshape(-1)[slow].unsqueeze(-1), block_size=block_size,
                scale=2.0**config.scale_exponent))
            chunk_values.view(-1, block_size)[slow] = exact.reshape(-1, block_size)
    return values.reshape(x.shape)


def quantize_activations_reference(x, config, *, block_size=DEFAULT_BLOCK_SIZE):
    """The reference model of the unit (float64 candidates, int64 scores): slow, kept as the oracle
    the fast path is tested against. Same arguments and result as ``quantize_activations``."""
    if not isinstance(config, ActivationConfig):
        raise TypeError(f"Config must be an ActivationConfig, not {type(config).__name__}")
    _check_input(x, config, block_size)
    scaled = x.to(torch.float64) * 2.0 ** -config.scale_exponent
    scaled = scaled.reshape(*x.shape[:-1], x.shape[-1] // block_size, block_size)
    f = _sensitivity_integers(config, scaled.shape).to(x.device)
    codes, scales, fp8, scores, forced = _unit_on_blocks(scaled, f, config.threshold)
    return _result(codes, scales, fp8, scores, forced, config.scale_exponent)


def exact_scores(x, config, *, block_size=DEFAULT_BLOCK_SIZE):
    """The untruncated score of every block, sum_i f_i * (s4*dec(q4_i) - s8*dec(q8_i))**2, as exact
    Fractions in a nested list shaped like the blocks (non-finite blocks: None). For measuring how often
    the unit's truncated score decides differently; slow (Python integers)."""
    _check_input(x, config, block_size)
    _, finite, _, _, d = _perturbation(x, config, block_size)
    f = _sensitivity_integers(config, d.shape)
    flat_d = d.reshape(-1, block_size).tolist()
    flat_f = f.reshape(-1, block_size).tolist()
    flat_ok = finite.all(dim=-1).reshape(-1).tolist()
    unit = Fraction(1, 1 << -SCORE_LSB_EXPONENT)
    scores = [sum(fi * di * di for fi, di in zip(fs, ds)) * unit if ok else None
              for fs, ds, ok in zip(flat_f, flat_d, flat_ok)]
    return scores, tuple(d.shape[:-1])


def exact_decisions(x, config, *, block_size=DEFAULT_BLOCK_SIZE):
    """bool tensor of the exact real-number decisions (score > T; non-finite blocks: FP8)."""
    scores, shape = exact_scores(x, config, block_size=block_size)
    threshold = Fraction(config.threshold) if math.isfinite(config.threshold) else None
    decisions = [True if s is None else (threshold is not None and s > threshold) for s in scores]
    return torch.tensor(decisions, dtype=torch.bool).reshape(shape)
