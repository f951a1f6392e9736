"""The narrow activation quantization unit (E elements per cycle) in amaranth.sim, bit-exact against the golden
model (docs/numerics.md §9) at every width: random BF16 blocks across the exponent range with NaN/±Inf,
several reductions and configurations (k extremes, both decisions, T equal to a score), idle input cycles,
back-pressure, the counters and the table overflow flag; full-rate throughput and latency; parameters."""

import random

import pytest
import torch
from amaranth.sim import Simulator

from fgmp import golden
from fgmp.hw.actq_narrow import NarrowActivationQuantizer
from fgmp.hw.verilog import lint, write_verilog
from fgmp.sim.actq_stimuli import config_writes, median_threshold, random_bf16, random_configs
from rtl_ops import _bf16_bits, _config_values, _run, _sink, _source


def rtl_narrow_rounds(unit, x, configs, *, idle=0.0, backpressure=0.0, seed=0):
    """Load each of ``configs`` in turn through the port, stream BF16 ``x`` (T, K) as B/E beats per block, one
    reduction per row (``first``/``last`` on each block's first beat; random values on its other beats, which
    the unit must ignore), and read the counters once every block is out. Returns per configuration (codes
    (T, n, B), scales (T, n), precision (T, n), first/last markers, [fp8, nvfp4, table overflow])."""
    B, E, N = unit.block_size, unit.elements_per_cycle, unit.beats_per_block
    rows, channels = x.shape
    n = channels // B
    bits = _bf16_bits(x)
    layout = unit.i.payload.shape()
    marker_rng = random.Random(seed + 2)
    words = []
    for t in range(rows):
        for b in range(n):
            for j in range(N):
                first, last = (int(b == 0), int(b == n - 1)) if j == 0 else (marker_rng.randrange(2),
                                                                             marker_rng.randrange(2))
                start = b * B + j * E
                words.append(layout.const({"values": bits[t][start:start + E], "first": first, "last": last})
                             .as_value().value)
    rounds = [_config_values(unit, config, unit.max_channels // B) for config in configs]
    outputs, counters = [], []
    blocks = rows * n

    def take(payload, cycle):
        outputs.append(([int(c) for c in payload.block.codes], int(payload.block.scale), int(payload.block.fp8),
                        int(payload.first), int(payload.last)))

    async def source(ctx):
        rng = random.Random(seed)
        for index, config_values in enumerate(rounds):
            await _source(unit, words, idle=idle, rng=rng, accepted=[], config=config_values)(ctx)
            while len(outputs) < (index + 1) * blocks:
                await ctx.tick()
            await ctx.tick().repeat(4)
            counters.append([ctx.get(unit.fp8_blocks), ctx.get(unit.nvfp4_blocks), ctx.get(unit.table_overflow)])

    cycle_limit = len(rounds) * (50 * len(words) + 10 * len(rounds[0]) + 10 * unit.latency + 100)
    _run(unit, source, _sink(unit, len(rounds) * blocks, backpressure=backpressure, rng=random.Random(seed + 1),
                             cycle_limit=cycle_limit, take=take))
    results = []
    for index in range(len(rounds)):
        chunk = outputs[index * blocks:(index + 1) * blocks]
        codes = torch.tensor([o[0] for o in chunk], dtype=torch.uint8).reshape(rows, n, B)
        scales = torch.tensor([o[1] for o in chunk], dtype=torch.uint8).reshape(rows, n)
        precision = torch.tensor([o[2] for o in chunk], dtype=torch.bool).reshape(rows, n)
        results.append((codes, scales, precision, [(o[3], o[4]) for o in chunk], counters[index]))
    return results


def _check_result(unit, x, config, result):
    """Asserts the unit's result is the golden one; returns the golden ActivationBlocks."""
    full = golden.quantize_activations(x, config, block_size=unit.block_size)
    want = full.blocks
    codes, scales, precision, markers, counters = result
    assert torch.equal(precision, want.precision)
    assert torch.equal(scales, want.scales)
    assert torch.equal(codes, want.codes)
    n = x.shape[1] // unit.block_size
    assert markers == [(int(b == 0), int(b == n - 1)) for _ in range(x.shape[0]) for b in range(n)]
    assert counters[:2] == [int(want.precision.sum()), int((~want.precision).sum())]
    assert counters[2] == int(x.shape[1] > unit.max_channels)
    return full


# (block size, elements per cycle, reductions x channels, configurations): E = 1 costs B cycles a block,
# so its runs are the shortest.
WIDTHS = [(16, 1, (3, 32), 6), (16, 2, (3, 48), 6), (16, 4, (4, 48), 6), (16, 16, (6, 64), 7), (4, 2, (6, 16), 7),
          (4, 4, (4, 16), 6)]


@pytest.mark.parametrize("block_size,elements,shape,count", WIDTHS)
def test_random_blocks_and_configurations_under_stalls(block_size, elements, shape, count):
    rng = random.Random(100 * block_size + elements)
    unit = NarrowActivationQuantizer(block_size=block_size, max_channels=shape[1], elements_per_cycle=elements)
    assert unit.elements_per_cycle == elements and unit.beats_per_block == block_size // elements
    x = random_bf16(rng, shape, nonfinite=0.03)
    # Certainly one block with a NaN only, one with an Inf and one with both, at random places.
    B = block_size
    for row, values in ((0, [float("nan")]), (1, [float("inf"), -float("inf")]), (2, [float("nan"), float("inf")])):
        block = rng.randrange(shape[1] // B)
        for value, place in zip(values, rng.sample(range(B), len(values))):
            x[row, block * B + place] = value
    configs = random_configs(rng, x, count=count, block_size=block_size)
    decisions = set()
    for config, result in zip(configs, rtl_narrow_rounds(unit, x, configs, idle=0.3, backpressure=0.3,
                                                         seed=elements)):
        want = _check_result(unit, x, config, result)
        decisions.update(want.blocks.precision[want.scores > 0].tolist())
    assert decisions == {False, True}  # both decisions were taken on scored blocks
    assert torch.isnan(x.float()).any() and torch.isinf(x.float()).any()


@pytest.mark.parametrize("elements", [1, 4])
def test_non_finite_zero_and_tiny_blocks(elements):
    unit = NarrowActivationQuantizer(max_channels=64, elements_per_cycle=elements)
    nan, inf = float("nan"), float("inf")
    x = torch.tensor([[1.0, nan] + [0.5] * 14 + [2.0, -inf] + [0.25] * 14 + [0.0] * 8 + [-0.0] * 8 + [1e-38] * 16,
                      [inf, nan] + [0.0] * 14 + [-inf] * 16 + [3.0] * 16 + [-1e-3] * 16], dtype=torch.bfloat16)
    f = torch.full((64,), 0x38, dtype=torch.uint8)
    config = golden.ActivationConfig(scale_exponent=0, threshold=0.0, sensitivities=f)
    want = _check_result(unit, x, config, rtl_narrow_rounds(unit, x, [config])[0])
    assert want.blocks.precision[0, :2].all() and want.blocks.precision[1, :2].all()


@pytest.mark.parametrize("elements", [2, 16])
def test_reduction_longer_than_the_table_reuses_the_last_row_and_sets_the_sticky_flag(elements):
    rng = random.Random(9)
    unit = NarrowActivationQuantizer(max_channels=32, elements_per_cycle=elements)
    x = random_bf16(rng, (2, 48))
    f = torch.tensor([rng.randrange(0x7F) for _ in range(32)], dtype=torch.uint8)
    as_seen = torch.cat([f, f[16:]])  # the third block reads the last row again
    config = golden.ActivationConfig(scale_exponent=0, threshold=median_threshold(x, as_seen, 0),
                                     sensitivities=as_seen)
    # Two rounds: the flag is set by each, and cleared by the second round's configuration write.
    for result in rtl_narrow_rounds(unit, x, [config, config], idle=0.2, backpressure=0.2, seed=3):
        _check_result(unit, x, config, result)


def test_one_row_table_serves_every_block_of_a_reduction():
    rng = random.Random(10)
    unit = NarrowActivationQuantizer(max_channels=16, elements_per_cycle=8)
    x = random_bf16(rng, (2, 48))
    f = torch.tensor([rng.randrange(0x7F) for _ in range(16)], dtype=torch.uint8)
    as_seen = f.repeat(3)  # every block reads the only row
    config = golden.ActivationConfig(scale_exponent=0, threshold=median_threshold(x, as_seen, 0),
                                     sensitivities=as_seen)
    _check_result(unit, x, config, rtl_narrow_rounds(unit, x, [config])[0])


@pytest.mark.parametrize("block_size,elements", [(16, 1), (16, 4), (16, 16), (4, 2)])
def test_full_rate_throughput_and_latency(block_size, elements):
    """Beats offered every cycle, the sink always ready: one beat is taken every cycle (one block per B/E
    cycles), each result leaves ``latency`` cycles after its block's last beat was taken, bit-exact; the
    reductions' first block is marked only by the ``last`` of the one before (no ``first`` after the
    first block)."""
    rng = random.Random(block_size * elements)
    N = block_size // elements
    unit = NarrowActivationQuantizer(block_size=block_size, max_channels=2 * block_size, elements_per_cycle=elements)
    assert unit.latency == 2 * N + 2
    rows, blocks = (max(2, 8 // N), 2)
    x = random_bf16(rng, (rows, blocks * block_size), nonfinite=0.02)
    f = torch.tensor([rng.randrange(0x7F) for _ in range(blocks * block_size)], dtype=torch.uint8)
    config = golden.ActivationConfig(scale_exponent=rng.randint(-4, 4),
                                     threshold=median_threshold(x, f, 0, block_size=block_size), sensitivities=f)
    want = golden.quantize_activations(x, config, block_size=block_size).blocks
    bits = _bf16_bits(x)
    layout, config_layout = unit.i.payload.shape(), unit.config.shape()
    words = [layout.const({"values": bits[t][b * block_size + j * elements:b * block_size + (j + 1) * elements],
                           "first": int(t == 0 and b == 0 and j == 0), "last": int(b == blocks - 1 and j == 0)})
             for t in range(rows) for b in range(blocks) for j in range(N)]
    taken, delivered = [], []

    async def bench(ctx):
        for write in config_writes(config, block_size):
            ctx.set(unit.config, config_layout.const(write))
            await ctx.tick()
        ctx.set(unit.o.ready, 1)
        for cycle in range(len(words) + unit.latency + 4):
            if cycle < len(words):
                ctx.set(unit.i.valid, 1)
                ctx.set(unit.i.payload, words[cycle])
            else:
                ctx.set(unit.i.valid, 0)
            if ctx.get(unit.i.valid) and ctx.get(unit.i.ready):
                taken.append(cycle)
            if ctx.get(unit.o.valid):
                block = ctx.get(unit.o.payload.block)
                delivered.append((cycle, [int(c) for c in block.codes], int(block.scale), int(block.fp8)))
            await ctx.tick()

    sim = Simulator(unit)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert taken == list(range(len(words)))
    assert [d[0] for d in delivered] == [c + unit.latency for c in taken[N - 1::N]]
    assert [d[1] for d in delivered] == want.codes.reshape(-1, block_size).tolist()
    assert [d[2] for d in delivered] == want.scales.reshape(-1).tolist()
    assert [d[3] for d in delivered] == want.precision.reshape(-1).int().tolist()


def test_registers_apply_from_the_next_block_whose_first_beat_is_taken():
    """k and T rewritten in the cycle a block's second beat is taken: that block keeps the old values, the
    next block uses the new ones."""
    rng = random.Random(11)
    unit = NarrowActivationQuantizer(block_size=4, max_channels=8, elements_per_cycle=2)
    x = random_bf16(rng, (1, 8))
    f = torch.tensor([rng.randrange(0x10, 0x70) for _ in range(8)], dtype=torch.uint8)
    old = golden.ActivationConfig(scale_exponent=-3, threshold=0.0, sensitivities=f)
    new = golden.ActivationConfig(scale_exponent=5, threshold=float("inf"), sensitivities=f)
    want_old = golden.quantize_activations(x, old, block_size=4).blocks
    want_new = golden.quantize_activations(x, new, block_size=4).blocks
    bits = _bf16_bits(x)[0]
    layout, config_layout = unit.i.payload.shape(), unit.config.shape()
    words = [layout.const({"values": bits[2 * j:2 * j + 2], "first": int(j == 0), "last": int(j == 2)})
             for j in range(4)]
    delivered = []

    async def bench(ctx):
        for write in config_writes(old, 4):
            ctx.set(unit.config, config_layout.const(write))
            await ctx.tick()
        ctx.set(unit.o.ready, 1)
        registers = config_layout.const({**config_writes(new, 4)[-2], "clear_counters": 0})
        idle = config_layout.const(config_writes(new, 4)[-1])
        for cycle in range(4 + unit.latency + 4):
            ctx.set(unit.i.valid, int(cycle < 4))
            if cycle < 4:
                ctx.set(unit.i.payload, words[cycle])
            ctx.set(unit.config, registers if cycle == 1 else idle)
            if ctx.get(unit.o.valid):
                block = ctx.get(unit.o.payload.block)
                delivered.append(([int(c) for c in block.codes], int(block.scale), int(block.fp8)))
            await ctx.tick()

    sim = Simulator(unit)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    wants = [want_old, want_new]
    assert delivered == [(wants[b].codes[0, b].tolist(), int(wants[b].scales[0, b]), int(wants[b].precision[0, b]))
                         for b in range(2)]


@pytest.mark.parametrize("kwargs,error,message", [
    ({"block_size": 0}, ValueError, "Block size must be at least 1, not 0"),
    ({"max_channels": 0}, ValueError, "Maximum channels must be at least 1, not 0"),
    ({"max_channels": 40}, ValueError, "Maximum channels (40) must be a multiple of the block size (16)"),
    ({"max_channels": 64.0}, TypeError, "Maximum channels must be an integer, not 64.0"),
    ({"elements_per_cycle": 0}, ValueError, "Elements per cycle must be at least 1, not 0"),
    ({"elements_per_cycle": 2.0}, TypeError, "Elements per cycle must be an integer, not 2.0"),
    ({"elements_per_cycle": True}, TypeError, "Elements per cycle must be an integer, not True"),
    ({"elements_per_cycle": 3}, ValueError, "Elements per cycle (3) must divide the block size (16)"),
    ({"elements_per_cycle": 32}, ValueError, "Elements per cycle (32) must divide the block size (16)"),
    ({"block_size": 4, "max_channels": 8, "elements_per_cycle": 8}, ValueError,
     "Elements per cycle (8) must divide the block size (4)"),
])
def test_invalid_parameters(kwargs, error, message):
    with pytest.raises(error) as info:
        NarrowActivationQuantizer(**kwargs)
    assert str(info.value) == message


def test_properties():
    unit = NarrowActivationQuantizer(block_size=8, max_channels=64, elements_per_cycle=2)
    assert (unit.block_size, unit.max_channels, unit.elements_per_cycle, unit.beats_per_block, unit.latency) == \
        (8, 64, 2, 4, 10)
    for name in ("block_size", "max_channels", "elements_per_cycle", "beats_per_block", "latency"):
        with pytest.raises(AttributeError):
            setattr(unit, name, 1)


@pytest.mark.parametrize("elements", [1, 2, 4])
def test_verilog_lint(tmp_path, elements):
    """Verilator -Wall is clean, the one-beat block (E = B: no beat counters) included."""
    name = f"narrow_actq_e{elements}"
    lint(write_verilog(NarrowActivationQuantizer(block_size=4, max_channels=16, elements_per_cycle=elements), name,
                       tmp_path), name)
