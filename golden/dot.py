"""Bit-exact model of the FGMP dot-product unit (docs/numerics.md §8), and the fast fake-quant matmul.

``unit_dot`` is the reference the RTL must match: every block term is an exact integer at LSB 2**-36,
summed exactly across blocks and rounded once to FP32. The exact sum needs more than 64 bits, so it is
kept in three int64 limbs of base 2**24 (carries normalised between chunks of blocks), and only the final
rounding works on Python integers.
"""

import torch

from .blocks import BlockTensor, dequantize
from .formats import E2M1, E4M3, UE4M3

__all__ = [
    "unit_dot", "exact_block_sums", "fp32_bits_of_scaled_integer", "bits_to_float32", "layer_output",
    "fake_quant_matmul", "CANONICAL_NAN_BITS", "ACCUMULATOR_LSB_EXPONENT",
]

CANONICAL_NAN_BITS = 0x7FC00000
ACCUMULATOR_LSB_EXPONENT = -36
_ELEMENT_LSB_EXPONENT = -9  # every E4M3, UE4M3 and E2M1 value is an integer multiple of 2**-9
_LIMB_BITS = 24
_CHUNK_ELEMENTS = 1 << 24  # (T, M, blocks) int64 intermediates per chunk: 128 MiB at most


def _integer_table(fmt):
    values = fmt._code_values * 2.0**-_ELEMENT_LSB_EXPONENT
    return torch.where(torch.isnan(values), 0, values).to(torch.int64)


_E4M3_INT = _integer_table(E4M3)
_E2M1_INT = _integer_table(E2M1)
_UE4M3_INT = _integer_table(UE4M3)
_E4M3_NAN = torch.isnan(E4M3._code_values)
_UE4M3_NAN = torch.isnan(UE4M3._code_values)


def _element_integers(bt):
    """(..., n_blocks, B) int64 elements at LSB 2**-9, and a per-block NaN flag (element or scale)."""
    codes = bt.codes.long()
    fp8 = bt.precision.unsqueeze(-1)
    elements = torch.where(fp8, _E4M3_INT[codes], _E2M1_INT[codes & 0xF])
    nan = (fp8 & _E4M3_NAN[codes]).any(dim=-1) | _UE4M3_NAN[bt.scales.long()]
    return elements, nan


def _split(values):
    """Non-negative-low-limb split: values = high * 2**24 + low, 0 <= low < 2**24."""
    return values >> _LIMB_BITS, values & ((1 << _LIMB_BITS) - 1)


def _normalise(limbs):
    low, mid, high = limbs
    carry, low = _split(low)
    mid = mid + carry
    carry, mid = _split(mid)
    return [low, mid, high + carry]


def _check_operands(weights, activations):
    for name, bt in (("Weights", weights), ("Activations", activations)):
        if not isinstance(bt, BlockTensor):
            raise TypeError(f"{name} must be a BlockTensor, not {type(bt).__name__}")
        if bt.codes.dim() < 3:
            raise ValueError(f"{name} must be at least 2-D (rows, reduction), not of shape {tuple(bt.shape)}")
    if weights.codes.shape[-2:] != activations.codes.shape[-2:]:
        raise ValueError(
            f"Weights {tuple(weights.shape)} and activations {tuple(activations.shape)} differ in reduction "
            f"length or block size"
        )
    if weights.codes.shape[:-3] != activations.codes.shape[:-3]:
        raise ValueError(
            f"Weights {tuple(weights.shape)} and activations {tuple(activations.shape)} differ in batch shape"
        )


