"""Bit-exact torch golden model of the FGMP formats and units (docs/numerics.md). Never imports fgmp.hw."""

from .blocks import (
    DEFAULT_BLOCK_SIZE,
    BlockTensor,
    block_bits,
    dequantize,
    global_scale,
    quantize_blocks,
    quantize_fp8,
    quantize_nvfp4,
)
from .formats import E2M1, E4M3, UE4M3, FloatFormat, decode, decode_fields, encode, encode_ratio
from .packing import pack_blocks, pack_e2m1, unpack_blocks, unpack_e2m1
from .bfloat16 import bf16_bits_to_fp32, fp32_to_bf16_bits
from .actq import ActivationBlocks, ActivationConfig, exact_decisions, exact_scores, quantize_activations
from .engine import engine_dot, engine_layer_output
from .postproc import postprocess, scale_fp32_bits
from .tile import TileStep, activation_words, tile_layer, tile_scale_bits, tile_weight_bits, weight_images
from .dot import ACCUMULATOR_LSB_EXPONENT, CANONICAL_NAN_BITS, bits_to_float32, fake_quant_matmul, layer_output, unit_dot

__all__ = [
    "DEFAULT_BLOCK_SIZE", "BlockTensor", "block_bits", "dequantize", "global_scale", "quantize_blocks",
    "quantize_fp8", "quantize_nvfp4", "E2M1", "E4M3", "UE4M3", "FloatFormat", "decode", "decode_fields",
    "encode", "encode_ratio", "pack_blocks", "pack_e2m1", "unpack_blocks", "unpack_e2m1",
    "bf16_bits_to_fp32", "fp32_to_bf16_bits", "ACCUMULATOR_LSB_EXPONENT", "CANONICAL_NAN_BITS", "bits_to_float32", "fake_quant_matmul",
    "layer_output", "unit_dot", "ActivationBlocks", "ActivationConfig", "exact_decisions", "exact_scores",
    "quantize_activations", "engine_dot", "engine_layer_output", "postprocess", "scale_fp32_bits", "TileStep",
    "activation_words", "tile_layer", "tile_scale_bits", "tile_weight_bits", "weight_images",
]
