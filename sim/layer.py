"""Run the engine on an exported layer and captured activations (sim/layer_bench.py): generate, build, run."""

import json
from pathlib import Path

import torch

from fgmp.hw import Engine
from fgmp.hw.verilog import write_verilog
from .runner import run_bench

__all__ = ["run_layer_bench"]


def run_layer_bench(unit_params, simulator, build_root, layer_dir, activations, *, seed=1, idle=0.0,
                    backpressure=0.0):
    """``activations``: a BF16 tensor (tokens x K) of the layer's inputs; ``layer_dir``: an export_layer
    directory. Returns the BenchResult (its report: mismatches, cycles, activation FP8 blocks)."""
    if not isinstance(activations, torch.Tensor) or activations.dtype != torch.bfloat16 or activations.dim() != 2:
        raise TypeError("Activations must be a 2-D bfloat16 tensor (tokens x input channels)")
    unit = Engine(**unit_params)
    top = f"fgmp_engine_l{unit.lanes}"
    build_dir = (Path(build_root) / simulator / top).resolve()
    source = write_verilog(unit, top, build_dir, params=unit_params)
    path = build_dir / "activations.pt"
    torch.save(activations.contiguous().view(torch.int16).clone(), path)
    payload = {"unit": unit_params, "layer_dir": str(Path(layer_dir).resolve()), "activations": str(path),
               "seed": seed, "idle": idle, "backpressure": backpressure}
    return run_bench(simulator=simulator, sources=[source], top=top, test_module="fgmp.sim.layer_bench",
                     build_dir=build_dir, extra_env={"FGMP_LAYER_BENCH": json.dumps(payload)},
                     testcases=["layer_matches_golden"])
