"""Session set-up shared by the tests, and the benches' report at the end of the run.

- One store of built simulator models for the whole session (sim.runner, ``FGMP_SIM_CACHE``), shared by
  the pytest-xdist workers, which inherit this process's environment: no configuration is compiled twice
  in one run. A store the caller set is used as it is.
- With workers, torch and the simulators' golden models run one thread each: oversubscribed cores make
  OpenMP threads spin (docs/policy.md §10).
- The cocotb benches go first, so that the longest tests do not start last on one worker.
"""

import os
import shutil
import tempfile

import pytest

from fgmp.sim.runner import CACHE_ENV

_BENCH_REPORTS = []


def pytest_configure(config):
    if hasattr(config, "workerinput"):  # an xdist worker: the controller has set the environment
        return
    if CACHE_ENV not in os.environ:
        config._fgmp_model_store = os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="fgmp-models-")
    if (config.getoption("numprocesses", None) or 0) != 0:
        os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_unconfigure(config):
    store = getattr(config, "_fgmp_model_store", None)
    if store:
        shutil.rmtree(store, ignore_errors=True)
        os.environ.pop(CACHE_ENV, None)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.get_closest_marker("cocotb") is None)  # stable: file order otherwise


@pytest.fixture
def bench_reports():
    return _BENCH_REPORTS


def pytest_sessionfinish(session):
    if hasattr(session.config, "workeroutput"):  # an xdist worker hands its reports to the controller
        session.config.workeroutput["fgmp_bench_reports"] = [list(entry) for entry in _BENCH_REPORTS]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    _BENCH_REPORTS.extend(tuple(entry) for entry in node.workeroutput.get("fgmp_bench_reports", []))


def pytest_terminal_summary(terminalreporter):
    if not _BENCH_REPORTS:
        return
    terminalreporter.section("cocotb benches (vectors checked against the golden model)")
    for simulator, report in _BENCH_REPORTS:
        detail = ""
        if report.get("element_code_pairs"):
            detail = f"  ({report['element_code_pairs']} element code pairs, each through all B multipliers of a lane)"
        elif report.get("suite") == "quantizer":
            detail = (f"  ({report['blocks']} BF16 blocks under {report['rounds']} configurations, "
                      f"{report['fp8_blocks']} chose FP8)")
        elif report.get("suite") == "engine":
            detail = f"  ({report['rounds']} configurations x {report['tokens']} tokens, FP32 lane results)"
        elif report.get("block_pairs"):
            detail = (f"  ({report['reductions']} reductions, {report['block_pairs']} block pairs, "
                      f"idle {report['idle']}, back-pressure {report['backpressure']})")
        terminalreporter.write_line(
            f"{simulator:<10} {report['bench']:<24} checked {report['checked']:>7}  "
            f"mismatches {report['mismatches']}{detail}"
        )
