"""The FGMP tile: its golden model and memory images (numerics §10), its generator's parameter checks, and
cocotb benches on Icarus and Verilator over AXI4-Lite (random layers with special values, a second layer
that reads what the first wrote, refused requests, idle and back-pressure on every bus channel)."""

import random

import pytest
import torch

from fgmp import golden
from fgmp.golden.tile import (activation_blocks, activation_words, tile_layer, tile_scale_bits, tile_weight_bits,
                              weight_images)
from fgmp.hw.tile import Tile
from fgmp.sim.actq_stimuli import random_bf16, random_configs
from fgmp.sim.runner import SIMULATORS
from fgmp.demo import TILE
from fgmp.sim.tile import run_tile_bench


def _layer(seed=0, tokens=3, inputs=64, outputs=32, fp8=0.3):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    w = torch.randn(outputs, inputs) * torch.exp(torch.randn(outputs, inputs))
    weights = golden.quantize_blocks(w, torch.rand(outputs, inputs // 16) < fp8)
    x = random_bf16(rng, (tokens, inputs))
    blocks = golden.quantize_activations(x, random_configs(rng, x, count=1)[0]).blocks
    return rng, weights, blocks


def test_weight_images_hold_every_code_once_and_fp8_high_nibbles_in_order():
    _, weights, _ = _layer(fp8=0.4)
    lanes = 4
    images = weight_images(weights, lanes)
    for lane, (low, high) in enumerate(images):
        rows = weights.codes[lane::lanes].reshape(-1, 16)
        fp8 = weights.precision[lane::lanes].reshape(-1)
        scales = weights.scales[lane::lanes].reshape(-1)
        assert len(low) == len(rows) and len(high) == int(fp8.sum())
        highs = iter(high)
        for n, word in enumerate(low):
            assert word >> 73 == 0
            assert (word >> 72) == int(fp8[n]) and (word >> 64) & 0xFF == int(scales[n])
            upper = next(highs) if fp8[n] else 0
            codes = [((word >> 4 * i) & 0xF) | (((upper >> 4 * i) & 0xF) << 4) for i in range(16)]
            assert codes == [c & (0xFF if fp8[n] else 0xF) for c in rows[n].tolist()]


def test_activation_words_round_trip():
    _, _, blocks = _layer()
    words = activation_words(blocks)
    assert all(word >> 137 == 0 for word in words)
    back = activation_blocks(words, blocks.codes.shape[0], blocks.global_scale)
    assert torch.equal(back.codes, blocks.codes) and torch.equal(back.scales, blocks.scales)
    assert torch.equal(back.precision, blocks.precision)


def test_tile_layer_composes_the_unit_the_scale_and_the_activation_unit():
    rng, weights, blocks = _layer()
    scale = tile_scale_bits(weights, blocks)
    next_config = random_configs(rng, torch.zeros(1, 32, dtype=torch.bfloat16), count=1)[0]
    step = tile_layer(weights, blocks, scale, next_config)
    unit = golden.bits_to_float32(golden.unit_dot(weights, blocks))
    g = torch.tensor([scale], dtype=torch.int64).to(torch.int32).view(torch.float32)
    product = unit * g  # normal, finite products here: torch's FP32 multiply is the same RNE
    assert torch.equal(step.outputs.to(torch.int32).view(torch.float32), product)
    assert torch.equal(step.bf16, golden.fp32_to_bf16_bits(product))
    want = golden.quantize_activations(step.bf16.to(torch.int16).view(torch.bfloat16), next_config).blocks
    assert torch.equal(step.next_blocks.blocks.codes, want.codes)


def test_tile_weight_bits_follow_the_precision_bits():
    _, weights, _ = _layer(fp8=0.3, outputs=64)
    bits = tile_weight_bits(weights, 4)
    fp8_blocks = int(weights.precision.sum())
    blocks = weights.precision.numel()
    assert bits["fgmp"] == 73 * blocks + 64 * fp8_blocks
    assert bits["fp8_only"] == 136 * blocks


@pytest.mark.parametrize("params, error, message", [
    ({"lanes": 0}, ValueError, "Lanes must be at least 1, not 0"),
    ({"max_inputs": 40}, ValueError, "The block size (16) must divide the maximum inputs (40)"),
    ({"max_outputs": 48, "lanes": 32}, ValueError, "Lanes (32) must divide the maximum outputs (48)"),
    ({"elements_per_cycle": 3}, ValueError, "Elements per cycle (3) must divide the block size (16)"),
    ({"elements_per_cycle": 8, "lanes": 4}, ValueError, "Elements per cycle (8) must divide the lanes (4)"),
    ({"fp8_weight_blocks": 10_000}, ValueError, "FP8 weight blocks (10000) must not exceed the weight blocks (64)"),
    ({"output_memory": 1}, TypeError, "Output memory must be True or False, not 1"),
    ({"datapath": "wide"}, ValueError, "Unknown datapath 'wide'; choose from 'shared', 'split'"),
    ({"max_tokens": 0}, ValueError, "Maximum tokens must be at least 1, not 0"),
])
def test_tile_parameters_are_checked(params, error, message):
    with pytest.raises(error) as info:
        Tile(**{"max_inputs": 64, "max_outputs": 64, **params})
    assert str(info.value) == message


def test_tile_memories_follow_the_parameters():
    tile = Tile(lanes=4, max_inputs=192, max_outputs=768, max_tokens=4, fp8_weight_blocks=800)
    bits = tile.memory_bits
    assert bits["weights_low"] == 4 * 2304 * 73 and bits["weights_high"] == 4 * 800 * 64
    assert bits["activations"] == 4 * (192 + 768) // 16 * 137
    regions = list(tile.regions.values())
    assert [r.base for r in regions] == sorted(r.base for r in regions)
    assert all(r.base + r.depth * r.words * 4 <= s.base for r, s in zip(regions, regions[1:]))


# Random layers (the last with a NaN weight, non-finite inputs, maybe an overflowing or subnormal-making G); a
# second layer reading the first one's blocks; refused requests. Verilator: L = 4 with E = 2 (two beats per
# result); Icarus, which takes ~50 ms per cycle on the tile, a 2-lane tile on smaller layers.
BENCHES = {
    "verilator": TILE,  # the demo's (one build per session)
    "icarus": ({"lanes": 2, "max_inputs": 32, "max_outputs": 32, "max_tokens": 2, "elements_per_cycle": 2,
                "activation_blocks": 16},
               [{"tokens": 2, "inputs": 32, "outputs": 32, "specials": False}, {"chain": True, "outputs": 16},
                {"tokens": 1, "inputs": 16, "outputs": 32, "fp8": 0.6, "x_base": 2}]),
}


@pytest.mark.cocotb
@pytest.mark.parametrize("simulator", SIMULATORS)
def test_tile_bench(simulator, tmp_path_factory, bench_reports):
    tile, layers = BENCHES[simulator]
    result = run_tile_bench(tile, simulator, tmp_path_factory.mktemp("cocotb"), layers, idle=0.3, backpressure=0.3)
    report = result.report
    bench_reports.append((simulator, report))
    assert report["mismatches"] == 0
    runs = report["runs"]
    assert [r["outputs"] for r in runs] == [layer["outputs"] for layer in layers]
    assert runs[1]["inputs"] == runs[0]["outputs"]  # the chained layer's input is the first layer's output
    expected = sum(r["tokens"] * r["outputs"] * (1 + 1 / 16) for r in runs) + len(runs) + 2
    assert report["checked"] == expected  # every output, every block, the counters, the two refusals
    assert any(r["nan_outputs"] for r in runs)
    assert all(0 < r["next_fp8_blocks"] for r in runs)


@pytest.mark.cocotb
def test_e2e_tile_runs_the_default_layer_from_the_bus(tmp_path, monkeypatch, capsys):
    """``fgmp e2e --tile``: the embedded model's default layer (768 x 192, policy plan at 30 % FP8) and one
    captured token, loaded over AXI4-Lite; every FP32 output and next-layer block bit-exact, from a
    relative output directory."""
    import json

    from fgmp.cli import main

    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    try:
        assert main(["e2e", "--calib-samples", "2", "--eval-samples", "2", "--threads", "1", "--quiet",
                     "--no-energy", "--tile", "--tokens", "1", "--out", "rel"]) == 0
    finally:
        torch.set_num_threads(threads)
    summary = json.loads((tmp_path / "rel" / "e2e.json").read_text())
    bench = summary["bench"]
    tile = bench["tile"]
    assert bench["mismatches"] == 0 and bench["checked"] == 768 + 48 + 1  # outputs, next-layer blocks, counters
    assert tile["next_layer"] == "blocks.0.mlp.down_proj"
    assert tile["ideal_cycles"] == 768 // 4 * 192 // 16 and tile["cycles"] >= tile["ideal_cycles"]
    assert tile["weight_bits"]["fgmp"] < 0.70 * tile["weight_bits"]["fp8_only"]
    assert "Tile (4 lanes)" in (tmp_path / "rel" / "e2e.md").read_text()
    assert "mismatches: 0" in capsys.readouterr().out


def test_generate_tile_writes_lint_clean_verilog_to_a_relative_directory(tmp_path, monkeypatch, capsys):
    from fgmp.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["generate", "tile", "--lanes", "2", "--max-inputs", "32", "--max-outputs", "32", "--max-tokens",
                 "2", "--elements-per-cycle", "2", "--out", "gen"]) == 0
    out = capsys.readouterr().out
    assert "lint clean" in out and "weights_low" in out
    assert (tmp_path / "gen" / "fgmp_tile_l2.v").stat().st_size > 0
    assert main(["generate", "tile", "--lanes", "4", "--elements-per-cycle", "8"]) == 2
    assert "fgmp: error: Elements per cycle (8) must divide the lanes (4)" in capsys.readouterr().err
