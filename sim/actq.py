"""cocotb benches of the activation quantization unit and the engine: generate, build, run."""

import json
from pathlib import Path

from fgmp.hw import ActivationQuantizer, Engine
from fgmp.hw.verilog import write_verilog
from .runner import run_bench

__all__ = ["run_quantizer_bench", "run_engine_bench"]


def _run(unit, top, test, unit_params, simulator, build_root, **config):
    build_dir = (Path(build_root) / simulator / top).resolve()
    source = write_verilog(unit, top, build_dir, params=unit_params)
    payload = {"unit": unit_params, **config}
    return run_bench(simulator=simulator, sources=[source], top=top, test_module="fgmp.sim.actq_bench",
                     build_dir=build_dir, extra_env={"FGMP_ACTQ_BENCH": json.dumps(payload)}, testcases=[test])


def run_quantizer_bench(unit_params, simulator, build_root, *, tokens=8, channels=64, rounds=4, seed=1,
                        idle=0.2, backpressure=0.2):
    """Random BF16 blocks through ``ActivationQuantizer(**unit_params)`` under ``rounds`` configurations."""
    unit = ActivationQuantizer(**unit_params)
    flow = "_credit" if unit.flow_control == "credit" else ""
    return _run(unit, f"fgmp_actq{flow}_p{unit.pipeline_stages}", "quantizer_matches_golden", unit_params, simulator,
                build_root, tokens=tokens, channels=channels, rounds=rounds, seed=seed, idle=idle,
                backpressure=backpressure)


def run_engine_bench(unit_params, simulator, build_root, *, tokens=8, channels=64, rounds=2, seed=1, idle=0.2,
                     backpressure=0.2):
    """A random layer through ``Engine(**unit_params)``: BF16 activations x FGMP weights -> FP32."""
    unit = Engine(**unit_params)
    return _run(unit, f"fgmp_engine_l{unit.lanes}", "engine_matches_golden", unit_params, simulator, build_root,
                tokens=tokens, channels=channels, rounds=rounds, seed=seed, idle=idle, backpressure=backpressure)
