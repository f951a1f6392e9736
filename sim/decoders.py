"""Exhaustive decoder benches: generate each decoder's Verilog and run every code through a simulator."""

from pathlib import Path

from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from fgmp.hw import E2M1, E4M3, UE4M3, Decoder
from fgmp.hw.verilog import write_verilog
from .runner import run_bench

__all__ = ["DECODER_FORMATS", "DecoderBank", "decoder_top", "run_decoder_bench", "run_decoder_bank_bench"]

DECODER_FORMATS = {fmt.name: fmt for fmt in (E2M1, E4M3, UE4M3)}


def decoder_top(format_name):
    return f"{format_name}_decoder"


def run_decoder_bench(format_name, simulator, build_root):
    """Run ``sim/decoder_bench.py`` for one format on one simulator in ``build_root/<sim>/<top>``."""
    if format_name not in DECODER_FORMATS:
        raise ValueError(f"Format must be one of {', '.join(DECODER_FORMATS)}, not {format_name!r}")
    top = decoder_top(format_name)
    build_dir = (Path(build_root) / simulator / top).resolve()
    source = write_verilog(Decoder(format=DECODER_FORMATS[format_name]), top, build_dir)
    return run_bench(
        simulator=simulator,
        sources=[source],
        top=top,
        test_module="fgmp.sim.decoder_bench",
        build_dir=build_dir,
        extra_env={"FGMP_FORMAT": format_name},
        testcases=["every_code_matches_golden"],
    )


class DecoderBank(wiring.Component):
    """Every decoder side by side (ports ``<format>_code`` / ``<format>_decoded``): one simulator build
    checks all formats, which saves two Verilator builds per test run."""

    def __init__(self):
        super().__init__({port: signature for name, fmt in DECODER_FORMATS.items() for port, signature in (
            (f"{name}_code", In(fmt.code_bits)), (f"{name}_decoded", Out(fmt.decoded_layout)))})

    def elaborate(self, platform):
        m = Module()
        for name, fmt in DECODER_FORMATS.items():
            m.submodules[name] = decoder = Decoder(format=fmt)
            m.d.comb += [decoder.code.eq(getattr(self, f"{name}_code")),
                         getattr(self, f"{name}_decoded").eq(decoder.decoded)]
        return m


def run_decoder_bank_bench(simulator, build_root):
    """Every code of every format through one build of the DecoderBank; the BenchResult's reports come
    in DECODER_FORMATS order, one per format."""
    top = "fgmp_decoders"
    build_dir = (Path(build_root) / simulator / top).resolve()
    source = write_verilog(DecoderBank(), top, build_dir)
    return run_bench(simulator=simulator, sources=[source], top=top, test_module="fgmp.sim.decoder_bench",
                     build_dir=build_dir, testcases=["every_code_of_every_format"])
