"""cocotb bench of the generated engine on one exported layer (docs/policy.md §8) and captured BF16
activations: every output channel of every token, FP32 bits compared with golden.engine_dot.

FGMP_LAYER_BENCH (JSON from ``fgmp.sim.layer``) names the engine parameters, the exported layer
directory, the activations file (int16 BF16 bit patterns, tokens x K) and idle / back-pressure. The
sensitivity table and registers are written once; the output channels stream through in groups of L
lanes, each group one pass over the tokens."""

import json
import os
import random

import cocotb
import torch
from cocotb.triggers import RisingEdge

from fgmp import golden
from fgmp.golden.policy import load_layer
from fgmp.hw import Engine
from .actq_bench import _bf16_words, write_config
from .actq_stimuli import config_writes
from .fields import pack_value, unpack_value
from .scoreboard import Scoreboard
from .streams import CycleCounter, StreamDriver, StreamMonitor, start_clock_and_reset

CONFIG_ENV = "FGMP_LAYER_BENCH"


def _weight_block(weights, row, block):
    return {"codes": weights.codes[row, block].tolist(), "scale": int(weights.scales[row, block]),
            "fp8": int(weights.precision[row, block])}


@cocotb.test()
async def layer_matches_golden(dut):
    config = json.loads(os.environ[CONFIG_ENV])
    unit = Engine(**config["unit"])
    B, lanes = unit.block_size, unit.lanes
    layer = load_layer(config["layer_dir"])
    x = torch.load(config["activations"]).view(torch.bfloat16)
    tokens, channels = x.shape
    out_features = layer.weights.shape[0]
    n = channels // B
    want, blocks = golden.engine_dot(layer.weights, x, layer.activation)  # (tokens, out_features) FP32 bits
    in_layout, out_layout = unit.i.payload.shape(), unit.o.payload.shape()
    bits = _bf16_words(x)
    scoreboard = Scoreboard(f"layer_l{lanes}")
    await start_clock_and_reset(dut, [dut.i__valid, dut.o__ready])
    await write_config(dut, unit.config.shape(), config_writes(layer.activation, B))
    counter = CycleCounter(dut.clk)
    cocotb.start_soon(counter.run())
    driver = StreamDriver(dut.clk, (dut.i__valid, dut.i__ready, dut.i__payload), idle=config["idle"],
                          rng=random.Random(config["seed"]))
    monitor = StreamMonitor(dut.clk, (dut.o__valid, dut.o__ready, dut.o__payload),
                            backpressure=config["backpressure"], rng=random.Random(config["seed"] + 1),
                            cycle_limit=20 * tokens * n * (out_features // lanes) + 200)
    words, where = [], []
    for group in range(0, out_features, lanes):
        rows = [min(group + lane, out_features - 1) for lane in range(lanes)]  # a short last group repeats a row
        for t in range(tokens):
            for b in range(n):
                words.append(pack_value(in_layout, {
                    "values": bits[t][b * B:(b + 1) * B], "weights": [_weight_block(layer.weights, r, b) for r in rows],
                    "first": int(b == 0), "last": int(b == n - 1)}))
            where.append((t, rows))
    start = counter.cycle
    cocotb.start_soon(driver.send(words, counter))
    outputs = await monitor.receive(len(where), counter)
    cycles = counter.cycle - start
    for (t, rows), word in zip(where, outputs):
        results = unpack_value(out_layout, word)["results"]
        for lane, row in enumerate(rows):
            scoreboard.compare({"token": t, "output": row}, hex(results[lane]), hex(int(want[t, row])))
    passes = len(range(0, out_features, lanes))
    counted = (int(dut.fp8_blocks.value), int(dut.nvfp4_blocks.value), int(dut.table_overflow.value))
    fp8 = int(blocks.precision.sum())
    scoreboard.compare({"counters": True}, counted, (passes * fp8, passes * (blocks.precision.numel() - fp8), 0))
    await RisingEdge(dut.clk)
    scoreboard.write_report(suite="layer", tokens=tokens, in_features=channels, out_features=out_features,
                            lanes=lanes, block_pairs=len(words), cycles=cycles,
                            activation_fp8_blocks=fp8, activation_blocks=blocks.precision.numel(),
                            idle=config["idle"], backpressure=config["backpressure"])
    scoreboard.assert_clean()
