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


def _dot_params(args):
    return {"lanes": args.lanes, "block_size": args.block_size, "max_blocks": args.max_blocks,
            "pipeline_stages": args.pipeline_stages, "formats": tuple(args.formats)}


def _generate_dot(args):
    from fgmp.hw import DotUnit
    from fgmp.hw.verilog import lint, write_verilog
    from fgmp.sim.dot import dot_top

    try:
        unit = DotUnit(**_dot_params(args))
    except (ValueError, TypeError) as error:  # the generator's own parameter checks
        print(f"fgmp: error: {error}", file=sys.stderr)
        return 2
    top = args.name or dot_top(unit)
    path = write_verilog(unit, top, args.out)
    if args.lint:
        lint(path, top)
    print(f"wrote {path}" + (" (verilator -Wall lint clean)" if args.lint else ""))
    print(f"  {unit.lanes} lanes x {unit.block_size} elements, formats {'+'.join(unit.formats)}, "
          f"accumulator {unit.accumulator_width} bits (exact up to {unit.max_blocks} blocks), "
          f"latency {unit.latency} cycles, one block pair per cycle")
    return 0


def _generate_actq(args):
    from fgmp.hw import ActivationQuantizer, Engine
    from fgmp.hw.verilog import lint, write_verilog

    try:
        if args.unit == "engine":
            unit = Engine(lanes=args.lanes, block_size=args.block_size, max_channels=args.max_channels,
                          quantizer_stages=args.pipeline_stages, dot_stages=args.dot_stages)
            top = args.name or f"fgmp_engine_l{args.lanes}"
        else:
            unit = ActivationQuantizer(block_size=args.block_size, max_channels=args.max_channels,
                                       pipeline_stages=args.pipeline_stages)
            top = args.name or "fgmp_actq"
    except (ValueError, TypeError) as error:  # the generator's own parameter checks
        print(f"fgmp: error: {error}", file=sys.stderr)
        return 2
    path = write_verilog(unit, top, args.out)
    if args.lint:
        lint(path, top)
    print(f"wrote {path}" + (" (verilator -Wall lint clean)" if args.lint else ""))
    print(f"  blocks of {unit.block_size} BF16 values, sensitivity table for {unit.max_channels} channels, "
          f"latency {unit.latency} cycles, one block per cycle")
    return 0


def _demo_engine(args, out):
    from fgmp.sim.actq import run_engine_bench, run_quantizer_bench

    print("Activation quantization unit and engine (BF16 -> NVFP4/FP8 per block -> dot unit -> FP32)\n")
    print(f"{'simulator':<11}{'bench':<14}{'checked':>9}{'mismatches':>12}{'seconds':>9}")
    bad = 0
    for simulator in args.simulators:
        for name, run, params in (
                ("quantizer", run_quantizer_bench, {"max_channels": 64, "pipeline_stages": 1}),
                ("engine", run_engine_bench, {"lanes": 4, "max_channels": 64})):
            start = time.perf_counter()
            report = run(params, simulator, out / "sim").report
            bad += report["mismatches"]
            print(f"{simulator:<11}{name:<14}{report['checked']:>9}{report['mismatches']:>12}"
                  f"{time.perf_counter() - start:>9.1f}")
    return bad


