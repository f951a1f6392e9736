"""Stimuli for the dot unit's benches (amaranth.sim and cocotb alike): reductions, their stream
transactions, and the golden results they must produce.

A ``Reduction`` is one lane-parallel dot product: ``weights`` holds one row per lane, ``activation`` one
row; both span the same n blocks. Every suite respects the formats a unit enables (an FP8-only unit never
sees an NVFP4 block).
"""

import random
from dataclasses import dataclass

import torch
from amaranth.hdl import Shape

from fgmp.golden import BlockTensor, quantize_blocks, unit_dot

__all__ = [
    "Reduction", "exhaustive_reductions", "random_reductions", "transactions", "expected_results",
    "PayloadPacker", "ONE_SCALE", "reductions_state", "reductions_from_state",
]

ONE_SCALE = 0x38  # UE4M3 1.0
_E4M3_NAN_CODES = (0x7F, 0xFF)
_FP8_EDGE_CODES = (0x00, 0x80, 0x01, 0x81, 0x07, 0x87, 0x08, 0x88, 0x7E, 0xFE, 0x38, 0xB8)
_FP4_EDGE_CODES = (0x0, 0x8, 0x1, 0x9, 0x7, 0xF, 0x2, 0xA)
_SCALE_EDGE_CODES = (0x00, 0x01, 0x07, 0x08, 0x38, 0x7E)


@dataclass(frozen=True)
class Reduction:
    weights: BlockTensor  # (lanes, n * B)
    activation: BlockTensor  # (1, n * B)

    @property
    def blocks(self):
        return self.activation.codes.shape[1]


def reductions_state(reductions):
    """A torch.save-able form of a list of reductions (codes, scales, precision of weights and activation)."""
    return [{side: {"codes": bt.codes, "scales": bt.scales, "precision": bt.precision}
             for side, bt in (("weights", r.weights), ("activation", r.activation))} for r in reductions]


def reductions_from_state(state):
    return [Reduction(weights=_block_tensor(**r["weights"]), activation=_block_tensor(**r["activation"]))
            for r in state]


def _block_tensor(codes, scales, precision):
    return BlockTensor(codes=torch.as_tensor(codes, dtype=torch.uint8),
                       scales=torch.as_tensor(scales, dtype=torch.uint8),
                       precision=torch.as_tensor(precision, dtype=torch.bool),
                       global_scale=torch.tensor(1.0))


def _uniform_block(code, fp8, block_size):
    return _block_tensor([[[code] * block_size]], [[ONE_SCALE]], [[fp8]])


def exhaustive_reductions(*, lanes, formats, block_size):
    """Every element code pair of every enabled block pairing, one pair per lane and block.

    Each block repeats one code in all B elements with scale 1.0, so every pair goes through every
    multiplier of its lane and the result is exactly B * dec(w) * dec(x). Returns (reductions, pairs)
    where ``pairs`` counts distinct (weight code, activation code, pairing) triples checked.
    """
    element_codes = {True: range(256), False: range(16)}
    precisions = [fmt == "fp8" for fmt in formats]
    reductions, pairs = [], 0
    for x_fp8 in precisions:
        for w_fp8 in precisions:
            weight_codes = list(element_codes[w_fp8])
            pairs += len(weight_codes) * len(element_codes[x_fp8])
            for x_code in element_codes[x_fp8]:
                activation = _uniform_block(x_code, x_fp8, block_size)
                for start in range(0, len(weight_codes), lanes):
                    group = weight_codes[start:start + lanes]
                    group += [0] * (lanes - len(group))  # zero weights pad the last group
                    weights = _block_tensor([[[c] * block_size] for c in group], [[ONE_SCALE]] * lanes,
                                            [[w_fp8]] * lanes)
                    reductions.append(Reduction(weights, activation))
    return reductions, pairs


def _precision(rng, formats, rows, n):
    if formats == ("fp8",):
        return torch.ones(rows, n, dtype=torch.bool)
    if formats == ("nvfp4",):
        return torch.zeros(rows, n, dtype=torch.bool)
    fp8_share = rng.choice((0.0, 0.3, 0.7, 1.0))
    return torch.tensor([[rng.random() < fp8_share for _ in range(n)] for _ in range(rows)])


