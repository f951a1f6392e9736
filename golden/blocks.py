"""Block quantization of docs/numerics.md §3-§4: NVFP4 and FP8 blocks with UE4M3 scales, mixed per block."""

from dataclasses import dataclass

import torch

from . import kernels
from .formats import E2M1, E4M3, UE4M3, _code_values_f64, encode_ratio

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "NVFP4_SCALE_DENOMINATOR",
    "BlockTensor",
    "global_scale",
    "quantize_blocks",
    "quantize_blocks_reference",
    "quantize_nvfp4",
    "quantize_fp8",
    "dequantize",
    "dequantize_reference",
    "block_bits",
]

DEFAULT_BLOCK_SIZE = 16
NVFP4_SCALE_DENOMINATOR = 2688  # 6 * 448: the largest E2M1 element times the largest UE4M3 scale
_SMALLEST_FP32 = 2.0**-149
_EXACT_INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class BlockTensor:
    """A tensor quantized in blocks of ``block_size`` along its last dimension.

    ``codes``: uint8 (..., n_blocks, block_size), one element code per byte (E2M1 in the low nibble for
    NVFP4 blocks, E4M3 for FP8 blocks); ``scales``: uint8 UE4M3 codes (..., n_blocks); ``precision``: bool
    (..., n_blocks), True for FP8; ``global_scale``: float32 scalar tensor G. Element value:
    G * dec(scale) * dec(code) (numerics §3).
    """

    codes: torch.Tensor
    scales: torch.Tensor
    precision: torch.Tensor
    global_scale: torch.Tensor

    @property
    def block_size(self):
        return self.codes.shape[-1]

    @property
    def shape(self):
        """Shape of the tensor this one quantizes."""
        return (*self.codes.shape[:-2], self.codes.shape[-2] * self.codes.shape[-1])

    @property
    def fp8_fraction(self):
        return float(self.precision.float().mean()) if self.precision.numel() else 0.0


def _check_input(x, block_size, *, finite=True):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"Input must be a torch.Tensor, not {type(x).__name__}")
    if x.dtype not in _EXACT_INPUT_DTYPES:
        raise TypeError(
            f"Input must be float32, bfloat16 or float16 (exact in FP32), not {x.dtype}; "
            "convert it explicitly so any rounding to FP32 is your choice"
        )
    if not isinstance(block_size, int) or isinstance(block_size, bool):
        raise TypeError(f"Block size must be an int, not {type(block_size).__name__}")
    if block_size < 1:
        raise ValueError(f"Block size must be positive, not {block_size}")
    if x.dim() == 0:
        raise ValueError("Input must have at least one dimension (blocks run along the last one)")
    if x.shape[-1] % block_size:
        raise ValueError(f"Last dimension {x.shape[-1]} is not divisible by the block size {block_size}")
    if finite and x.numel():
        _check_finite(x.detach().abs().amax())


def _check_finite(amax):
    # amax propagates NaN and Inf, so one test over the block maxima covers every element.
    if amax.numel() and not bool(torch.isfinite(amax).all()):
        raise ValueError("Input contains NaN or Inf; block quantization needs finite values")


def global_scale(x):
    """G = fl32(amax / 2688); 1 for an all-zero (or empty) tensor; at least 2**-149 (numerics §4)."""
    if not isinstance(x, torch.Tensor) or x.dtype not in _EXACT_INPUT_DTYPES:
        raise TypeError("Input must be a float32, bfloat16 or float16 tensor")
    if not x.numel():
        return torch.tensor(1.0, device=x.device)
    amax = x.detach().abs().max()
    if not bool(torch.isfinite(amax)):
        raise ValueError("Input contains NaN or Inf; the global scale needs finite values")
    return _scale_of_amax(amax)


def _scale_of_amax(amax):
    """G of a finite amax (a 0-d tensor), on amax's device."""
    amax = amax.to(torch.float64)
    # One float64 division then one cast is the correctly rounded FP32 quotient (53 >= 2*24 + 2).
    scale = (amax / NVFP4_SCALE_DENOMINATOR).to(torch.float32).clamp(min=_SMALLEST_FP32)
    return torch.where(amax == 0, torch.ones((), dtype=torch.float32, device=amax.device), scale)


