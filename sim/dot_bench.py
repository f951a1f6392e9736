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
import torch

from fgmp.hw import DotUnit
from .dot import dot_top
from .dot_stimuli import (PayloadPacker, exhaustive_reductions, expected_results, random_reductions,
                          reductions_from_state)
from .fields import unpack_value
from .scoreboard import Scoreboard
from .streams import CycleCounter, StreamDriver, StreamMonitor, start_clock_and_reset

CONFIG_ENV = "FGMP_DOT_BENCH"


def model(reductions):
    return expected_results(reductions)


def _unit(config):
    # For the port layouts only: the DUT is the generated Verilog. JSON turned the formats into a list.
    return DotUnit(**{**config["unit"], "formats": tuple(config["unit"]["formats"])})


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
    await start_clock_and_reset(dut, [dut.i__valid, dut.o__ready])
    cocotb.start_soon(counter.run())

    start = time.perf_counter()
    cocotb.start_soon(driver.send(words, counter))
    outputs = await monitor.receive(len(reductions), counter)
    seconds = time.perf_counter() - start

    scoreboard = Scoreboard(f"{dot_top(unit)}_{name}")
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


@cocotb.test()
async def given_reductions(dut):
    """The reductions saved at ``config["reductions"]`` (a model layer's blocks, say), streamed at full
    rate: the activity measurements of sim/activity.py run on this bench, so they are checked too."""
    config = json.loads(os.environ[CONFIG_ENV])
    unit = _unit(config)
    reductions = reductions_from_state(torch.load(config["reductions"]))
    await _stream_and_check(dut, unit, reductions, name="given", idle=0.0, backpressure=0.0, seed=config["seed"])