def _heavy_tailed(rng, rows, n, block_size, precision):
    """Quantized real numbers whose magnitudes span many decades (per block and per element)."""
    generator = torch.Generator().manual_seed(rng.getrandbits(32))
    values = torch.randn(rows, n, block_size, generator=generator)
    values = values * torch.exp(2 * torch.randn(rows, n, block_size, generator=generator))
    values = values * 10.0 ** torch.empty(rows, n, 1).uniform_(-6, 6, generator=generator)
    values[torch.rand(values.shape, generator=generator) < 0.05] = 0.0
    return quantize_blocks(values.reshape(rows, n * block_size), precision, block_size=block_size)


def _raw_codes(rng, rows, n, block_size, precision, edges):
    """Codes drawn directly: uniformly over all finite codes, or from the format edges (±0, smallest
    subnormal, largest normal, zero and extreme scales)."""
    codes = torch.zeros(rows, n, block_size, dtype=torch.uint8)
    scales = torch.zeros(rows, n, dtype=torch.uint8)
    for r in range(rows):
        for b in range(n):
            fp8 = bool(precision[r, b])
            if edges:
                pool = _FP8_EDGE_CODES if fp8 else _FP4_EDGE_CODES
                codes[r, b] = torch.tensor([rng.choice(pool) for _ in range(block_size)])
                scales[r, b] = rng.choice(_SCALE_EDGE_CODES)
            else:
                pool = [c for c in range(256) if c not in _E4M3_NAN_CODES] if fp8 else range(16)
                codes[r, b] = torch.tensor([rng.choice(pool) for _ in range(block_size)])
                scales[r, b] = rng.randrange(0x7F)
    return _block_tensor(codes, scales, precision)


def _cancelling(bt):
    """Append each weight block again with every element's sign flipped: the exact sum becomes 0."""
    sign = torch.where(bt.precision, 0x80, 0x08).to(torch.uint8).unsqueeze(-1)
    return _block_tensor(torch.cat([bt.codes, bt.codes ^ sign], dim=1), bt.scales.repeat(1, 2),
                         bt.precision.repeat(1, 2))


def _poison(rng, bt, formats):
    """Make one element or scale NaN: an E4M3 NaN code in an FP8 block, or a NaN/invalid scale."""
    codes, scales = bt.codes.clone(), bt.scales.clone()
    r, b = rng.randrange(codes.shape[0]), rng.randrange(codes.shape[1])
    if "fp8" in formats and bool(bt.precision[r, b]) and rng.random() < 0.5:
        codes[r, b, rng.randrange(codes.shape[2])] = rng.choice(_E4M3_NAN_CODES)
    else:
        scales[r, b] = rng.choice((0x7F, 0x80, 0xB8, 0xFF))
    return _block_tensor(codes, scales, bt.precision)


