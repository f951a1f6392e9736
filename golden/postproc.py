"""The tile's post-processing of each dot result (docs/numerics.md §10.1, steps 2 and 3): one IEEE binary32
multiply by the FP32 scale register G, round to nearest even with gradual underflow, then the BF16 rounding.

Exact integer arithmetic on the significands, so the result does not depend on the host's floating-point
environment (a CPU that flushes subnormals to zero gives the same bits)."""

import torch

from .bfloat16 import fp32_to_bf16_bits
from .dot import CANONICAL_NAN_BITS

__all__ = ["scale_fp32_bits", "postprocess"]

_FP32_INF = 0x7F800000
_SHIFT_LIMIT = 49  # a 48-bit product shifted right by 49 or more leaves only sticky bits


def _check_bits(bits):
    if not isinstance(bits, torch.Tensor) or bits.dtype.is_floating_point or bits.dtype.is_complex \
            or bits.dtype == torch.bool:
        raise TypeError("FP32 bit patterns must be an integer tensor")
    if bits.numel() and (int(bits.min()) < 0 or int(bits.max()) > 0xFFFFFFFF):
        raise ValueError("FP32 bit patterns must lie in [0, 0xFFFFFFFF]")


def _check_scale(scale_bits):
    if not isinstance(scale_bits, int) or isinstance(scale_bits, bool):
        raise TypeError(f"The scale must be an int FP32 bit pattern, not {scale_bits!r}")
    if not 0 <= scale_bits <= 0xFFFFFFFF:
        raise ValueError(f"The scale must lie in [0, 0xFFFFFFFF], not {scale_bits:#x}")


def _fields(word):
    """(sign, biased exponent with subnormals at 1, 24-bit significand, zero, Inf, NaN) of int64 FP32 words."""
    sign = (word >> 31) & 1
    exponent_field = (word >> 23) & 0xFF
    mantissa = word & 0x7FFFFF
    normal = exponent_field != 0
    significand = mantissa | (normal.to(torch.int64) << 23)
    exponent = torch.clamp(exponent_field, min=1)
    special = exponent_field == 0xFF
    return sign, exponent, significand, significand == 0, special & (mantissa == 0), special & (mantissa != 0)


def _leading_one(value):
    """floor(log2(value)) of positive int64 values below 2**48 (0 for 0): exact through float64, which
    holds every such integer, and frexp's exponent of a normal double."""
    _, exponent = torch.frexp(value.to(torch.float64))
    return torch.where(value > 0, exponent.to(torch.int64) - 1, 0)


def scale_fp32_bits(bits, scale_bits):
    """RNE_FP32(u * G) on bit patterns: ``bits`` an integer tensor of FP32 words u (0 .. 2**32 - 1),
    ``scale_bits`` the int FP32 word G. IEEE 754 binary32 multiplication: subnormal results kept, overflow
    to ±Inf, 0 * Inf and any NaN operand give 0x7FC00000, the sign of a zero is the XOR of the signs.
    Returns int64 FP32 words of ``bits``' shape."""
    _check_bits(bits)
    _check_scale(scale_bits)
    word = bits.to(torch.int64)
    sign_a, exp_a, sig_a, zero_a, inf_a, nan_a = _fields(word)
    sign_g, exp_g, sig_g, zero_g, inf_g, nan_g = _fields(torch.tensor(scale_bits, dtype=torch.int64))

    # u * G = P * 2**(S - 300): P the 48-bit significand product, S the sum of the biased exponents.
    product = sig_a * sig_g
    exponent_sum = exp_a + exp_g
    # The leading one's biased exponent, and the exponent the result's LSB takes: normal (leading one at
    # bit 23 of the kept significand) or the subnormal LSB 2**-149.
    leading = _leading_one(product) + exponent_sum - 173
    target = torch.clamp(leading, min=1)
    shift = torch.clamp(target + 150 - exponent_sum, max=_SHIFT_LIMIT)  # >= 0 (only subnormals leave < 24 bits)
    kept = product >> shift
    guard = torch.where(shift > 0, (product >> torch.clamp(shift - 1, min=0)) & 1, 0)
    sticky = (product & ((torch.ones_like(shift) << torch.clamp(shift - 1, min=0)) - 1)) != 0
    round_up = (guard == 1) & (sticky | ((kept & 1) == 1))
    rounded = kept + round_up.to(torch.int64)
    # (target - 1) << 23 plus the rounded significand covers normals, subnormals, the carry into the next
    # binade and a subnormal rounding up to the smallest normal alike.
    magnitude = torch.clamp(((target - 1) << 23) + rounded, max=_FP32_INF)

    sign = (sign_a ^ sign_g) << 31
    zero = zero_a | zero_g
    inf = inf_a | inf_g
    result = torch.where(zero, 0, magnitude)
    result = torch.where(inf, _FP32_INF, result) | sign
    nan = nan_a | nan_g | (zero & inf)
    return torch.where(nan, CANONICAL_NAN_BITS, result)


def postprocess(bits, scale_bits):
    """Steps 2 and 3 of numerics §10.1 on dot results ``bits`` (int FP32 words) and the scale register
    ``scale_bits``: (FP32 words of RNE_FP32(u * G) as int64, their BF16 rounding as int32)."""
    fp32 = scale_fp32_bits(bits, scale_bits)
    return fp32, fp32_to_bf16_bits(fp32.to(torch.int32).view(torch.float32))
