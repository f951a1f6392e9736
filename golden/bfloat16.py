"""BF16 <-> FP32 on raw bit patterns, as the hardware sees them (docs/numerics.md §1)."""

import torch

__all__ = ["bf16_bits_to_fp32", "fp32_to_bf16_bits"]

_CANONICAL_BF16_NAN = 0x7FC0


def bf16_bits_to_fp32(bits):
    """Exact: the 16 BF16 bits become the top half of an FP32 word."""
    if not isinstance(bits, torch.Tensor) or bits.dtype.is_floating_point or bits.dtype == torch.bool:
        raise TypeError("BF16 bit patterns must be an integer tensor")
    if bits.numel() and (int(bits.min()) < 0 or int(bits.max()) > 0xFFFF):
        raise ValueError("BF16 bit patterns must lie in [0, 0xFFFF]")
    return (bits.to(torch.int32) << 16).view(torch.float32)


def fp32_to_bf16_bits(x):
    """Round FP32 to BF16, nearest even; Inf stays Inf, NaN becomes the canonical quiet NaN 0x7FC0."""
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
        raise TypeError("Input must be a float32 tensor")
    word = x.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    lsb = (word >> 16) & 1
    rounded = ((word + 0x7FFF + lsb) >> 16) & 0xFFFF
    return torch.where(torch.isnan(x), _CANONICAL_BF16_NAN, rounded).to(torch.int32)
