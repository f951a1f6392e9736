"""cocotb benches over every code of each decoder, on Icarus and on Verilator (no skips: a missing
simulator is a failure). The three decoders share one build per simulator (sim.decoders.DecoderBank);
`fgmp demo` builds each decoder on its own."""

import pytest

from fgmp.sim.decoders import DECODER_FORMATS, run_decoder_bank_bench
from fgmp.sim.runner import SIMULATORS


@pytest.fixture(scope="module", params=SIMULATORS)
def bank(request, tmp_path_factory):
    return request.param, run_decoder_bank_bench(request.param, tmp_path_factory.mktemp("cocotb"))


@pytest.mark.cocotb
@pytest.mark.parametrize("format_name", list(DECODER_FORMATS))
def test_decoder_bench(format_name, bank, bench_reports):
    simulator, result = bank
    assert result.tests == 1 and result.failures == 0
    assert [report["format"] for report in result.reports] == list(DECODER_FORMATS)
    report = result.reports[list(DECODER_FORMATS).index(format_name)]
    bench_reports.append((simulator, report))
    assert report["checked"] == 1 << DECODER_FORMATS[format_name].code_bits
    assert report["mismatches"] == 0