def _demo_dot(args, out):
    from fgmp.hw import DotUnit
    from fgmp.hw.verilog import lint, write_verilog
    from fgmp.sim.dot import dot_top, run_dot_bench

    params = {"lanes": 4, "pipeline_stages": 1}
    unit = DotUnit(**params)
    top = dot_top(unit)
    lint(write_verilog(unit, top, out / "verilog"), top)
    print(f"FGMP dot unit {top}: {unit.lanes} lanes x {unit.block_size}, NVFP4/FP8 per block, exact "
          f"{unit.accumulator_width}-bit accumulation, latency {unit.latency}; lint clean\n")
    print(f"{'simulator':<11}{'suite':<12}{'vectors':>9}{'results':>9}{'mismatches':>12}{'cycles':>8}"
          f"{'pairs/s':>10}{'seconds':>9}")
    bad = 0
    for simulator in args.simulators:
        start = time.perf_counter()
        result = run_dot_bench(params, simulator, out / "sim", count=100)
        seconds = time.perf_counter() - start
        for report in result.reports:
            vectors = report.get("element_code_pairs") or report["block_pairs"]
            bad += report["mismatches"]
            print(f"{simulator:<11}{report['suite']:<12}{vectors:>9}{report['checked']:>9}"
                  f"{report['mismatches']:>12}{report['cycles']:>8}{report['block_pairs_per_second']:>10.0f}"
                  f"{seconds:>9.1f}")
    print("\nvectors: element code pairs (exhaustive, all four pairings) or block pairs (random reductions "
          "with idle cycles and back-pressure); results: FP32 lane results compared bit for bit")
    return bad


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
    bad += _demo_dot(args, out)
    print()
    bad += _demo_engine(args, out)
    print()
    _demo_quantizer()
    print()
    bad += _demo_e2e(args, out)
    return 0 if bad == 0 else 1


def _demo_e2e(args, out):
    print("End to end: the embedded LM quantized by the FGMP policy (30 % FP8), one MLP layer's real "
          "activations through the generated engine\n")
    e2e_args = build_parser().parse_args(["e2e", "--quiet", "--simulator", args.simulators[-1],
                                          "--out", str(out / "e2e")])
    return 0 if e2e_args.func(e2e_args) == 0 else 1


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

    dot = units.add_parser("dot", help="the FGMP dot-product unit (or its FP8-only / FP4-only variant)")
    dot.add_argument("--lanes", type=int, default=4, help="output channels computed in parallel (default 4)")
    dot.add_argument("--block-size", type=int, default=16, help="elements per block (default 16)")
    dot.add_argument("--max-blocks", type=int, default=1024,
                     help="longest reduction, in blocks, that stays exact (sets the accumulator width)")
    dot.add_argument("--pipeline-stages", type=int, default=1, help="extra register cuts, 0..3 (default 1)")
    dot.add_argument("--formats", nargs="+", choices=["nvfp4", "fp8"], default=["nvfp4", "fp8"],
                     help="element formats: both for FGMP, one for the single-precision baselines")
    dot.add_argument("--name", help="Verilog module name (default e.g. fgmp_dot_l4)")
    dot.add_argument("--out", type=Path, default=Path("out/verilog"), help="output directory")
    dot.add_argument("--no-lint", dest="lint", action="store_false",
                     help="skip the verilator --lint-only -Wall check")
    dot.set_defaults(func=_generate_dot)

    for name, help_text in (("actq", "the mixed-precision activation quantization unit"),
                             ("engine", "activation quantization unit -> dot unit")):
        unit = units.add_parser(name, help=help_text)
        if name == "engine":
            unit.add_argument("--lanes", type=int, default=4, help="dot-unit lanes (default 4)")
            unit.add_argument("--dot-stages", type=int, default=1, help="dot-unit register cuts, 0..3")
        unit.add_argument("--block-size", type=int, default=16)
        unit.add_argument("--max-channels", type=int, default=4096,
                          help="longest reduction in elements: the sensitivity table's size")
        unit.add_argument("--pipeline-stages", type=int, default=1,
                          help="activation-unit register cuts, 0..3 (default 1)")
        unit.add_argument("--name", help="Verilog module name")
        unit.add_argument("--out", type=Path, default=Path("out/verilog"), help="output directory")
        unit.add_argument("--no-lint", dest="lint", action="store_false")
        unit.set_defaults(func=_generate_actq)

    from fgmp import e2e, quantize
    quantize.add_commands(commands)
    e2e.add_commands(commands)

    demo = commands.add_parser("demo", help="generate, lint and simulate the units; print a report")
    demo.add_argument("--out", type=Path, default=Path("out/demo"))
    demo.add_argument("--simulators", nargs="+", choices=SIMULATORS, default=list(SIMULATORS))
    demo.set_defaults(func=_demo)
    from fgmp.flow.cli import add_commands; add_commands(commands)  # area, timing, constraints, bitstream
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
