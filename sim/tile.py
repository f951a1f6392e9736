"""cocotb bench of the FGMP tile (sim/tile_bench.py): generate, build, run."""

import json
from pathlib import Path

import torch

from fgmp.hw.tile import Tile
from fgmp.hw.verilog import write_verilog
from .runner import run_bench

__all__ = ["run_tile_bench", "tile_top", "save_layer"]


def tile_top(unit):
    return f"fgmp_tile_l{unit.lanes}"


def save_layer(path, weights, activations, scale_bits, next_config):
    """A layer for the bench (``{"file": path}``): weight and activation BlockTensors, G's bits and the next
    layer's ActivationConfig (None: the tile writes no next-layer blocks)."""
    fields = lambda bt: {"codes": bt.codes, "scales": bt.scales, "precision": bt.precision,  # noqa: E731
                         "global_scale": bt.global_scale}
    torch.save({"weights": fields(weights), "activations": fields(activations), "scale": int(scale_bits),
                "next_config": None if next_config is None else {
                    "scale_exponent": next_config.scale_exponent, "threshold": next_config.threshold,
                    "sensitivities": next_config.sensitivities}}, path)
    return Path(path).resolve()


def run_tile_bench(unit_params, simulator, build_root, layers, *, seed=1, idle=0.2, backpressure=0.2,
                   refusals=True):
    """``layers``: dicts {tokens, inputs, outputs[, fp8, specials, x_base]} (random), {chain: True,
    outputs} (reads what the previous layer wrote) or {file: path} (``save_layer``)."""
    unit = Tile(**unit_params)
    top = tile_top(unit)
    build_dir = (Path(build_root) / simulator / top).resolve()
    source = write_verilog(unit, top, build_dir, params=unit_params)
    layers = [{**layer, "file": str(Path(layer["file"]).resolve())} if layer.get("file") else layer
              for layer in layers]
    payload = {"unit": unit_params, "layers": layers, "seed": seed, "idle": idle, "backpressure": backpressure,
               "refusals": refusals}
    return run_bench(simulator=simulator, sources=[source], top=top, test_module="fgmp.sim.tile_bench",
                     build_dir=build_dir, extra_env={"FGMP_TILE_BENCH": json.dumps(payload)},
                     testcases=["tile_matches_golden"])