def exact_block_sums(weights, activations):
    """The exact accumulator value A (result = A * 2**-36) as limbs, plus NaN flags, for every
    (activation row t, weight row m): three (..., T, M) int64 limbs of base 2**24 and a (..., T, M) bool.
    Leading batch dimensions, if any, must match."""
    _check_operands(weights, activations)
    w, w_nan = _element_integers(weights)
    x, x_nan = _element_integers(activations)
    w_scale = _UE4M3_INT[weights.scales.long()]
    x_scale = _UE4M3_INT[activations.scales.long()]
    n_blocks, block_size = w.shape[-2], w.shape[-1]
    out_shape = (*x.shape[:-2], w.shape[-3])
    if block_size > 1 << 26:
        raise ValueError(f"Block size {block_size} is too large for the exact int64 limb arithmetic")
    # Per block, |block sum| < B * 2**36 and scale product < 2**36 (both at LSB 2**-18). Split at 2**24,
    # the low limb grows by < 2**48 and the middle one by < (B + 1) * 2**36 per block; normalising after
    # every chunk keeps both below 2**62. The high limb grows by < B * 2**24 per block, far from 2**63.
    limb_bound = max(1, (1 << 62) // max(1 << 48, (block_size + 1) << 36))
    outputs = max(1, torch.Size(out_shape).numel())
    chunk_blocks = max(1, min(limb_bound, _CHUNK_ELEMENTS // outputs))
    limbs = [torch.zeros(out_shape, dtype=torch.int64) for _ in range(3)]
    for start in range(0, n_blocks, chunk_blocks):
        chunk = slice(start, start + chunk_blocks)
        block_sum = torch.einsum("...mbi,...tbi->...tmb", w[..., chunk, :], x[..., chunk, :])
        scale_product = x_scale[..., chunk].unsqueeze(-2) * w_scale[..., chunk].unsqueeze(-3)
        s_high, s_low = _split(block_sum)
        p_high, p_low = _split(scale_product)
        limbs[0] = limbs[0] + (s_low * p_low).sum(dim=-1)
        limbs[1] = limbs[1] + (s_high * p_low + s_low * p_high).sum(dim=-1)
        limbs[2] = limbs[2] + (s_high * p_high).sum(dim=-1)
        limbs = _normalise(limbs)
    nan = (x_nan.unsqueeze(-2) | w_nan.unsqueeze(-3)).any(dim=-1)
    return limbs, nan


def fp32_bits_of_scaled_integer(value, lsb_exponent=ACCUMULATOR_LSB_EXPONENT):
    """FP32 bit pattern of RNE(value * 2**lsb_exponent) for a Python int; +0 for 0 (numerics §8.2).

    Assumes the result is a normal FP32 number, which §8 guarantees for the unit's accumulator.
    """
    if value == 0:
        return 0
    sign = 1 if value < 0 else 0
    magnitude = -value if sign else value
    msb = magnitude.bit_length() - 1
    drop = msb - 23
    if drop > 0:
        kept = magnitude >> drop
        guard = (magnitude >> (drop - 1)) & 1
        sticky = magnitude & ((1 << (drop - 1)) - 1) != 0
        if guard and (sticky or kept & 1):
            kept += 1
        if kept >> 24:
            kept >>= 1
            msb += 1
    else:
        kept = magnitude << -drop
    exponent = msb + lsb_exponent + 127
    if not 0 < exponent < 255:
        raise OverflowError(f"{value} * 2**{lsb_exponent} is outside the normal FP32 range")
    return (sign << 31) | (exponent << 23) | (kept & 0x7FFFFF)


def unit_dot(weights, activations):
    """What the unit outputs for every (activation row, weight row): (..., T, M) int64 FP32 bit patterns.

    ``weights``: BlockTensor of shape (..., M, K); ``activations``: BlockTensor of shape (..., T, K); same
    block size and batch dimensions. Each output is RNE_FP32(sum over blocks of s_w*s_x*sum_i dec(w_i)*dec(x_i)), or the canonical
    NaN. Global scales are not applied (see ``layer_output``).
    """
    limbs, nan = exact_block_sums(weights, activations)
    low, mid, high = (limb.flatten().tolist() for limb in limbs)
    bits = [
        fp32_bits_of_scaled_integer((h << 2 * _LIMB_BITS) + (m << _LIMB_BITS) + lo)
        for lo, m, h in zip(low, mid, high)
    ]
    result = torch.tensor(bits, dtype=torch.int64).reshape(nan.shape)
    return torch.where(nan, CANONICAL_NAN_BITS, result)


def bits_to_float32(bits):
    """int64 tensor of FP32 bit patterns -> float32 tensor."""
    return bits.to(torch.int32).view(torch.float32) if bits.numel() else torch.empty(bits.shape)


def layer_output(weights, activations):
    """(G_w * G_x) * unit output in FP32, (..., T, M): the per-tensor scales applied outside the unit, with
    two more FP32 roundings (the scale product, then the multiply; numerics §8)."""
    unit = bits_to_float32(unit_dot(weights, activations))
    return unit * (weights.global_scale * activations.global_scale)


def fake_quant_matmul(weights, activations, *, dtype=torch.float32):
    """dequantize(x) @ dequantize(w).T in ``dtype``: fast, for model evaluation. Not bit-exact with the
    unit: the matmul rounds partial sums, where the unit sums exactly and rounds once."""
    return dequantize(activations, dtype=dtype) @ dequantize(weights, dtype=dtype).transpose(-1, -2)
