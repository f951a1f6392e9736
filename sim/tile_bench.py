"""cocotb bench of the generated FGMP tile against golden.tile_layer, driven over AXI4-Lite by the published
cocotbext-axi manager (idle on its request channels, back-pressure on its response channels).

FGMP_TILE_BENCH (JSON from ``fgmp.sim.tile``) gives the tile's parameters and the layers to run. Driver:
``TileHost`` over cocotbext-axi. Model: ``golden.tile_layer``. Scoreboard: every FP32 output and every
next-layer activation block (codes, scale, precision bit), read back over the bus, and the run's counters.
A layer marked ``chain`` reads the blocks the previous layer wrote."""

import json
import logging
import os
import random
import time

import cocotb
import torch
from cocotb.triggers import ClockCycles, RisingEdge
from cocotbext.axi import AxiLiteBus, AxiLiteMaster

from fgmp import golden
from fgmp.golden.tile import activation_blocks, activation_words, tile_layer, tile_scale_bits, weight_images
from fgmp.hw.tile import REGISTERS, Tile
from .actq_stimuli import random_bf16, random_configs
from .scoreboard import Scoreboard
from .streams import start_clock_and_reset
from .tile_host import TileHost

CONFIG_ENV = "FGMP_TILE_BENCH"
_E4M3_NAN = 0x7F


def _pauses(rng, probability):
    while True:
        yield rng.random() < probability


