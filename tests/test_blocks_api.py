"""Block quantizer API: shapes, memory cost and clear errors for bad input (numerics §3-§5)."""

import pytest
import torch

from fgmp import golden


def test_any_leading_shape_and_empty_tensors():
    x = torch.randn(2, 3, 64)
    bt = golden.quantize_blocks(x, torch.rand(2, 3, 4) < 0.5)
    assert bt.codes.shape == (2, 3, 4, 16) and bt.scales.shape == (2, 3, 4) and bt.shape == (2, 3, 64)
    assert golden.dequantize(bt).shape == x.shape
    empty = golden.quantize_nvfp4(torch.empty(0, 32))
    assert empty.codes.shape == (0, 2, 16) and golden.dequantize(empty).shape == (0, 32)


def test_all_zero_tensor_has_unit_global_scale_and_zero_codes():
    bt = golden.quantize_fp8(torch.zeros(4, 32))
    assert float(bt.global_scale) == 1.0
    assert not bt.codes.any() and not bt.scales.any()


def test_zero_scale_blocks_store_positive_zero_codes():
    """A block far below the tensor's amax gets scale 0, and every code of it is +0 (not -0)."""
    x = torch.cat([torch.full((16,), -1e-30), torch.full((16,), 448.0)])
    for bt in (golden.quantize_nvfp4(x), golden.quantize_fp8(x)):
        assert int(bt.scales[0]) == 0
        assert not bt.codes[0].any()


def test_block_bits_counts_codes_scale_and_precision_bit():
    assert golden.block_bits(torch.tensor([False])) == 16 * 4 + 8 + 1
    assert golden.block_bits(torch.tensor([True])) == 16 * 8 + 8 + 1
    assert golden.block_bits(torch.tensor([True, False]), block_size=32) == 32 * 12 + 2 * 9


def test_fp8_fraction():
    bt = golden.quantize_blocks(torch.randn(4, 64), torch.tensor([[True, False, False, False]]))
    assert bt.fp8_fraction == 0.25


@pytest.mark.parametrize("x, kwargs, error, message", [
    ([1.0] * 16, {}, TypeError, r"^Input must be a torch\.Tensor, not list$"),
    (torch.ones(16, dtype=torch.float64), {}, TypeError,
     r"^Input must be float32, bfloat16 or float16 \(exact in FP32\), not torch\.float64; "),
    (torch.ones(16, dtype=torch.int32), {}, TypeError, r"^Input must be float32, bfloat16 or float16"),
    (torch.ones(24), {}, ValueError, r"^Last dimension 24 is not divisible by the block size 16$"),
    (torch.tensor(1.0), {}, ValueError, r"^Input must have at least one dimension"),
    (torch.ones(16), {"block_size": 0}, ValueError, r"^Block size must be positive, not 0$"),
    (torch.ones(16), {"block_size": 16.0}, TypeError, r"^Block size must be an int, not float$"),
    (torch.tensor([1.0] * 15 + [float("nan")]), {}, ValueError,
     r"^Input contains NaN or Inf; block quantization needs finite values$"),
    (torch.tensor([1.0] * 15 + [float("inf")]), {}, ValueError, r"^Input contains NaN or Inf"),
    (torch.ones(16), {"scale": 0.0}, ValueError, r"^Global scale must be positive and finite, not 0\.0$"),
    (torch.ones(16), {"scale": 0.1}, ValueError, r"^Global scale 0\.1 is not exactly representable in FP32$"),
    (torch.ones(16), {"scale": "1"}, TypeError, r"^Global scale must be a float or a one-element float tensor"),
])
def test_bad_input_is_a_clear_error(x, kwargs, error, message):
    with pytest.raises(error, match=message):
        golden.quantize_nvfp4(x, **kwargs)


def test_precision_must_be_bool_and_fit_the_blocks():
    with pytest.raises(TypeError, match=r"^Precision must be a bool tensor \(True = FP8 block, False = NVFP4 block\)$"):
        golden.quantize_blocks(torch.ones(32), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match=r"^Precision of shape \(3,\) does not broadcast to the \(2,\) blocks"):
        golden.quantize_blocks(torch.ones(32), torch.tensor([True, False, True]))


def test_packed_layout_is_documented_byte_order():
    codes = torch.tensor([0x1, 0x2, 0x3, 0xF], dtype=torch.uint8)
    assert golden.pack_e2m1(codes).tolist() == [0x21, 0xF3]
    bt = golden.quantize_blocks(torch.randn(1, 48), torch.tensor([False, True, False]))
    packed = golden.pack_blocks(bt)
    assert packed.payload.numel() == 8 + 16 + 8
    assert packed.precision_bits.tolist() == [0b010]
    assert packed.total_bits == golden.block_bits(bt.precision)
    assert packed.payload[:8].tolist() == golden.pack_e2m1(bt.codes[0, 0]).tolist()
    assert packed.payload[8:24].tolist() == bt.codes[0, 1].tolist()


def test_unpack_blocks_checks_the_payload_length():
    packed = golden.pack_blocks(golden.quantize_nvfp4(torch.randn(32)))
    broken = golden.packing.PackedBlocks(packed.payload[:-1], packed.scales, packed.precision_bits,
                                         packed.shape, packed.block_size, packed.global_scale)
    with pytest.raises(ValueError, match=r"^Payload holds 15 bytes but the precision bits call for 16$"):
        golden.unpack_blocks(broken)
