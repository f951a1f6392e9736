"""cocotb benches over every code of each decoder, on Icarus and on Verilator (no skips: a missing
simulator is a failure)."""

import pytest

from fgmp.sim.decoders import DECODER_FORMATS, run_decoder_bench
from fgmp.sim.runner import SIMULATORS


@pytest.mark.cocotb
@pytest.mark.parametrize("simulator", SIMULATORS)
@pytest.mark.parametrize("format_name", list(DECODER_FORMATS))
def test_decoder_bench(format_name, simulator, tmp_path_factory, bench_reports):
    result = run_decoder_bench(format_name, simulator, tmp_path_factory.mktemp("cocotb"))
    bench_reports.append((simulator, result.report))
    assert result.tests == 1 and result.failures == 0
    assert result.report["checked"] == 1 << DECODER_FORMATS[format_name].code_bits
    assert result.report["mismatches"] == 0
