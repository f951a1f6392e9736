"""Bit-exact model of the FGMP tile's layer step and its memory images (docs/numerics.md §10)."""

from dataclasses import dataclass

import torch

from .actq import ActivationBlocks, ActivationConfig, quantize_activations
from .blocks import BlockTensor
from .dot import unit_dot
from .postproc import postprocess

__all__ = ["TileStep", "tile_layer", "tile_scale_bits", "weight_images", "activation_words", "activation_blocks",
           "tile_weight_bits", "ACTIVATION_WORD_BITS", "WEIGHT_LOW_BITS", "WEIGHT_HIGH_BITS"]

ACTIVATION_WORD_BITS = 137  # B = 16: codes, scale, precision bit
WEIGHT_LOW_BITS = 73  # precision bit, scale, one nibble per element
WEIGHT_HIGH_BITS = 64  # the FP8 codes' high nibbles


@dataclass(frozen=True)
class TileStep:
    """What the tile produces for one layer: ``outputs`` (T, M) FP32 bits of RNE(u * G) (int64),
    ``bf16`` (T, M) their BF16 rounding (int32), ``next_blocks`` the next layer's activation blocks
    (ActivationBlocks; None when no next-layer configuration was given)."""

    outputs: torch.Tensor
    bf16: torch.Tensor
    next_blocks: ActivationBlocks | None


def _check_blocks(name, blocks, block_size=16):
    if not isinstance(blocks, BlockTensor):
        raise TypeError(f"{name} must be a BlockTensor, not {type(blocks).__name__}")
    if blocks.codes.dim() != 3:
        raise ValueError(f"{name} must be a matrix of blocks (rows x blocks x {blocks.block_size}), "
                         f"not shape {tuple(blocks.codes.shape)}")
    if blocks.block_size != block_size:
        raise ValueError(f"{name} must have blocks of {block_size} elements, not {blocks.block_size}")


def tile_scale_bits(weights, activations):
    """The FP32 bits of G = fl32(G_w * G_x), what the host writes into the tile's scale register."""
    g = (weights.global_scale.to(torch.float32) * activations.global_scale.to(torch.float32)).reshape(1)
    return int(g.view(torch.int32)) & 0xFFFFFFFF


def tile_layer(weights, activations, scale_bits, next_config=None):
    """The tile's layer step (numerics §10.1): the dot unit's results for every (token, output channel)
    of ``activations`` (T x K blocks) against ``weights`` (M x K blocks), times the FP32 register
    ``scale_bits``, rounded to BF16 and, with ``next_config`` (an ActivationConfig over M channels),
    quantized into the next layer's activation blocks."""
    _check_blocks("Weights", weights)
    _check_blocks("Activations", activations)
    if weights.codes.shape[1] != activations.codes.shape[1]:
        raise ValueError(f"Weights have {weights.shape[-1]} inputs, activations {activations.shape[-1]}")
    if next_config is not None and not isinstance(next_config, ActivationConfig):
        raise TypeError(f"The next layer's configuration must be an ActivationConfig, not {next_config!r}")
    unit = unit_dot(weights, activations)
    outputs, bf16 = postprocess(unit, scale_bits)
    next_blocks = None
    if next_config is not None:
        if len(next_config.sensitivities) != weights.shape[0]:
            raise ValueError(f"The next layer's table has {len(next_config.sensitivities)} channels, the layer "
                             f"{weights.shape[0]} outputs")
        next_blocks = quantize_activations(bf16.to(torch.int16).view(torch.bfloat16), next_config,
                                           block_size=weights.block_size)
    return TileStep(outputs, bf16, next_blocks)


def _nibbles(codes, shift):
    """Each block's codes (n x B) as one integer of 4-bit fields, element i at bits 4i+3..4i."""
    fields = ((codes.to(torch.int64) >> shift) & 0xF).tolist()
    return [sum(code << (4 * i) for i, code in enumerate(row)) for row in fields]


def weight_images(weights, lanes):
    """Per lane, (low words, high words) of numerics §10.2: lane l holds channels m = l (mod lanes), each
    channel's blocks in order; the low word of block n is {fp8, scale, low nibbles}, an FP8 block's high
    nibbles are the lane's next high word."""
    _check_blocks("Weights", weights)
    if not isinstance(lanes, int) or isinstance(lanes, bool) or lanes < 1:
        raise ValueError(f"Lanes must be a positive integer, not {lanes!r}")
    rows = weights.codes.shape[0]
    if rows % lanes:
        raise ValueError(f"{rows} output channels do not split into {lanes} lanes")
    images = []
    for lane in range(lanes):
        codes = weights.codes[lane::lanes].reshape(-1, weights.block_size)
        scales = weights.scales[lane::lanes].reshape(-1).tolist()
        fp8 = weights.precision[lane::lanes].reshape(-1).tolist()
        low = [nibbles | (scale << 64) | (int(wide) << 72)
               for nibbles, scale, wide in zip(_nibbles(codes, 0), scales, fp8)]
        high_all = _nibbles(codes, 4)
        high = [nibbles for nibbles, wide in zip(high_all, fp8) if wide]
        images.append((low, high))
    return images


def activation_words(blocks):
    """The 137-bit activation memory words of a BlockTensor (rows x blocks), row-major (numerics §10.2)."""
    _check_blocks("Activations", blocks)
    codes = blocks.codes.reshape(-1, blocks.block_size).to(torch.int64).tolist()
    scales = blocks.scales.reshape(-1).tolist()
    fp8 = blocks.precision.reshape(-1).tolist()
    return [sum(code << (8 * i) for i, code in enumerate(row)) | (scale << 128) | (int(wide) << 136)
            for row, scale, wide in zip(codes, scales, fp8)]


def activation_blocks(words, rows, global_scale):
    """The BlockTensor (rows x len(words)/rows blocks) that activation memory ``words`` hold."""
    if len(words) % rows:
        raise ValueError(f"{len(words)} words do not split into {rows} rows")
    codes = torch.tensor([[(word >> (8 * i)) & 0xFF for i in range(16)] for word in words], dtype=torch.uint8)
    scales = torch.tensor([(word >> 128) & 0xFF for word in words], dtype=torch.uint8)
    fp8 = torch.tensor([bool(word >> 136 & 1) for word in words])
    return BlockTensor(codes.reshape(rows, -1, 16), scales.reshape(rows, -1), fp8.reshape(rows, -1),
                       torch.as_tensor(global_scale, dtype=torch.float32))


def tile_weight_bits(weights, lanes, *, fp8_capacity=None):
    """Weight-memory bits of the FGMP tile (73 per block plus 64 per FP8 block, or with ``fp8_capacity``
    high words per lane, the generated memory's size) and of an FP8-only tile (136 per block)."""
    images = weight_images(weights, lanes)
    low = sum(len(l) for l, _ in images)
    high = sum(len(h) for _, h in images) if fp8_capacity is None else fp8_capacity * lanes
    return {"fgmp": low * WEIGHT_LOW_BITS + high * WEIGHT_HIGH_BITS, "fp8_only": low * 136,
            "max_lane_fp8_blocks": max(len(h) for _, h in images)}