def _check_global_scale(scale, device):
    if isinstance(scale, torch.Tensor) and scale.numel() == 1 and scale.dtype.is_floating_point:
        value = scale.detach().to(device=device, dtype=torch.float64).reshape(())
    elif isinstance(scale, (int, float)) and not isinstance(scale, bool):
        value = torch.tensor(float(scale), dtype=torch.float64, device=device)
    else:
        raise TypeError(f"Global scale must be a float or a one-element float tensor, not {scale!r}")
    if not (bool(torch.isfinite(value)) and float(value) > 0):
        raise ValueError(f"Global scale must be positive and finite, not {float(value)!r}")
    as_fp32 = value.to(torch.float32)
    if as_fp32.to(torch.float64) != value:
        raise ValueError(f"Global scale {float(value)!r} is not exactly representable in FP32")
    return as_fp32


def _check_precision(precision, shape):
    if not isinstance(precision, torch.Tensor) or precision.dtype != torch.bool:
        raise TypeError("Precision must be a bool tensor (True = FP8 block, False = NVFP4 block)")
    try:
        return torch.broadcast_to(precision, shape)
    except RuntimeError:
        raise ValueError(
            f"Precision of shape {tuple(precision.shape)} does not broadcast to the "
            f"{tuple(shape)} blocks of the input"
        ) from None


