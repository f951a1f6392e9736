"""The ``fgmp`` command line: ``fgmp generate ...`` writes Verilog, ``fgmp demo`` runs the main job."""

import argparse
import sys
import time
from pathlib import Path

__all__ = ["main"]


def _generate_decoders(args):
    from fgmp.hw import Decoder
    from fgmp.hw.verilog import lint, write_verilog
    from fgmp.sim.decoders import DECODER_FORMATS, decoder_top

    for name in args.format:
        top = decoder_top(name)
        path = write_verilog(Decoder(format=DECODER_FORMATS[name]), top, args.out)
        if args.lint:
            lint(path, top)
        print(f"wrote {path}" + (" (verilator -Wall lint clean)" if args.lint else ""))
    return 0


def _demo(args):
    from fgmp.sim.decoders import DECODER_FORMATS, run_decoder_bench
    from fgmp.hw.verilog import lint, write_verilog
    from fgmp.hw import Decoder

    out = Path(args.out)
    print("FGMP demo: format decoders, generated -> linted -> simulated exhaustively vs the golden model\n")
    rows = []
    for name in DECODER_FORMATS:
        top = f"{name}_decoder"
        path = write_verilog(Decoder(format=DECODER_FORMATS[name]), top, out / "verilog")
        lint(path, top)
        for simulator in args.simulators:
            start = time.perf_counter()
            result = run_decoder_bench(name, simulator, out / "sim")
            rows.append((top, simulator, result.report["checked"], result.report["mismatches"],
                         time.perf_counter() - start))
    print(f"{'unit':<16}{'simulator':<12}{'codes':>8}{'mismatches':>12}{'seconds':>10}")
    for top, simulator, checked, mismatches, seconds in rows:
        print(f"{top:<16}{simulator:<12}{checked:>8}{mismatches:>12}{seconds:>10.1f}")
    total = sum(r[2] for r in rows)
    bad = sum(r[3] for r in rows)
    print(f"\n{total} codes checked on {len(args.simulators)} simulator(s), {bad} mismatches; "
          f"Verilog in {out / 'verilog'}")
    print()
    _demo_quantizer()
    return 0 if bad == 0 else 1


def _demo_quantizer():
    import torch

    from fgmp import golden

    torch.manual_seed(0)
    weights = torch.randn(64, 256) * torch.rand(64, 1) * 4
    fp8 = torch.rand(64, 256 // 16) < 0.3
    bt = golden.quantize_blocks(weights, fp8)
    error = (golden.dequantize(bt) - weights).pow(2).mean().sqrt() / weights.pow(2).mean().sqrt()
    bits = golden.block_bits(bt.precision) / weights.numel()
    print(f"Golden block quantizer on a 64x256 tensor, {bt.fp8_fraction:.0%} FP8 / "
          f"{1 - bt.fp8_fraction:.0%} NVFP4 blocks: relative RMS error {error:.4f}, "
          f"{bits:.3f} bits per element (all-FP8: {golden.block_bits(torch.ones(1024, dtype=torch.bool)) / 16384:.3f}, "
          f"all-NVFP4: {golden.block_bits(torch.zeros(1024, dtype=torch.bool)) / 16384:.3f})")


def build_parser():
    from fgmp.sim.decoders import DECODER_FORMATS
    from fgmp.sim.runner import SIMULATORS

    parser = argparse.ArgumentParser(prog="fgmp", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="write the Verilog of a unit")
    units = generate.add_subparsers(dest="unit", required=True)
    decoders = units.add_parser("decoders", help="the E2M1 / E4M3 / UE4M3 decoders, one module per file")
    decoders.add_argument("--format", nargs="+", choices=list(DECODER_FORMATS), default=list(DECODER_FORMATS))
    decoders.add_argument("--out", type=Path, default=Path("out/verilog"), help="output directory")
    decoders.add_argument("--no-lint", dest="lint", action="store_false",
                          help="skip the verilator --lint-only -Wall check")
    decoders.set_defaults(func=_generate_decoders)

    demo = commands.add_parser("demo", help="generate, lint and simulate the units; print a report")
    demo.add_argument("--out", type=Path, default=Path("out/demo"))
    demo.add_argument("--simulators", nargs="+", choices=SIMULATORS, default=list(SIMULATORS))
    demo.set_defaults(func=_demo)
    return parser


def main(argv=None):
    from fgmp.hw.verilog import LintError
    from fgmp.toolchain import ToolchainError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (LintError, ToolchainError) as error:
        print(f"fgmp: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
