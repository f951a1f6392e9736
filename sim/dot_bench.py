"""cocotb bench of the generated FGMP dot unit against the golden model.

Configuration comes from FGMP_DOT_BENCH (JSON written by ``fgmp.sim.dot.run_dot_bench``): the unit's
generator parameters, the suite (``exhaustive`` or ``random``), its size and seed, and the idle and
back-pressure probabilities. Driver: presents input blocks on the ``i`` stream, with idle cycles between
them. Monitor: takes results from the ``o`` stream, refusing them at random (back-pressure). Model:
golden.unit_dot per reduction. Scoreboard: lane-by-lane comparison of FP32 bit patterns, JSON report.
"""

import json
import os
import random
import time

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from fgmp.hw import DotUnit
from .dot_stimuli import PayloadPacker, exhaustive_reductions, expected_results, random_reductions
from .fields import unpack_value
from .scoreboard import Scoreboard

CONFIG_ENV = "FGMP_DOT_BENCH"


class StreamDriver:
    """Drives a valid/ready stream: each word waits ``idle``-probability cycles, then stays valid and
    stable until the sink takes it."""

    def __init__(self, clk, stream, *, idle, rng):
        self._clk, self._stream, self._idle, self._rng = clk, stream, idle, rng
        self.accepted_cycles = []

    async def send(self, words, cycle_counter):
        valid, ready, payload = self._stream
        for word in words:
            while self._rng.random() < self._idle:
                valid.value = 0
                await RisingEdge(self._clk)
            valid.value = 1
            payload.value = word
            while True:
                await ReadOnly()  # the handshake as it stands just before the edge
                taken = int(ready.value)
                if taken:
                    self.accepted_cycles.append(cycle_counter.cycle)
                await RisingEdge(self._clk)
                if taken:
                    break
        valid.value = 0


class StreamMonitor:
    """Sinks a valid/ready stream, deasserting ready with probability ``backpressure`` each cycle.

    Also checks the source's side of the protocol: while stalled, valid stays high and the payload
    stable; after the expected count, ``drain`` cycles pass without another valid. Gives up with an
    assertion after ``cycle_limit`` cycles instead of waiting forever for a lost result."""

    def __init__(self, clk, stream, *, backpressure, rng, cycle_limit, drain=8):
        self._clk, self._stream, self._backpressure, self._rng = clk, stream, backpressure, rng
        self._cycle_limit, self._drain = cycle_limit, drain
        self.delivered_cycles = []

    async def receive(self, count, cycle_counter):
        valid, ready, payload = self._stream
        words, held = [], None
        for cycle in range(self._cycle_limit):
            done = len(words) == count
            take = 1 if done else int(self._rng.random() >= self._backpressure)
            ready.value = take
            await ReadOnly()
            is_valid = int(valid.value)
            if held is not None:
                assert is_valid and int(payload.value) == held, "o dropped valid or changed payload while stalled"
            held = int(payload.value) if is_valid and not take else None
            if done:
                assert not is_valid, "the unit produced more results than reductions"
                if cycle_counter.cycle - self.delivered_cycles[-1] > self._drain:
                    return words
            elif take and is_valid:
                words.append(int(payload.value))
                self.delivered_cycles.append(cycle_counter.cycle)
            await RisingEdge(self._clk)
        raise AssertionError(f"{len(words)} of {count} results after {self._cycle_limit} cycles")


class CycleCounter:
    def __init__(self, clk):
        self._clk = clk
        self.cycle = 0

    async def run(self):
        while True:
            await RisingEdge(self._clk)
            self.cycle += 1


def model(reductions):
    return expected_results(reductions)


def _unit(config):
    # For the port layouts only: the DUT is the generated Verilog. JSON turned the formats into a list.
    return DotUnit(**{**config["unit"], "formats": tuple(config["unit"]["formats"])})


async def _reset(dut):
    dut.i__valid.value = 0
    dut.o__ready.value = 0
    dut.rst.value = 1
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    await RisingEdge(dut.clk)


