"""Small helpers that run one RTL unit in amaranth.sim, so tests read `assert rtl_op(x) == golden_op(x)`.

Every streaming helper uses one source (random idle cycles, holds valid until taken) and one checked sink
(random back-pressure; fails, instead of hanging or passing quietly, if results stop coming, if ``o``
drops valid or changes its payload while stalled, or if an extra result appears after the last one).
"""

import random

from amaranth.sim import Simulator

from fgmp.hw import Decoder
from fgmp.sim.actq_stimuli import config_writes
from fgmp.sim.dot_stimuli import PayloadPacker


def rtl_decode_fields(fmt, codes):
    """{field: [value per code]} from the Decoder for ``fmt``, one code at a time through amaranth.sim."""
    dut = Decoder(format=fmt)
    names = [name for name, _ in fmt.decoded_layout]
    results = {name: [] for name in names}

    async def testbench(ctx):
        for code in codes:
            ctx.set(dut.code, code)
            decoded = ctx.get(dut.decoded)
            for name in names:
                results[name].append(int(getattr(decoded, name)))

    sim = Simulator(dut)
    sim.add_testbench(testbench)
    sim.run()
    return results


def _source(unit, words, *, idle, rng, accepted, config=()):
    """Testbench: write the ``config`` port values first, then offer each payload word on ``unit.i``;
    records the cycle at which each word was taken."""
    async def source(ctx):
        cycle = 0
        for value in config:
            ctx.set(unit.config, value)
            await ctx.tick()
            cycle += 1
        for word in words:
            while rng.random() < idle:
                ctx.set(unit.i.valid, 0)
                await ctx.tick()
                cycle += 1
            ctx.set(unit.i.valid, 1)
            ctx.set(unit.i.payload.as_value(), word)
            while True:
                _, _, ready = await ctx.tick().sample(unit.i.ready)
                cycle += 1
                if ready:
                    accepted.append(cycle)
                    break
        ctx.set(unit.i.valid, 0)
    return source


def _sink(unit, expected, *, backpressure, rng, cycle_limit, take, drain=8):
    """Testbench: take ``expected`` transfers from ``unit.o`` (``take(payload, cycle)`` for each), then
    watch ``drain`` more cycles for stray ones, checking the stream protocol throughout."""
    async def sink(ctx):
        cycle, held, taken, idle_after_last = 0, None, 0, 0
        while idle_after_last < drain:
            done = taken == expected
            ready = 1 if done else int(rng.random() >= backpressure)
            ctx.set(unit.o.ready, ready)
            _, _, valid, bits, payload = await ctx.tick().sample(
                unit.o.valid, unit.o.payload.as_value(), unit.o.payload)
            cycle += 1
            assert cycle <= cycle_limit, f"{taken} of {expected} results after {cycle} cycles"
            if held is not None:
                assert valid and bits == held, "o dropped valid or changed its payload while stalled"
            held = bits if valid and not ready else None
            if done:
                assert not valid, "the unit produced more results than it was given work for"
                idle_after_last += 1
            elif ready and valid:  # a transfer happens at the edge where valid and ready were both high
                take(payload, cycle)
                taken += 1
    return sink


def _run(unit, *testbenches):
    sim = Simulator(unit)
    sim.add_clock(1e-8)
    for testbench in testbenches:
        sim.add_testbench(testbench)
    sim.run()


def rtl_dot(unit, reductions, *, idle=0.0, backpressure=0.0, seed=0, drop_first=False, drain=8):
    """Stream ``reductions`` through the dot ``unit`` with random idle input cycles and output
    back-pressure; ``drop_first`` clears the ``first`` marker of every reduction but the first. Returns
    (results: per reduction a list of ``lanes`` FP32 bit patterns, overflow flags, cycles at which input
    blocks were accepted, cycles at which results were taken)."""
    words = list(PayloadPacker(unit).words(reductions))
    if drop_first:
        first_bit = 1 << dict(unit.i.payload.shape())["first"].offset
        words = words[:1] + [word & ~first_bit for word in words[1:]]
    return rtl_dot_words(unit, words, expected_results=len(reductions), idle=idle, backpressure=backpressure,
                         seed=seed, drain=drain)


def rtl_dot_words(unit, words, *, expected_results, idle=0.0, backpressure=0.0, seed=0, drain=8):
    """``rtl_dot`` on raw payload words, for streams no Reduction describes (e.g. a misplaced marker)."""
    results, overflows, accepted, delivered = [], [], [], []

    def take(payload, cycle):
        results.append([int(payload.results[lane]) for lane in range(unit.lanes)])
        overflows.append(int(payload.overflow))
        delivered.append(cycle)

    cycle_limit = 20 * (len(words) + expected_results) + 10 * unit.latency + 100
    _run(unit, _source(unit, words, idle=idle, rng=random.Random(seed), accepted=accepted),
         _sink(unit, expected_results, backpressure=backpressure, rng=random.Random(seed + 1),
               cycle_limit=cycle_limit, take=take, drain=drain))
    return results, overflows, accepted, delivered


def _bf16_bits(x):
    import torch

    return (x.contiguous().view(torch.int16).to(torch.int32) & 0xFFFF).tolist()


def _config_values(unit, config, rows):
    """The activation unit's configuration port values that load ``config`` (first ``rows`` table rows)."""
    layout = unit.config.shape()
    writes = config_writes(config, unit.block_size)
    table_writes, register_writes = writes[:-2][:rows], writes[-2:]
    return [layout.const(write) for write in table_writes + register_writes]


