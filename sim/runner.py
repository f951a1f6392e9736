"""Build generated Verilog and run a cocotb bench on Icarus or Verilator.

Every bench run has its own directory (logs, its report, files the bench reads or writes). The
simulator model it runs is built once per configuration: models are kept under a key made of the
Verilog, the top, the build options and the tool versions, so a second bench of the same configuration
in one run (or in a rerun) starts from the built model. With ``FGMP_SIM_CACHE`` set to a directory,
all benches of a process tree share one store there (the demo and the test session set it); without
it, each run directory keeps its own model and rebuilds it only when the key changes.
"""

import fcntl
import functools
import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from cocotb_tools import runner as cocotb_runner
from cocotb_tools.runner import get_results, get_runner

from fgmp.hw.verilog import STORE_ENV as CACHE_ENV, WAIVERS
from fgmp.toolchain import ToolchainError, require_iverilog, verilator_env
from .scoreboard import REPORT_ENV

__all__ = ["SIMULATORS", "CACHE_ENV", "BenchResult", "BenchFailure", "run_bench", "build_model"]

SIMULATORS = ("icarus", "verilator")
TIMESCALE = ("1ns", "1ps")
_BUILT = "model.key"  # written last: a model directory without it is incomplete


class BenchFailure(AssertionError):
    pass


@dataclass(frozen=True)
class BenchResult:
    simulator: str
    tests: int
    failures: int
    reports: list  # one scoreboard report per cocotb test, in the order they ran
    build_dir: Path  # the run directory
    model_dir: Path  # where the simulator model was built (shared with other runs of the same key)
    built: bool  # this run compiled the model (False: it reused one)

    @property
    def report(self):
        """The report of a bench with a single test."""
        if len(self.reports) != 1:
            raise ValueError(f"The bench wrote {len(self.reports)} reports, not one")
        return self.reports[0]


# Verilator makes only the top's signals visible to cocotb (see _Verilator).
_VISIBILITY = ["--public-depth", "1"]


class _Verilator(cocotb_runner.Verilator):
    """cocotb's Verilator runner, building with ``_VISIBILITY`` instead of ``--public-flat-rw``.

    The benches touch only the top's ports. Making every internal signal public doubles the C++ that
    Verilator writes for the engine (19 MB against 9.6 MB) and its compile time; toggle coverage does
    not depend on it."""

    def _build_command(self):
        commands = super()._build_command()
        verilate = commands[0]
        at = verilate.index("--public-flat-rw")
        verilate[at:at + 1] = _VISIBILITY
        return commands


def _runner(simulator):
    return _Verilator() if simulator == "verilator" else get_runner(simulator)


def _prepare(simulator):
    if simulator == "icarus":
        require_iverilog()
    elif simulator == "verilator":
        # cocotb's runner finds verilator on PATH and reads VERILATOR_ROOT from this process.
        os.environ.update(verilator_env())
    else:
        raise ValueError(f"Simulator must be one of {', '.join(SIMULATORS)}, not {simulator!r}")


@functools.cache
def _tool_identity(simulator):
    if simulator == "icarus":
        first_line = subprocess.run([require_iverilog(), "-V"], capture_output=True, text=True).stdout
        return first_line.splitlines()[0] if first_line else "iverilog"
    return f"verilator {version('verilator')}"


def _model_key(simulator, sources, top, build_args):
    digest = hashlib.sha256()
    for part in (simulator, _tool_identity(simulator), f"cocotb {version('cocotb')}", top, TIMESCALE,
                 _VISIBILITY if simulator == "verilator" else (), tuple(build_args),
                 os.environ.get("MAKEFLAGS", "") if simulator == "verilator" else ""):
        digest.update(repr(part).encode() + b"\0")
    for source in [*sources, *([WAIVERS] if simulator == "verilator" else [])]:
        digest.update(Path(source).read_bytes() + b"\0")
    return digest.hexdigest()


def build_model(simulator, sources, top, *, run_dir, build_args=()):
    """The directory of a built simulator model of ``sources`` with toplevel ``top``, and whether this
    call built it. The store is ``$FGMP_SIM_CACHE`` (shared, one directory per key) or ``run_dir/model``
    (private, rebuilt when the key changes); a lock file serialises builds of one key across processes."""
    _prepare(simulator)
    sources = [Path(s).resolve() for s in sources]
    key = _model_key(simulator, sources, top, build_args)
    shared = os.environ.get(CACHE_ENV)
    if shared:
        model_dir = Path(shared).resolve() / simulator / f"{top}-{key[:20]}"
    else:
        model_dir = Path(run_dir).resolve() / "model"
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(model_dir.parent / f".{model_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        marker = model_dir / _BUILT
        if marker.is_file() and marker.read_text() == key:
            return model_dir, False
        shutil.rmtree(model_dir, ignore_errors=True)
        model_dir.mkdir(parents=True)
        _runner(simulator).build(
            sources=sources,
            # Verilator warns while building too; the same documented waivers as lint apply.
            build_args=([str(WAIVERS)] if simulator == "verilator" else []) + list(build_args),
            hdl_toplevel=top,
            build_dir=model_dir,
            timescale=TIMESCALE,
            always=True,
            log_file=model_dir / "build.log",
        )
        marker.write_text(key)
        return model_dir, True


def run_bench(*, simulator, sources, top, test_module, build_dir, extra_env=None, testcases=None, build_args=()):
    """Run ``test_module`` (only ``testcases`` if given) in the run directory ``build_dir`` on a model of
    ``sources`` with ``top`` as toplevel (built, or reused: ``build_model``); raise BenchFailure unless
    every selected cocotb test ran and passed. The benches' scoreboard reports come back in
    ``BenchResult.reports``. ``build_args`` go to the simulator's compiler as they are."""
    run_dir = Path(build_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    report_path = run_dir / "bench_report.json"
    results_path = run_dir / "results.xml"
    for stale in (report_path, results_path):
        stale.unlink(missing_ok=True)
    model_dir, built = build_model(simulator, sources, top, run_dir=run_dir, build_args=build_args)
    _runner(simulator).test(
        test_module=test_module,
        hdl_toplevel=top,
        hdl_toplevel_lang="verilog",  # a runner that did not build cannot infer it from the sources
        build_dir=model_dir,
        test_dir=run_dir,
        testcase=list(testcases) if testcases else None,
        results_xml=str(results_path),
        extra_env={**(extra_env or {}), REPORT_ENV: str(report_path)},
        timescale=TIMESCALE,
        log_file=run_dir / "sim.log",
    )
    if not results_path.exists():
        raise BenchFailure(f"{simulator}: no results written; see {run_dir / 'sim.log'}")
    tests, failures = get_results(results_path)
    reports = json.loads(report_path.read_text()) if report_path.exists() else []
    expected_tests = len(testcases) if testcases else None
    if tests == 0 or failures or (expected_tests is not None and tests != expected_tests):
        raise BenchFailure(
            f"{simulator}: {failures} of {tests} cocotb tests failed (expected {expected_tests or 'some'} to "
            f"run); see {run_dir / 'sim.log'}\n{reports}"
        )
    return BenchResult(simulator=simulator, tests=tests, failures=failures, reports=reports, build_dir=run_dir,
                       model_dir=model_dir, built=built)


__all__ += ["ToolchainError"]