def quantize_blocks(x, precision, *, block_size=DEFAULT_BLOCK_SIZE, scale=None, block_scales=None):
    """Quantize ``x`` block by block, FP8 where ``precision`` is True and NVFP4 elsewhere (numerics §4).

    ``precision`` is a bool tensor broadcastable to (..., n_blocks); ``scale`` overrides G (a positive FP32
    value, e.g. a calibrated power of two) instead of fl32(amax / 2688); ``block_scales`` (uint8 UE4M3
    codes, one per block) overrides the amax-derived block scales, e.g. clipped ones (elements then
    saturate at the format's largest value, numerics §2). Runs on x's device with the fast exact kernels
    (numerics §2.1); ``quantize_blocks_reference`` is the reference they are tested against.
    """
    _check_input(x, block_size, finite=False)  # checked below on the block maxima
    x = x.detach()
    blocks_shape = (*x.shape[:-1], x.shape[-1] // block_size)
    precision = _check_precision(precision, blocks_shape).to(x.device)
    if block_scales is not None:
        block_scales = _check_block_scales(block_scales, blocks_shape).to(x.device)
    rows = x.reshape(-1, block_size)  # every block, row-major
    ranges = kernels.chunk_rows(rows.shape[0], block_size, x.device)
    amax = torch.zeros(rows.shape[0], dtype=torch.float32, device=x.device)
    for start, stop in ranges:
        amax[start:stop] = kernels.block_amax(rows[start:stop].float().abs())
    _check_finite(amax)
    if scale is None:
        g = _scale_of_amax(amax.max()) if amax.numel() else torch.tensor(1.0, device=x.device)
    else:
        g = _check_global_scale(scale, x.device)
    low, high = kernels.FAST_SCALE_RANGE
    if not rows.numel() or not low <= float(g) <= high:
        blocks = x.to(torch.float32).reshape(*blocks_shape, block_size)
        return _quantize_reference(blocks, precision, g, block_scales)
    flat_precision = precision.reshape(-1)
    flat_scales = None if block_scales is None else block_scales.reshape(-1)
    codes = torch.empty(rows.shape, dtype=torch.uint8, device=x.device)
    scales = torch.empty(rows.shape[0], dtype=torch.uint8, device=x.device)
    for start, stop in ranges:
        chunk = rows[start:stop].float()
        codes[start:stop], scales[start:stop] = kernels.quantize_blocks_fast(
            chunk, chunk.abs(), amax[start:stop], flat_precision[start:stop], g,
            None if flat_scales is None else flat_scales[start:stop])
    return BlockTensor(codes=codes.reshape(*blocks_shape, block_size), scales=scales.reshape(blocks_shape),
                       precision=precision.clone(), global_scale=g)


def quantize_blocks_reference(x, precision, *, block_size=DEFAULT_BLOCK_SIZE, scale=None, block_scales=None):
    """The reference block quantizer (float64 quotients corrected by exact midpoint products, numerics
    §2): slow, kept as the oracle the fast path is tested against. Same arguments and result."""
    _check_input(x, block_size)
    x = x.detach().to(torch.float32)
    blocks = x.reshape(*x.shape[:-1], x.shape[-1] // block_size, block_size)
    precision = _check_precision(precision, blocks.shape[:-1]).to(x.device)
    g = global_scale(x) if scale is None else _check_global_scale(scale, x.device)
    if block_scales is not None:
        block_scales = _check_block_scales(block_scales, blocks.shape[:-1]).to(x.device)
    return _quantize_reference(blocks, precision, g, block_scales)


def _quantize_reference(blocks, precision, g, block_scales):
    g64 = g.to(torch.float64)
    if block_scales is None:
        amax = blocks.abs().amax(dim=-1) if blocks.numel() else blocks.sum(dim=-1)
        element_max = torch.where(precision, E4M3.max_value, E2M1.max_value).to(torch.float64)
        scales = encode_ratio(amax, element_max * g64, UE4M3)
    else:
        scales = block_scales
    scale_values = _code_values_f64(scales, UE4M3)

    zero_scale = scale_values == 0
    # G * s has at most 24 + 4 significant bits: exact in float64, so the element quotient stays exact.
    denominator = torch.where(zero_scale, 1.0, g64 * scale_values).unsqueeze(-1)
    fp8_codes = encode_ratio(blocks, denominator, E4M3)
    fp4_codes = encode_ratio(blocks, denominator, E2M1)
    codes = torch.where(precision.unsqueeze(-1), fp8_codes, fp4_codes)
    codes = torch.where(zero_scale.unsqueeze(-1), 0, codes).to(torch.uint8)
    return BlockTensor(codes=codes, scales=scales, precision=precision.clone(), global_scale=g)


def _check_block_scales(codes, shape):
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.uint8:
        raise TypeError("Block scales must be a uint8 tensor of UE4M3 codes")
    if tuple(codes.shape) != tuple(shape):
        raise ValueError(f"Block scales of shape {tuple(codes.shape)} do not match the {tuple(shape)} blocks")
    if codes.numel() and int(codes.max()) > UE4M3.max_magnitude_code:
        raise ValueError("Block scales must be finite UE4M3 codes (0x00..0x7E)")
    return codes


def quantize_nvfp4(x, *, block_size=DEFAULT_BLOCK_SIZE, scale=None):
    """Every block NVFP4 (E2M1 elements, UE4M3 scale)."""
    return quantize_blocks(x, torch.tensor(False), block_size=block_size, scale=scale)


def quantize_fp8(x, *, block_size=DEFAULT_BLOCK_SIZE, scale=None):
    """Every block FP8 (E4M3 elements, UE4M3 scale)."""
    return quantize_blocks(x, torch.tensor(True), block_size=block_size, scale=scale)


def dequantize(bt, *, dtype=torch.float32):
    """G * s * dec(code) computed exactly (at most 24 + 4 + 4 bits) and rounded once to ``dtype``."""
    if not isinstance(bt, BlockTensor):
        raise TypeError(f"Expected a BlockTensor, not {type(bt).__name__}")
    if dtype == torch.float32:
        # Block rows in cache-sized chunks into one output: the lookups' int32 indices and FP32 temporaries
        # stay chunk-sized (whole-tensor ones cost 3x the weight's memory at 7B-layer sizes).
        codes = bt.codes.reshape(-1, bt.block_size)
        scales = bt.scales.reshape(-1)
        precision = torch.broadcast_to(bt.precision, bt.scales.shape).reshape(-1)
        out = torch.empty(codes.shape, dtype=torch.float32, device=codes.device)
        for start, stop in kernels.chunk_rows(codes.shape[0], bt.block_size, codes.device):
            out[start:stop] = kernels.dequantize_fast(codes[start:stop], scales[start:stop], precision[start:stop],
                                                      bt.global_scale)
        return out.reshape(bt.shape)
    return dequantize_reference(bt, dtype=dtype)


def dequantize_reference(bt, *, dtype=torch.float32):
    """G * s * dec(code) in float64 (exact), rounded once to ``dtype``: the reference of ``dequantize``."""
    codes = bt.codes.long()
    fp8 = _code_values_f64(codes, E4M3)
    fp4 = _code_values_f64(codes & 0xF, E2M1)
    elements = torch.where(bt.precision.unsqueeze(-1), fp8, fp4)
    scales = _code_values_f64(bt.scales, UE4M3).unsqueeze(-1)
    values = bt.global_scale.to(device=codes.device, dtype=torch.float64) * scales * elements
    return values.reshape(bt.shape).to(dtype)


def block_bits(precision, *, block_size=DEFAULT_BLOCK_SIZE):
    """Memory bits of blocks with these precision bits: codes + 8-bit scale + 1 precision bit each."""
    precision = torch.as_tensor(precision, dtype=torch.bool)
    element_bits = torch.where(precision, 8, 4).long()
    return int((element_bits * block_size + 8 + 1).sum())
