"""Small helpers that run one RTL unit in amaranth.sim, so tests read `assert rtl_op(x) == golden_op(x)`."""

import random

from amaranth.sim import Simulator

from fgmp.hw import Decoder
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


def rtl_dot(unit, reductions, *, idle=0.0, backpressure=0.0, seed=0, drop_first=False, drain=8):
    """Stream ``reductions`` through ``unit`` in amaranth.sim with random idle input cycles and output
    back-pressure; ``drop_first`` clears the ``first`` marker of every reduction but the first. Returns
    (results: per reduction a list of ``lanes`` FP32 bit patterns, overflow flags, cycles at which input
    blocks were accepted, cycles at which results were taken).

    Fails, instead of hanging or passing quietly, if results stop coming (cycle limit), if ``o`` drops
    valid or changes its payload while stalled, or if any extra result appears in ``drain`` cycles after
    the last expected one."""
    words = list(PayloadPacker(unit).words(reductions))
    if drop_first:
        first_bit = 1 << dict(unit.i.payload.shape())["first"].offset
        words = words[:1] + [word & ~first_bit for word in words[1:]]
    return rtl_dot_words(unit, words, expected_results=len(reductions), idle=idle, backpressure=backpressure,
                         seed=seed, drain=drain)


def rtl_dot_words(unit, words, *, expected_results, idle=0.0, backpressure=0.0, seed=0, drain=8):
    """``rtl_dot`` on raw payload words, for streams no Reduction describes (e.g. a misplaced marker)."""
    cycle_limit = 20 * (len(words) + expected_results) + 10 * unit.latency + 100
    producer_rng, consumer_rng = random.Random(seed), random.Random(seed + 1)
    results, overflows, accepted, delivered = [], [], [], []

    async def producer(ctx):
        cycle = 0
        for word in words:
            while producer_rng.random() < idle:
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

    async def consumer(ctx):
        cycle, held, idle_after_last = 0, None, 0
        while idle_after_last < drain:
            done = len(results) == expected_results
            ready = 1 if done else int(consumer_rng.random() >= backpressure)
            ctx.set(unit.o.ready, ready)
            _, _, valid, bits, payload = await ctx.tick().sample(
                unit.o.valid, unit.o.payload.as_value(), unit.o.payload)
            cycle += 1
            assert cycle <= cycle_limit, f"{len(results)} of {expected_results} results after {cycle} cycles"
            if held is not None:
                assert valid and bits == held, "o dropped valid or changed its payload while stalled"
            held = bits if valid and not ready else None
            if done:
                assert not valid, "the unit produced more results than reductions"
                idle_after_last += 1
            elif ready and valid:  # a transfer happens at the edge where valid and ready were both high
                results.append([int(payload.results[lane]) for lane in range(unit.lanes)])
                overflows.append(int(payload.overflow))
                delivered.append(cycle)

    sim = Simulator(unit)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    return results, overflows, accepted, delivered


