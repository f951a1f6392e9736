"""cocotb bench of a reference circuit (hw/reference.py): random operands every cycle, every registered
result checked against Python's integer arithmetic. Run with toggle coverage, it gives the switching
activity of one operation per cycle that calibrates the energy proxy (sim/activity.py).

FGMP_REFERENCE_BENCH (JSON): operation, width, cycles, seed."""

import json
import os
import random

import cocotb
from cocotb.triggers import FallingEdge

from .scoreboard import Scoreboard
from .streams import start_clock_and_reset

CONFIG_ENV = "FGMP_REFERENCE_BENCH"


def model(operation, a, b):
    return a * b if operation == "multiply" else a + b


@cocotb.test()
async def random_operands(dut):
    config = json.loads(os.environ[CONFIG_ENV])
    rng = random.Random(config["seed"])
    width, operation = config["width"], config["operation"]
    scoreboard = Scoreboard(f"reference_{operation}{width}")
    await start_clock_and_reset(dut, [])
    applied = []
    # Operands go in on the falling edge; two rising edges later (operand register, result register)
    # their result is on ``result``.
    for cycle in range(config["cycles"] + 2):
        await FallingEdge(dut.clk)
        if cycle >= 2:
            a, b = applied[cycle - 2]
            scoreboard.compare({"a": a, "b": b}, int(dut.result.value), model(operation, a, b))
        if cycle < config["cycles"]:
            a, b = rng.getrandbits(width), rng.getrandbits(width)
            dut.a.value, dut.b.value = a, b
            applied.append((a, b))
    scoreboard.write_report(suite="reference", operation=operation, width=width, cycles=config["cycles"],
                            block_pairs=config["cycles"])
    scoreboard.assert_clean()
