"""Step-by-step FP32 NVFP4 recipes of other libraries, kept only to measure how often they agree with us.

These are *not* the contract: ``quantize_nvfp4`` (blocks.py) is, and it rounds every scale and element
from the exact rational value. Public libraries compute the same quantities with a chain of FP32
operations, each rounded on its own, so near a rounding boundary their codes can differ by one step.
The functions here replay those chains so bench/agreement.py can count how often that happens.

Every intermediate is a torch float32 operation, done in the order listed; the final casts to UE4M3 and
E2M1 use the exact ``encode`` after an explicit saturating clamp, so only the FP32 operation order
differs from the contract, never the rounding of the cast itself. Attributions follow a team note and
describe one version of each library; library code changes (for instance, recent TransformerEngine
multiplies block_amax by fp32(S_enc * fp32(1/6)) rather than fp32(block_amax * fp32(1/6)) by S_enc).

Conventions shared by all recipes, so that like is compared with like:

* an all-zero tensor uses G = 1 (S_enc = 1), as the contract does;
* a block whose scale code is 0 gets all codes +0. Such a block dequantizes to zero whatever its codes,
  and libraries fill it with whatever dividing by a zero scale gives (saturated +-6, NaN): noise.

Each function returns ``(codes, scales)``: uint8 E2M1 codes (..., n_blocks, block_size) with the sign
in bit 3, and uint8 UE4M3 scale codes (..., n_blocks), laid out as ``quantize_nvfp4`` lays them out.
"""

import torch

from .blocks import DEFAULT_BLOCK_SIZE, NVFP4_SCALE_DENOMINATOR, _check_input
from .formats import E2M1, UE4M3, decode, encode

__all__ = ["nvfp4_fp32_reciprocal", "nvfp4_fp32_divide", "nvfp4_fp32_divide_clamped"]

_FP32 = torch.float32
_FP32_MAX = torch.finfo(_FP32).max
_E4M3_MIN_NORMAL = 2.0**-6


def _f32(value):
    return torch.tensor(value, dtype=_FP32)


_ONE = _f32(1.0)
_DENOMINATOR = _f32(NVFP4_SCALE_DENOMINATOR)
_ELEMENT_MAX = _f32(E2M1.max_value)
# Computed as an FP32 division, as `constexpr float 1.0f / 6.0f` is, not rounded from a double.
_INV_ELEMENT_MAX = torch.div(_ONE, _ELEMENT_MAX)


def _blocks(x, block_size):
    _check_input(x, block_size)
    x = x.detach().to(_FP32)
    blocks = x.reshape(*x.shape[:-1], x.shape[-1] // block_size, block_size)
    block_amax = blocks.abs().amax(dim=-1)
    amax = block_amax.max() if block_amax.numel() else _f32(0.0)
    return blocks, block_amax, amax


def _scale_codes(scale):
    """UE4M3 codes of non-negative FP32 block scales, saturating at 448 as the libraries' casts do."""
    return encode(scale.clamp(max=UE4M3.max_value), UE4M3)


def _element_codes(scaled, scale_codes):
    """E2M1 codes of FP32 scaled elements, saturating at +-6; +0 in blocks whose scale code is 0."""
    zero_scale = (scale_codes == 0).unsqueeze(-1)
    # Zero-scale blocks divided by zero; their quotients are discarded before the cast sees a NaN.
    scaled = torch.where(zero_scale, 0.0, scaled)
    if bool(torch.isnan(scaled).any()):
        raise ValueError("An FP32 block denominator underflowed to zero (input amax too small for FP32)")
    codes = encode(scaled.clamp(-E2M1.max_value, E2M1.max_value), E2M1)
    return torch.where(zero_scale, 0, codes).to(torch.uint8)


def nvfp4_fp32_reciprocal(x, block_size=DEFAULT_BLOCK_SIZE):
    """TransformerEngine-style: multiply by FP32 reciprocals.

    S_enc = 2688 / amax (clamped to the FP32 max); s = fp32(amax_b * fp32(1/6)) * S_enc, cast to UE4M3;
    element = x * fp32(1 / (dec(s) * fp32(1 / S_enc))) (reciprocal clamped to the FP32 max), cast to E2M1.
    """
    blocks, block_amax, amax = _blocks(x, block_size)
    s_enc = torch.div(_DENOMINATOR, amax).clamp(max=_FP32_MAX) if amax > 0 else _ONE
    s_dec = torch.div(_ONE, s_enc)

    scales = _scale_codes(torch.mul(torch.mul(block_amax, _INV_ELEMENT_MAX), s_enc))

    block_dec = torch.mul(decode(scales, UE4M3), s_dec)
    reciprocal = torch.div(_ONE, block_dec).clamp(max=_FP32_MAX)
    codes = _element_codes(torch.mul(blocks, reciprocal.unsqueeze(-1)), scales)
    return codes, scales


def _divide(x, block_size, min_scale):
    blocks, block_amax, amax = _blocks(x, block_size)
    g = torch.div(amax, _DENOMINATOR) if amax > 0 else _ONE
    if g == 0:
        # The contract floors G at 2**-149; these libraries do not, and would divide by zero.
        raise ValueError("FP32 G = amax / 2688 underflows to zero; the dividing recipes are undefined here")

    scale = torch.div(torch.div(block_amax, _ELEMENT_MAX), g)
    if min_scale is not None:
        # Only all-zero blocks keep a zero scale; every other block is lifted to the floor.
        scale = torch.where(block_amax == 0, 0.0, scale.clamp(min=min_scale))
    scales = _scale_codes(scale)

    block_dec = torch.mul(g, decode(scales, UE4M3))
    codes = _element_codes(torch.div(blocks, block_dec.unsqueeze(-1)), scales)
    return codes, scales


def nvfp4_fp32_divide(x, block_size=DEFAULT_BLOCK_SIZE):
    """ModelOpt / compressed-tensors-style: divide in FP32.

    G = amax / 2688; s = fp32(amax_b / 6) / G, cast to UE4M3; element = x / fp32(G * dec(s)), cast to E2M1.
    """
    return _divide(x, block_size, min_scale=None)


def nvfp4_fp32_divide_clamped(x, block_size=DEFAULT_BLOCK_SIZE):
    """torchao-style: as ``nvfp4_fp32_divide``, but block scales are clamped to >= 2**-6 before the cast,
    so no block of a non-zero amax gets a subnormal (or zero) scale."""
    return _divide(x, block_size, min_scale=_E4M3_MIN_NORMAL)