def rtl_actq(unit, x, config, *, idle=0.0, backpressure=0.0, seed=0):
    """Load ``config`` (a golden ActivationConfig) into ``unit``, stream the BF16 tensor ``x`` (T, K) through
    it, one reduction per row, and return (codes (T, n, B) uint8, scales (T, n), precision (T, n), first/
    last markers, [fp8 blocks, nvfp4 blocks, table overflow flag]). Only as many sensitivity rows as the
    unit's table holds are loaded."""
    return rtl_actq_rounds(unit, x, [config], idle=idle, backpressure=backpressure, seed=seed)[0]


def rtl_actq_rounds(unit, x, configs, *, idle=0.0, backpressure=0.0, seed=0):
    """rtl_actq for each of ``configs`` in turn, in one simulation: each round loads its configuration
    through the port (which clears the counters), streams ``x`` and reads the counters once the unit has
    emitted every block. Returns one rtl_actq result per configuration."""
    import torch

    B = unit.block_size
    rows, channels = x.shape
    n = channels // B
    bits = _bf16_bits(x)
    layout = unit.i.payload.shape()
    words = [layout.const({"values": bits[t][b * B:(b + 1) * B], "first": int(b == 0), "last": int(b == n - 1)})
             .as_value().value for t in range(rows) for b in range(n)]
    rounds = [_config_values(unit, config, unit.max_channels // B) for config in configs]
    outputs, counters = [], []

    def take(payload, cycle):
        outputs.append(([int(c) for c in payload.block.codes], int(payload.block.scale), int(payload.block.fp8),
                        int(payload.first), int(payload.last)))

    async def source(ctx):
        rng = random.Random(seed)
        for index, config_values in enumerate(rounds):
            await _source(unit, words, idle=idle, rng=rng, accepted=[], config=config_values)(ctx)
            while len(outputs) < (index + 1) * len(words):
                await ctx.tick()
            await ctx.tick().repeat(4)
            counters.append([ctx.get(unit.fp8_blocks), ctx.get(unit.nvfp4_blocks), ctx.get(unit.table_overflow)])

    cycle_limit = len(rounds) * (50 * len(words) + 10 * len(rounds[0]) + 100)
    _run(unit, source, _sink(unit, len(rounds) * len(words), backpressure=backpressure,
                             rng=random.Random(seed + 1), cycle_limit=cycle_limit, take=take))
    results = []
    for index in range(len(rounds)):
        chunk = outputs[index * len(words):(index + 1) * len(words)]
        codes = torch.tensor([o[0] for o in chunk], dtype=torch.uint8).reshape(rows, n, B)
        scales = torch.tensor([o[1] for o in chunk], dtype=torch.uint8).reshape(rows, n)
        precision = torch.tensor([o[2] for o in chunk], dtype=torch.bool).reshape(rows, n)
        results.append((codes, scales, precision, [(o[3], o[4]) for o in chunk], counters[index]))
    return results


def rtl_engine(unit, weights, x, config, *, idle=0.0, backpressure=0.0, seed=0):
    """Load ``config`` into the engine, stream BF16 ``x`` (T, K) with the weight BlockTensor (lanes, K)
    alongside, one reduction per row; returns ((T, lanes) FP32 bit patterns, [fp8, nvfp4 counters])."""
    import torch

    B = unit.block_size
    rows, channels = x.shape
    n = channels // B
    bits = _bf16_bits(x)
    layout = unit.i.payload.shape()
    words = []
    for t in range(rows):
        for b in range(n):
            words.append(layout.const({
                "values": bits[t][b * B:(b + 1) * B],
                "weights": [{"codes": weights.codes[lane, b].tolist(), "scale": int(weights.scales[lane, b]),
                             "fp8": int(weights.precision[lane, b])} for lane in range(unit.lanes)],
                "first": int(b == 0), "last": int(b == n - 1)}).as_value().value)
    config_values = _config_values(unit, config, unit.max_channels // B)
    results, counters = [], []

    def take(payload, cycle):
        results.append([int(payload.results[lane]) for lane in range(unit.lanes)])

    async def read_counters(ctx):
        while len(results) < rows:
            await ctx.tick()
        await ctx.tick().repeat(4)
        counters.extend([ctx.get(unit.fp8_blocks), ctx.get(unit.nvfp4_blocks)])

    _run(unit, _source(unit, words, idle=idle, rng=random.Random(seed), accepted=[], config=config_values),
         _sink(unit, rows, backpressure=backpressure, rng=random.Random(seed + 1),
               cycle_limit=50 * len(words) + 10 * len(config_values) + 100, take=take),
         read_counters)
    return torch.tensor(results, dtype=torch.int64), counters


def rtl_readiness(unit, payload=None, *, cycles):
    """A block offered on every cycle and a sink that never takes a result: per cycle after an edge,
    ``i.ready`` with ``o.ready`` high and then low, as a (with sink, without sink) pair, so a test can see
    whether ready follows the sink in the same cycle."""
    seen = []

    async def testbench(ctx):
        if payload is not None:
            ctx.set(unit.i.payload.as_value(), payload)
        ctx.set(unit.i.valid, 1)
        for _ in range(cycles):
            await ctx.tick()
            ctx.set(unit.o.ready, 1)
            with_sink = ctx.get(unit.i.ready)
            ctx.set(unit.o.ready, 0)
            seen.append((with_sink, ctx.get(unit.i.ready)))

    sim = Simulator(unit)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    return seen
