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
