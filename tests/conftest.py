"""Collects the cocotb benches' scoreboard reports and prints their counts at the end of the run."""

import pytest

_BENCH_REPORTS = []


@pytest.fixture
def bench_reports():
    return _BENCH_REPORTS


def pytest_terminal_summary(terminalreporter):
    if not _BENCH_REPORTS:
        return
    terminalreporter.section("cocotb benches (vectors checked against the golden model)")
    for simulator, report in _BENCH_REPORTS:
        terminalreporter.write_line(
            f"{simulator:<10} {report['bench']:<16} checked {report['checked']:>7}  "
            f"mismatches {report['mismatches']}"
        )
