"""Byte layouts of docs/numerics.md §5: E2M1 nibble packing and the mixed-precision block stream."""

from dataclasses import dataclass

import torch

from .blocks import BlockTensor

__all__ = ["pack_e2m1", "unpack_e2m1", "PackedBlocks", "pack_blocks", "unpack_blocks"]


def pack_e2m1(codes):
    """Two E2M1 codes per byte along the last dim: element 2i in the low nibble, 2i+1 in the high one."""
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.uint8:
        raise TypeError("E2M1 codes must be a uint8 tensor")
    if codes.dim() == 0 or codes.shape[-1] % 2:
        raise ValueError("The last dimension of E2M1 codes must be even to pack two per byte")
    if codes.numel() and int(codes.max()) > 0xF:
        raise ValueError("E2M1 codes must lie in [0, 15]")
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_e2m1(packed):
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
        raise TypeError("Packed E2M1 data must be a uint8 tensor")
    if packed.dim() == 0:
        raise ValueError("Packed E2M1 data must have at least one dimension")
    return torch.stack((packed & 0xF, packed >> 4), dim=-1).flatten(-2)


@dataclass(frozen=True)
class PackedBlocks:
    """The storage form of a BlockTensor, blocks in row-major order (numerics §5).

    ``payload``: uint8, each block's elements in turn (NVFP4: block_size/2 packed bytes, FP8: block_size
    bytes); ``scales``: uint8, one UE4M3 code per block; ``precision_bits``: uint8, block j's precision bit
    at bit j % 8 of byte j // 8 (1 = FP8). ``shape``, ``block_size`` and ``global_scale`` travel alongside.
    """

    payload: torch.Tensor
    scales: torch.Tensor
    precision_bits: torch.Tensor
    shape: tuple
    block_size: int
    global_scale: torch.Tensor

    @property
    def n_blocks(self):
        return self.scales.numel()

    @property
    def total_bits(self):
        """Codes + 8-bit scale + 1 precision bit per block: the memory cost the docs report."""
        return self.payload.numel() * 8 + self.n_blocks * (8 + 1)


def pack_blocks(bt):
    if not isinstance(bt, BlockTensor):
        raise TypeError(f"Expected a BlockTensor, not {type(bt).__name__}")
    if bt.block_size % 2:
        raise ValueError(f"NVFP4 packing needs an even block size, not {bt.block_size}")
    codes = bt.codes.reshape(-1, bt.block_size)
    precision = bt.precision.reshape(-1)
    # One packed row per block, then drop the unused half of the NVFP4 rows.
    fp4 = torch.zeros_like(codes)
    fp4[:, : bt.block_size // 2] = pack_e2m1(codes & 0xF)
    rows = torch.where(precision.unsqueeze(-1), codes, fp4)
    used = torch.arange(bt.block_size) < torch.where(precision, bt.block_size, bt.block_size // 2).unsqueeze(-1)
    payload = rows[used]
    n = precision.numel()
    padded = torch.zeros((n + 7) // 8 * 8, dtype=torch.uint8)
    padded[:n] = precision.to(torch.uint8)
    weights = (1 << torch.arange(8)).to(torch.uint8)
    precision_bits = (padded.reshape(-1, 8) * weights).sum(dim=-1, dtype=torch.uint8)
    return PackedBlocks(
        payload=payload,
        scales=bt.scales.reshape(-1).clone(),
        precision_bits=precision_bits,
        shape=tuple(bt.shape),
        block_size=bt.block_size,
        global_scale=bt.global_scale,
    )


def unpack_blocks(pb):
    if not isinstance(pb, PackedBlocks):
        raise TypeError(f"Expected PackedBlocks, not {type(pb).__name__}")
    n, size = pb.n_blocks, pb.block_size
    bits = (pb.precision_bits.unsqueeze(-1) >> torch.arange(8).to(torch.uint8)) & 1
    precision = bits.reshape(-1)[:n].bool()
    lengths = torch.where(precision, size, size // 2)
    if int(lengths.sum()) != pb.payload.numel():
        raise ValueError(
            f"Payload holds {pb.payload.numel()} bytes but the precision bits call for {int(lengths.sum())}"
        )
    rows = torch.zeros((n, size), dtype=torch.uint8)
    used = torch.arange(size) < lengths.unsqueeze(-1)
    rows[used] = pb.payload
    fp4 = unpack_e2m1(rows[:, : size // 2])
    codes = torch.where(precision.unsqueeze(-1), rows, fp4)
    # Explicit block counts: -1 is ambiguous for tensors with no elements.
    blocks_shape = (*pb.shape[:-1], pb.shape[-1] // size)
    return BlockTensor(
        codes=codes.reshape(*blocks_shape, size),
        scales=pb.scales.reshape(blocks_shape),
        precision=precision.reshape(blocks_shape),
        global_scale=pb.global_scale,
    )
