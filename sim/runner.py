"""Build generated Verilog and run a cocotb bench on Icarus or Verilator, one build directory each."""

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cocotb_tools.runner import get_runner, get_results

from fgmp.hw.verilog import WAIVERS
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
    reports: list  # one scoreboard report per cocotb test, in the order they ran
    build_dir: Path

    @property
    def report(self):
        """The report of a bench with a single test."""
        if len(self.reports) != 1:
            raise ValueError(f"The bench wrote {len(self.reports)} reports, not one")
        return self.reports[0]


def _prepare(simulator):
    if simulator == "icarus":
        require_iverilog()
    elif simulator == "verilator":
        # cocotb's runner finds verilator on PATH and reads VERILATOR_ROOT from this process.
        os.environ.update(verilator_env())
    else:
        raise ValueError(f"Simulator must be one of {', '.join(SIMULATORS)}, not {simulator!r}")


def run_bench(*, simulator, sources, top, test_module, build_dir, extra_env=None, testcases=None, build_args=()):
    """Build ``sources`` with ``top`` as toplevel and run ``test_module`` (only ``testcases`` if given);
    raise BenchFailure unless every selected cocotb test ran and passed. The benches' scoreboard reports
    come back in ``BenchResult.reports``. ``build_args`` go to the simulator's compiler as they are."""
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
        # Verilator warns while building too; the same documented waivers as lint apply.
        build_args=([str(WAIVERS)] if simulator == "verilator" else []) + list(build_args),
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
        testcase=list(testcases) if testcases else None,
        results_xml=str(results_path),
        extra_env={**(extra_env or {}), REPORT_ENV: str(report_path)},
        log_file=build_dir / "sim.log",
    )
    if not results_path.exists():
        raise BenchFailure(f"{simulator}: no results written; see {build_dir / 'sim.log'}")
    tests, failures = get_results(results_path)
    reports = json.loads(report_path.read_text()) if report_path.exists() else []
    expected_tests = len(testcases) if testcases else None
    if tests == 0 or failures or (expected_tests is not None and tests != expected_tests):
        raise BenchFailure(
            f"{simulator}: {failures} of {tests} cocotb tests failed (expected {expected_tests or 'some'} to "
            f"run); see {build_dir / 'sim.log'}\n{reports}"
        )
    return BenchResult(simulator=simulator, tests=tests, failures=failures, reports=reports, build_dir=build_dir)


__all__ += ["ToolchainError"]
