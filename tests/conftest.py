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
