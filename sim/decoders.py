"""Exhaustive decoder benches: generate each decoder's Verilog and run every code through a simulator."""

from pathlib import Path

from fgmp.hw import E2M1, E4M3, UE4M3, Decoder
from fgmp.hw.verilog import write_verilog
from .runner import run_bench

__all__ = ["DECODER_FORMATS", "decoder_top", "run_decoder_bench"]

DECODER_FORMATS = {fmt.name: fmt for fmt in (E2M1, E4M3, UE4M3)}


def decoder_top(format_name):
    return f"{format_name}_decoder"


def run_decoder_bench(format_name, simulator, build_root):
    """Run ``sim/decoder_bench.py`` for one format on one simulator in ``build_root/<sim>/<top>``."""
    if format_name not in DECODER_FORMATS:
        raise ValueError(f"Format must be one of {', '.join(DECODER_FORMATS)}, not {format_name!r}")
    top = decoder_top(format_name)
    build_dir = Path(build_root) / simulator / top
    source = write_verilog(Decoder(format=DECODER_FORMATS[format_name]), top, build_dir)
    return run_bench(
        simulator=simulator,
        sources=[source],
        top=top,
        test_module="fgmp.sim.decoder_bench",
        build_dir=build_dir,
        extra_env={"FGMP_FORMAT": format_name},
    )
