"""Bit-exact model of the FGMP engine (activation quantization unit -> dot unit): BF16 activations and
pre-quantized weight blocks in, FP32 results out (docs/numerics.md §8, §9)."""

import torch

from .actq import quantize_activations
from .dot import bits_to_float32, unit_dot

__all__ = ["engine_dot", "engine_layer_output"]


def engine_dot(weights, activations, config):
    """What the engine outputs: (T, M) FP32 bit patterns for BF16 ``activations`` (T, K) against the
    weight BlockTensor (M, K), and the activation blocks the unit chose on the way."""
    blocks = quantize_activations(activations, config, block_size=weights.block_size).blocks
    return unit_dot(weights, blocks), blocks


def engine_layer_output(weights, activations, config):
    """(G_w * 2**k) * engine output in FP32: the per-tensor scales applied after the engine."""
    bits, blocks = engine_dot(weights, activations, config)
    return bits_to_float32(bits) * (weights.global_scale * blocks.global_scale).to(torch.float32)