def random_reductions(*, lanes, formats, block_size, count, max_blocks, seed):
    """``count`` reductions of random lengths (1 .. max_blocks, short ones favoured), random precision
    mixes, and a mix of heavy-tailed, uniform-code, edge-code, exactly cancelling and NaN data."""
    rng = random.Random(seed)
    reductions = []
    for _ in range(count):
        n = min(max_blocks, rng.choice((1, 1, 2, 3, 4, 7, 8, 16, rng.randint(1, max_blocks))))
        kind = rng.choice(("heavy", "heavy", "uniform", "edges", "cancel"))
        if kind == "cancel":
            n = max(1, n // 2)
        w_precision = _precision(rng, formats, lanes, n)
        x_precision = _precision(rng, formats, 1, n)
        if kind == "uniform" or kind == "edges":
            edges = kind == "edges"
            weights = _raw_codes(rng, lanes, n, block_size, w_precision, edges)
            activation = _raw_codes(rng, 1, n, block_size, x_precision, edges)
        else:
            weights = _heavy_tailed(rng, lanes, n, block_size, w_precision)
            activation = _heavy_tailed(rng, 1, n, block_size, x_precision)
        if kind == "cancel":
            weights = _cancelling(weights)
            activation = _block_tensor(activation.codes.repeat(1, 2, 1), activation.scales.repeat(1, 2),
                                       activation.precision.repeat(1, 2))
        if rng.random() < 0.05:
            weights = _poison(rng, weights, formats)
        if rng.random() < 0.03:
            activation = _poison(rng, activation, formats)
        reductions.append(Reduction(weights, activation))
    return reductions


def _stack(tensors):
    return _block_tensor(torch.stack([t.codes for t in tensors]), torch.stack([t.scales for t in tensors]),
                         torch.stack([t.precision for t in tensors]))


def expected_results(reductions):
    """Golden FP32 bit patterns, one list of ``lanes`` ints per reduction (reductions of equal length go
    through golden.unit_dot as one batch)."""
    by_length = {}
    for index, reduction in enumerate(reductions):
        by_length.setdefault(reduction.blocks, []).append(index)
    results = [None] * len(reductions)
    for indices in by_length.values():
        weights = _stack([reductions[i].weights for i in indices])
        activations = _stack([reductions[i].activation for i in indices])
        for i, bits in zip(indices, unit_dot(weights, activations)[:, 0].tolist()):
            results[i] = bits
    return results


class PayloadPacker:
    """Packs reductions into the integers the unit's ``i.payload`` port carries, one per block pair.

    Offsets come from the unit's own lib.data layout; ``pack_value`` on the same layout is the slow,
    generic reference this fast path is tested against.
    """

    def __init__(self, unit):
        fields = dict(unit.i.payload.shape())
        block = fields["activation"].shape
        block_fields = dict(block)
        self._formats = unit.formats
        self._lanes = unit.lanes
        self._code_bits = Shape.cast(block_fields["codes"].shape.elem_shape).width
        self._scale_offset = block_fields["scale"].offset
        self._fp8_offset = block_fields["fp8"].offset if "fp8" in block_fields else None
        self._block_width = block.size
        self._weights_offset = fields["weights"].offset
        self._first_offset = fields["first"].offset
        self._last_offset = fields["last"].offset

    def _blocks(self, bt):
        """(rows, n) nested lists of packed block words."""
        codes = bt.codes
        if self._code_bits == 8:
            packed = [[int.from_bytes(bytes(block), "little") for block in row] for row in codes.tolist()]
        else:
            nibbles = (codes & 0xF).tolist()
            packed = [[sum(c << (4 * k) for k, c in enumerate(block)) for block in row] for row in nibbles]
        scales, precision = bt.scales.tolist(), bt.precision.tolist()
        for r, row in enumerate(packed):
            for b in range(len(row)):
                row[b] |= scales[r][b] << self._scale_offset
                if self._fp8_offset is not None:
                    row[b] |= int(precision[r][b]) << self._fp8_offset
        return packed

    def words(self, reductions):
        for reduction in reductions:
            if reduction.weights.codes.shape[0] != self._lanes:
                raise ValueError(f"Reduction has {reduction.weights.codes.shape[0]} weight rows for "
                                 f"{self._lanes} lanes")
            activation = self._blocks(reduction.activation)[0]
            weights = self._blocks(reduction.weights)
            for block in range(reduction.blocks):
                word = activation[block]
                for lane in range(self._lanes):
                    word |= weights[lane][block] << (self._weights_offset + lane * self._block_width)
                word |= int(block == 0) << self._first_offset
                word |= int(block == reduction.blocks - 1) << self._last_offset
                yield word


def _block_payload(formats, bt, row, block):
    codes = bt.codes[row, block].tolist()
    if formats == ("nvfp4",):
        codes = [c & 0xF for c in codes]  # an FP4-only unit has 4-bit code slots
    fields = {"codes": codes, "scale": int(bt.scales[row, block])}
    if len(formats) == 2:
        fields["fp8"] = int(bt.precision[row, block])
    return fields


def transactions(unit, reductions):
    """The input stream payloads as field dicts for ``unit.i.payload``'s layout, one per block pair:
    the readable (and slow) form of ``PayloadPacker.words``."""
    for reduction in reductions:
        for block in range(reduction.blocks):
            yield {
                "activation": _block_payload(unit.formats, reduction.activation, 0, block),
                "weights": [_block_payload(unit.formats, reduction.weights, lane, block)
                            for lane in range(unit.lanes)],
                "first": int(block == 0),
                "last": int(block == reduction.blocks - 1),
            }