def random_layer(rng, *, tokens, inputs, outputs, fp8=0.3, specials=True, blocks=None):
    """Weights (outputs x inputs blocks), activation blocks (``blocks``, or quantized by the unit's rule
    from random BF16 with NaN/Inf), G and a next-layer configuration over ``outputs`` channels."""
    torch.manual_seed(rng.randrange(1 << 30))
    w = torch.randn(outputs, inputs) * torch.exp(torch.randn(outputs, inputs))
    weights = golden.quantize_blocks(w, torch.rand(outputs, inputs // 16) < fp8)
    if blocks is None:
        x = random_bf16(rng, (tokens, inputs), nonfinite=0.003 if specials else 0.0)
        x_config = random_configs(rng, x, count=1)[0]
        blocks = golden.quantize_activations(x, x_config).blocks
    if specials:
        # A NaN weight code: its channel's results are NaN for every token (numerics §8), so BF16 NaN
        # reaches the next layer's activation unit.
        fp8_rows = weights.precision.nonzero()
        if len(fp8_rows):
            row, block = fp8_rows[0].tolist()
            weights.codes[row, block, rng.randrange(16)] = _E4M3_NAN
    scale = tile_scale_bits(weights, blocks)
    if specials and rng.random() < 0.5:
        scale = rng.choice([0x7E800000, 0x00800000, 0x3F800000])  # overflowing, subnormal-making, 1.0
    probe = golden.fp32_to_bf16_bits(golden.bits_to_float32(golden.unit_dot(weights, blocks))
                                     * golden.bits_to_float32(torch.tensor([scale], dtype=torch.int64)))
    probe = probe.to(torch.int16).view(torch.bfloat16)
    next_config = random_configs(rng, probe, count=1)[0]
    return weights, blocks, scale, next_config


def _blocks_equal(got, want):
    return ([row for row in got.codes.reshape(-1, 16).tolist()], got.scales.reshape(-1).tolist(),
            got.precision.reshape(-1).tolist()) == (
        [row for row in want.codes.reshape(-1, 16).tolist()], want.scales.reshape(-1).tolist(),
        want.precision.reshape(-1).tolist())


@cocotb.test()
async def tile_matches_golden(dut):
    config = json.loads(os.environ[CONFIG_ENV])
    torch.set_num_threads(1)  # the golden model's tensors are small; idle OpenMP workers would spin beside the simulator
    unit = Tile(**config["unit"])
    rng = random.Random(config["seed"])
    await start_clock_and_reset(dut, [])
    bus = AxiLiteBus.from_prefix(dut, "bus_")
    master = AxiLiteMaster(bus, dut.clk, dut.rst)
    for interface in (master.write_if, master.read_if):
        interface.log.setLevel(logging.WARNING)  # one INFO line per access otherwise
    for channel, probability in ((master.write_if.aw_channel, config["idle"]),
                                 (master.write_if.w_channel, config["idle"]),
                                 (master.read_if.ar_channel, config["idle"]),
                                 (master.write_if.b_channel, config["backpressure"]),
                                 (master.read_if.r_channel, config["backpressure"])):
        seed = rng.random()
        if probability:
            channel.set_pause_generator(_pauses(random.Random(seed), probability))

    async def write(address, value):
        await master.write_dword(address, value)

    async def read(address):
        return await master.read_dword(address)

    async def poll():
        await ClockCycles(dut.clk, 16)

    host = TileHost(unit.regions, REGISTERS, write, read)
    scoreboard = Scoreboard(f"tile_l{unit.lanes}")
    assert await host.read_register("id") == 0x46474D50
    runs = []
    previous = None
    for index, layer in enumerate(config["layers"]):
        if layer.get("file"):
            saved = torch.load(layer["file"])
            weights = golden.BlockTensor(**saved["weights"])
            blocks = golden.BlockTensor(**saved["activations"])
            scale = saved["scale"]
            next_config = saved["next_config"] and golden.ActivationConfig(**saved["next_config"])
        elif layer.get("chain"):
            # This layer reads the blocks the previous one wrote: its input region is the previous output.
            previous_blocks = previous["want"].next_blocks.blocks
            weights, blocks, scale, next_config = random_layer(
                rng, tokens=previous_blocks.codes.shape[0], inputs=previous_blocks.shape[-1],
                outputs=layer["outputs"], specials=False, blocks=previous_blocks)
        else:
            weights, blocks, scale, next_config = random_layer(
                rng, tokens=layer["tokens"], inputs=layer["inputs"], outputs=layer["outputs"],
                fp8=layer.get("fp8", 0.3), specials=layer.get("specials", True))
        tokens, inputs, outputs = blocks.codes.shape[0], weights.shape[-1], weights.shape[0]
        if layer.get("chain"):
            x_base = previous["y_base"]
        else:
            x_base = layer.get("x_base", 0)
            await host.write_entries("activations", x_base, activation_words(blocks))
        y_base = x_base + tokens * inputs // 16
        want = tile_layer(weights, blocks, scale, next_config)
        started = time.perf_counter()
        await host.load_weights(weight_images(weights, unit.lanes))
        if next_config is not None:
            await host.load_table(next_config.sensitivities)
        loaded = time.perf_counter()
        run = await host.run(tokens=tokens, outputs=outputs, inputs=inputs, lanes=unit.lanes, x_base=x_base,
                             y_base=y_base, scale_bits=scale, next_config=next_config, poll=poll)
        ran = time.perf_counter()
        stimulus = {"layer": index, "tokens": tokens, "inputs": inputs, "outputs": outputs}
        got_outputs = await host.read_outputs(tokens * outputs, unit.elements_per_cycle)
        expected = want.outputs.reshape(-1).tolist()
        for position, (got, exp) in enumerate(zip(got_outputs, expected)):
            scoreboard.compare({**stimulus, "output": position}, hex(got), hex(exp))
        if next_config is not None:
            words = await host.read_entries("activations", y_base, tokens * outputs // 16)
            got_blocks = activation_blocks(words, tokens, want.next_blocks.blocks.global_scale)
            wanted = want.next_blocks.blocks
            for position in range(len(words)):
                t, j = divmod(position, outputs // 16)
                scoreboard.compare({**stimulus, "block": position},
                                   (got_blocks.codes[t, j].tolist(), int(got_blocks.scales[t, j]),
                                    bool(got_blocks.precision[t, j])),
                                   (wanted.codes[t, j].tolist(), int(wanted.scales[t, j]),
                                    bool(wanted.precision[t, j])))
            scoreboard.compare({**stimulus, "counters": True}, (run.fp8_blocks, run.nvfp4_blocks),
                               (int(wanted.precision.sum()), int((~wanted.precision).sum())))
        ideal = tokens * (outputs // unit.lanes) * (inputs // 16)
        runs.append({**stimulus, "cycles": run.cycles, "ideal_cycles": ideal, "utilisation": ideal / run.cycles,
                     "fp8_weight_fraction": weights.fp8_fraction, "next_fp8_blocks": run.fp8_blocks,
                     "nan_outputs": sum(1 for v in expected if v == 0x7FC00000),
                     "load_seconds": loaded - started, "run_seconds": ran - loaded})
        previous = {"want": want, "x_base": x_base, "y_base": y_base}
        await RisingEdge(dut.clk)
    if config.get("refusals"):
        # Overlapping input and output regions, and a partial write, are refused, not half-done.
        with_error = False
        try:
            await host.run(tokens=1, outputs=16, inputs=16, lanes=unit.lanes, x_base=0, y_base=0, scale_bits=0,
                           next_config=next_config, poll=poll)
        except Exception as error:  # noqa: BLE001 - the refusal is what is tested
            with_error = "refused" in str(error)
        scoreboard.compare({"refusal": "overlap"}, with_error, True)
        response = await master.write(unit.regions["activations"].base, b"\x01\x02", )
        scoreboard.compare({"refusal": "partial write"}, int(response.resp), 2)
    scoreboard.write_report(suite="tile", runs=runs, idle=config["idle"], backpressure=config["backpressure"])
    scoreboard.assert_clean()