def rtl_actq(unit, x, config, *, idle=0.0, backpressure=0.0, seed=0):
    """Load ``config`` (a golden ActivationConfig) into ``unit``, stream the BF16 tensor ``x`` (T, K) through
    it, one reduction per row, and return (codes (T, n, B) uint8, scales (T, n), precision (T, n), first/
    last markers, [fp8 blocks, nvfp4 blocks, table overflow flag]). Only as many sensitivity rows as the
    unit's table holds are loaded."""
    import torch

    B = unit.block_size
    rows, channels = x.shape
    bits = x.contiguous().view(torch.int16).to(torch.int32) & 0xFFFF
    table = config.sensitivities.reshape(-1, B).tolist()[: unit.max_channels // B]
    producer_rng, consumer_rng = random.Random(seed), random.Random(seed + 1)
    outputs = []
    expected = rows * (channels // B)
    in_layout = unit.i.payload.shape()

    async def producer(ctx):
        for row, codes in enumerate(table):
            ctx.set(unit.config.table_write, 1)
            ctx.set(unit.config.table_row, row)
            ctx.set(unit.config.table_data, codes)
            await ctx.tick()
        ctx.set(unit.config.table_write, 0)
        ctx.set(unit.config.set_registers, 1)
        ctx.set(unit.config.clear_counters, 1)
        ctx.set(unit.config.scale_exponent, config.scale_exponent)
        ctx.set(unit.config.threshold, config.threshold_bits)
        await ctx.tick()
        ctx.set(unit.config.set_registers, 0)
        ctx.set(unit.config.clear_counters, 0)
        for t in range(rows):
            for b in range(channels // B):
                while producer_rng.random() < idle:
                    ctx.set(unit.i.valid, 0)
                    await ctx.tick()
                ctx.set(unit.i.valid, 1)
                ctx.set(unit.i.payload, in_layout.const({
                    "values": bits[t, b * B:(b + 1) * B].tolist(), "first": int(b == 0),
                    "last": int(b == channels // B - 1)}))
                await ctx.tick().until(unit.i.ready)
        ctx.set(unit.i.valid, 0)

    async def consumer(ctx):
        cycles, held, after_last = 0, None, 0
        while after_last < 8:
            done = len(outputs) == expected
            ready = 1 if done else int(consumer_rng.random() >= backpressure)
            ctx.set(unit.o.ready, ready)
            _, _, valid, payload, raw = await ctx.tick().sample(unit.o.valid, unit.o.payload,
                                                                unit.o.payload.as_value())
            cycles += 1
            assert cycles < 50 * expected + 10 * len(table) + 100, "results stopped coming"
            if held is not None:
                assert valid and raw == held, "o dropped valid or changed its payload while stalled"
            held = raw if valid and not ready else None
            if done:
                assert not valid, "the unit produced more blocks than it was given"
                after_last += 1
            elif ready and valid:
                outputs.append((
                    [int(c) for c in payload.block.codes], int(payload.block.scale), int(payload.block.fp8),
                    int(payload.first), int(payload.last)))
        counters.extend([ctx.get(unit.fp8_blocks), ctx.get(unit.nvfp4_blocks), ctx.get(unit.table_overflow)])

    counters = []
    sim = Simulator(unit)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    n = channels // B
    codes = torch.tensor([o[0] for o in outputs], dtype=torch.uint8).reshape(rows, n, B)
    scales = torch.tensor([o[1] for o in outputs], dtype=torch.uint8).reshape(rows, n)
    precision = torch.tensor([o[2] for o in outputs], dtype=torch.bool).reshape(rows, n)
    markers = [(o[3], o[4]) for o in outputs]
    return codes, scales, precision, markers, counters


def rtl_engine(unit, weights, x, config, *, idle=0.0, backpressure=0.0, seed=0):
    """Load ``config`` into the engine, stream BF16 ``x`` (T, K) with the weight BlockTensor (lanes, K)
    alongside, one reduction per row; returns ((T, lanes) FP32 bit patterns, [fp8, nvfp4 counters])."""
    import torch

    B = unit.block_size
    rows, channels = x.shape
    n = channels // B
    bits = x.contiguous().view(torch.int16).to(torch.int32) & 0xFFFF
    table = config.sensitivities.reshape(-1, B).tolist()
    layout = unit.i.payload.shape()
    words = []
    for t in range(rows):
        for b in range(n):
            words.append(layout.const({
                "values": bits[t, b * B:(b + 1) * B].tolist(),
                "weights": [{"codes": weights.codes[lane, b].tolist(), "scale": int(weights.scales[lane, b]),
                             "fp8": int(weights.precision[lane, b])} for lane in range(unit.lanes)],
                "first": int(b == 0), "last": int(b == n - 1)}))
    producer_rng, consumer_rng = random.Random(seed), random.Random(seed + 1)
    results, counters = [], []

    async def producer(ctx):
        for row, codes in enumerate(table):
            ctx.set(unit.config.table_write, 1)
            ctx.set(unit.config.table_row, row)
            ctx.set(unit.config.table_data, codes)
            await ctx.tick()
        ctx.set(unit.config.table_write, 0)
        ctx.set(unit.config.set_registers, 1)
        ctx.set(unit.config.clear_counters, 1)
        ctx.set(unit.config.scale_exponent, config.scale_exponent)
        ctx.set(unit.config.threshold, config.threshold_bits)
        await ctx.tick()
        ctx.set(unit.config.set_registers, 0)
        ctx.set(unit.config.clear_counters, 0)
        for word in words:
            while producer_rng.random() < idle:
                ctx.set(unit.i.valid, 0)
                await ctx.tick()
            ctx.set(unit.i.valid, 1)
            ctx.set(unit.i.payload, word)
            await ctx.tick().until(unit.i.ready)
        ctx.set(unit.i.valid, 0)

    async def consumer(ctx):
        cycles = 0
        while len(results) < rows:
            ready = int(consumer_rng.random() >= backpressure)
            ctx.set(unit.o.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(unit.o.valid, unit.o.payload)
            cycles += 1
            assert cycles < 50 * len(words) + 10 * len(table) + 100, "results stopped coming"
            if ready and valid:
                results.append([int(payload.results[lane]) for lane in range(unit.lanes)])
        await ctx.tick()
        counters.extend([ctx.get(unit.fp8_blocks), ctx.get(unit.nvfp4_blocks)])

    sim = Simulator(unit)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    return torch.tensor(results, dtype=torch.int64), counters