async def _stream_and_check(dut, unit, reductions, *, name, idle, backpressure, seed, **report):
    """Drive every reduction through the DUT, score each lane's FP32 result against the golden model,
    write the report; returns it."""
    expected = model(reductions)
    out_layout = unit.o.payload.shape()
    words = list(PayloadPacker(unit).words(reductions))
    # Separate generators: the stall pattern must not depend on how the simulator orders coroutines.
    driver = StreamDriver(dut.clk, (dut.i__valid, dut.i__ready, dut.i__payload), idle=idle,
                          rng=random.Random(seed))
    cycle_limit = 20 * (len(words) + len(reductions)) + 100
    monitor = StreamMonitor(dut.clk, (dut.o__valid, dut.o__ready, dut.o__payload), backpressure=backpressure,
                            rng=random.Random(seed + 1), cycle_limit=cycle_limit)
    counter = CycleCounter(dut.clk)
    await _reset(dut)
    cocotb.start_soon(counter.run())

    start = time.perf_counter()
    cocotb.start_soon(driver.send(words, counter))
    outputs = await monitor.receive(len(reductions), counter)
    seconds = time.perf_counter() - start

    variant = "fgmp" if len(unit.formats) == 2 else unit.formats[0]
    scoreboard = Scoreboard(f"{variant}_dot_l{unit.lanes}_{name}")
    overflows = 0
    for index, (word, want) in enumerate(zip(outputs, expected)):
        fields = unpack_value(out_layout, word)
        overflows += fields["overflow"]
        for lane in range(unit.lanes):
            scoreboard.compare({"reduction": index, "lane": lane}, hex(fields["results"][lane]), hex(want[lane]))
    accepted = driver.accepted_cycles
    summary = dict(
        suite=name, lanes=unit.lanes, formats=list(unit.formats), pipeline_stages=unit.pipeline_stages,
        idle=idle, backpressure=backpressure, reductions=len(reductions), block_pairs=len(words),
        overflow_flags=overflows, cycles=counter.cycle, accept_span=accepted[-1] - accepted[0] + 1,
        last_result_delay=monitor.delivered_cycles[-1] - accepted[-1], sim_seconds=seconds,
        block_pairs_per_second=len(words) / seconds, **report,
    )
    scoreboard.write_report(**summary)
    scoreboard.assert_clean()
    assert overflows == 0, f"{overflows} results flagged overflow within max_blocks"
    return summary


@cocotb.test()
async def exhaustive_code_pairs(dut):
    """Every element code pair of every enabled pairing, streamed at full rate (no idle, no
    back-pressure): also checks one block pair per cycle and the documented latency."""
    config = json.loads(os.environ[CONFIG_ENV])
    unit = _unit(config)
    reductions, pairs = exhaustive_reductions(lanes=unit.lanes, formats=unit.formats,
                                              block_size=unit.block_size)
    summary = await _stream_and_check(dut, unit, reductions, name="exhaustive", idle=0.0, backpressure=0.0,
                                      seed=config["seed"], element_code_pairs=pairs)
    assert summary["accept_span"] == summary["block_pairs"], "the unit did not take a block pair every cycle"
    assert summary["last_result_delay"] == unit.latency, (
        f"last result {summary['last_result_delay']} cycles after the last block, documented {unit.latency}")


@cocotb.test()
async def random_reductions_with_stalls(dut):
    """Random reductions (lengths, precision mixes, heavy tails, edges, cancellation, NaN) with idle
    input cycles and output back-pressure."""
    config = json.loads(os.environ[CONFIG_ENV])
    unit = _unit(config)
    reductions = random_reductions(lanes=unit.lanes, formats=unit.formats, block_size=unit.block_size,
                                   count=config["count"], max_blocks=config["max_reduction"],
                                   seed=config["seed"])
    await _stream_and_check(dut, unit, reductions, name="random", idle=config["idle"],
                            backpressure=config["backpressure"], seed=config["seed"])
