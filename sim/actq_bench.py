"""cocotb benches of the generated activation quantization unit and engine against the golden model.

FGMP_ACTQ_BENCH (JSON from ``fgmp.sim.actq``) gives the unit kind and parameters, sizes, seed, idle and
back-pressure. Driver and monitor are the shared stream components; the configuration port is written
before each round. Model: golden.quantize_activations / golden.engine_dot. Scoreboard: per block
(precision bit, scale, codes) or per lane result (FP32 bits)."""

import json
import os
import random

import cocotb
import torch
from cocotb.triggers import RisingEdge

from fgmp import golden
from fgmp.hw import ActivationQuantizer, Engine
from .actq_stimuli import config_writes, random_bf16, random_configs
from .fields import pack_value, unpack_value
from .scoreboard import Scoreboard
from .streams import CycleCounter, StreamDriver, StreamMonitor, start_clock_and_reset

CONFIG_ENV = "FGMP_ACTQ_BENCH"


async def write_config(dut, layout, writes):
    for write in writes:
        dut.config.value = pack_value(layout, write)
        await RisingEdge(dut.clk)


def _bf16_words(x):
    return (x.contiguous().view(torch.int16).to(torch.int32) & 0xFFFF).tolist()


async def _stream(dut, words, count, config, seed):
    driver = StreamDriver(dut.clk, (dut.i__valid, dut.i__ready, dut.i__payload), idle=config["idle"],
                          rng=random.Random(seed))
    monitor = StreamMonitor(dut.clk, (dut.o__valid, dut.o__ready, dut.o__payload),
                            backpressure=config["backpressure"], rng=random.Random(seed + 1),
                            cycle_limit=20 * len(words) + 200)
    counter = CycleCounter(dut.clk)
    task = cocotb.start_soon(counter.run())
    cocotb.start_soon(driver.send(words, counter))
    outputs = await monitor.receive(count, counter)
    task.cancel()
    return outputs


@cocotb.test()
async def quantizer_matches_golden(dut):
    config = json.loads(os.environ[CONFIG_ENV])
    unit = ActivationQuantizer(**config["unit"])
    B = unit.block_size
    rng = random.Random(config["seed"])
    x = random_bf16(rng, (config["tokens"], config["channels"]), nonfinite=0.01)
    in_layout, out_layout = unit.i.payload.shape(), unit.o.payload.shape()
    config_layout = unit.config.shape()
    bits = _bf16_words(x)
    n = config["channels"] // B
    scoreboard = Scoreboard(f"actq_b{B}_p{unit.pipeline_stages}")
    await start_clock_and_reset(dut, [dut.i__valid, dut.o__ready])
    fp8_blocks = 0
    for round_index, act_config in enumerate(random_configs(rng, x, count=config["rounds"], block_size=B)):
        await write_config(dut, config_layout, config_writes(act_config, B))
        want = golden.quantize_activations(x, act_config, block_size=B).blocks
        words = [pack_value(in_layout, {"values": bits[t][b * B:(b + 1) * B], "first": int(b == 0),
                                        "last": int(b == n - 1)})
                 for t in range(config["tokens"]) for b in range(n)]
        outputs = await _stream(dut, words, len(words), config, config["seed"] + round_index)
        for index, word in enumerate(outputs):
            t, b = divmod(index, n)
            block = unpack_value(out_layout, word)["block"]
            expected = {"codes": want.codes[t, b].tolist(), "scale": int(want.scales[t, b]),
                        "fp8": int(want.precision[t, b])}
            scoreboard.compare({"k": act_config.scale_exponent, "token": t, "block": b}, block, expected)
        # receive() returns in the ReadOnly phase of a cycle well after the last transfer: counters are final.
        counted = (int(dut.fp8_blocks.value), int(dut.nvfp4_blocks.value))
        scoreboard.compare({"k": act_config.scale_exponent, "counters": True}, counted,
                           (int(want.precision.sum()), int((~want.precision).sum())))
        fp8_blocks += int(want.precision.sum())
        await RisingEdge(dut.clk)
    scoreboard.write_report(suite="quantizer", rounds=config["rounds"], blocks=config["rounds"] * len(words),
                            fp8_blocks=fp8_blocks, idle=config["idle"], backpressure=config["backpressure"])
    scoreboard.assert_clean()


@cocotb.test()
async def engine_matches_golden(dut):
    config = json.loads(os.environ[CONFIG_ENV])
    unit = Engine(**config["unit"])
    B, lanes = unit.block_size, unit.lanes
    rng = random.Random(config["seed"])
    torch.manual_seed(config["seed"])
    channels, tokens = config["channels"], config["tokens"]
    n = channels // B
    w = torch.randn(lanes, channels) * torch.exp(torch.randn(lanes, channels))
    weights = golden.quantize_blocks(w, torch.rand(lanes, n) < 0.3)
    x = random_bf16(rng, (tokens, channels), nonfinite=0.002)
    in_layout, out_layout, config_layout = unit.i.payload.shape(), unit.o.payload.shape(), unit.config.shape()
    bits = _bf16_words(x)
    weight_blocks = [[{"codes": weights.codes[lane, b].tolist(), "scale": int(weights.scales[lane, b]),
                       "fp8": int(weights.precision[lane, b])} for lane in range(lanes)] for b in range(n)]
    scoreboard = Scoreboard(f"engine_l{lanes}")
    await start_clock_and_reset(dut, [dut.i__valid, dut.o__ready])
    for round_index, act_config in enumerate(random_configs(rng, x, count=config["rounds"], block_size=B)):
        await write_config(dut, config_layout, config_writes(act_config, B))
        want, blocks = golden.engine_dot(weights, x, act_config)
        words = [pack_value(in_layout, {"values": bits[t][b * B:(b + 1) * B], "weights": weight_blocks[b],
                                        "first": int(b == 0), "last": int(b == n - 1)})
                 for t in range(tokens) for b in range(n)]
        outputs = await _stream(dut, words, tokens, config, config["seed"] + round_index)
        for t, word in enumerate(outputs):
            results = unpack_value(out_layout, word)["results"]
            for lane in range(lanes):
                scoreboard.compare({"k": act_config.scale_exponent, "token": t, "lane": lane},
                                   hex(results[lane]), hex(int(want[t, lane])))
        counted = (int(dut.fp8_blocks.value), int(dut.nvfp4_blocks.value), int(dut.table_overflow.value))
        scoreboard.compare({"k": act_config.scale_exponent, "counters": True}, counted,
                           (int(blocks.precision.sum()), int((~blocks.precision).sum()), 0))
        await RisingEdge(dut.clk)
    scoreboard.write_report(suite="engine", rounds=config["rounds"], tokens=tokens, channels=channels,
                            idle=config["idle"], backpressure=config["backpressure"])
    scoreboard.assert_clean()
