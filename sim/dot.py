"""The dot unit's cocotb bench: generate the Verilog for one configuration and run a suite on a simulator."""

import json
from pathlib import Path

from fgmp.hw import DotUnit
from fgmp.hw.verilog import write_verilog
from .runner import run_bench

__all__ = ["SUITES", "dot_top", "run_dot_bench"]

# Suite name -> the cocotb test in sim/dot_bench.py that runs it.
SUITES = {"exhaustive": "exhaustive_code_pairs", "random": "random_reductions_with_stalls"}


def dot_top(unit):
    """fgmp_dot_l4, fgmp_split_dot_l4, fgmp_credit_dot_l4, fp8_dot_l4, ...: the variant, the datapath when
    not shared, the flow control when not stall, the lanes."""
    variant = "fgmp" if len(unit.formats) == 2 else unit.formats[0]
    datapath = "" if unit.datapath == "shared" else f"_{unit.datapath}"
    flow = "" if unit.flow_control == "stall" else f"_{unit.flow_control}"
    return f"{variant}{datapath}{flow}_dot_l{unit.lanes}"


def run_dot_bench(unit_params, simulator, build_root, *, suites=tuple(SUITES), count=200, max_reduction=32,
                  seed=1, idle=0.2, backpressure=0.2):
    """Build the unit ``DotUnit(**unit_params)`` once and run the ``suites`` of ``sim/dot_bench.py`` on it;
    returns the BenchResult whose ``reports`` hold, per suite, the scoreboard counts, cycles and
    simulated block pairs per second."""
    for suite in suites:
        if suite not in SUITES:
            raise ValueError(f"Suite must be one of {', '.join(SUITES)}, not {suite!r}")
    unit = DotUnit(**unit_params)
    top = dot_top(unit)
    build_dir = (Path(build_root) / simulator / f"{top}_p{unit.pipeline_stages}").resolve()
    source = write_verilog(unit, top, build_dir, params=unit_params)
    config = {"unit": {**unit_params, "formats": list(unit.formats)}, "count": count,
              "max_reduction": max_reduction, "seed": seed, "idle": idle, "backpressure": backpressure}
    return run_bench(simulator=simulator, sources=[source], top=top, test_module="fgmp.sim.dot_bench",
                     build_dir=build_dir, extra_env={"FGMP_DOT_BENCH": json.dumps(config)},
                     testcases=[SUITES[suite] for suite in suites])
