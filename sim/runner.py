"""Build generated Verilog and run a cocotb bench on Icarus or Verilator, one build directory each."""

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cocotb_tools.runner import get_runner, get_results

from fgmp.toolchain import ToolchainError, require_iverilog, verilator_env
from .scoreboard import REPORT_ENV

__all__ = ["SIMULATORS", "BenchResult", "BenchFailure", "run_bench"]

SIMULATORS = ("icarus", "verilator")


class BenchFailure(AssertionError):
    pass


@dataclass(frozen=True)
class BenchResult:
    simulator: str
    tests: int
    failures: int
    report: dict
    build_dir: Path


def _prepare(simulator):
    if simulator == "icarus":
        require_iverilog()
    elif simulator == "verilator":
        # cocotb's runner finds verilator on PATH and reads VERILATOR_ROOT from this process.
        os.environ.update(verilator_env())
    else:
        raise ValueError(f"Simulator must be one of {', '.join(SIMULATORS)}, not {simulator!r}")


def run_bench(*, simulator, sources, top, test_module, build_dir, extra_env=None):
    """Build ``sources`` with ``top`` as toplevel and run ``test_module``; raise BenchFailure unless every
    cocotb test ran and passed. The bench's scoreboard report comes back in ``BenchResult.report``."""
    _prepare(simulator)
    build_dir = Path(build_dir).resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    report_path = build_dir / "bench_report.json"
    results_path = build_dir / "results.xml"
    for stale in (report_path, results_path):
        stale.unlink(missing_ok=True)

    runner = get_runner(simulator)
    runner.build(
        sources=[Path(s).resolve() for s in sources],
        hdl_toplevel=top,
        build_dir=build_dir,
        timescale=("1ns", "1ps"),
        always=True,
        log_file=build_dir / "build.log",
    )
    runner.test(
        test_module=test_module,
        hdl_toplevel=top,
        build_dir=build_dir,
        test_dir=build_dir,
        results_xml=str(results_path),
        extra_env={**(extra_env or {}), REPORT_ENV: str(report_path)},
        log_file=build_dir / "sim.log",
    )
    if not results_path.exists():
        raise BenchFailure(f"{simulator}: no results written; see {build_dir / 'sim.log'}")
    tests, failures = get_results(results_path)
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    if tests == 0 or failures:
        raise BenchFailure(
            f"{simulator}: {failures} of {tests} cocotb tests failed; see {build_dir / 'sim.log'}\n{report}"
        )
    return BenchResult(simulator=simulator, tests=tests, failures=failures, report=report, build_dir=build_dir)


__all__ += ["ToolchainError"]
