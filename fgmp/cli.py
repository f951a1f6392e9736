"""The ``fgmp`` command line: ``fgmp generate ...`` writes Verilog, ``fgmp demo`` runs the main job."""

import argparse
import sys
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
            "pipeline_stages": args.pipeline_stages, "formats": tuple(args.formats), "datapath": args.datapath,
            "flow_control": args.flow_control}


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
    print(f"  {unit.lanes} lanes x {unit.block_size} elements, formats {'+'.join(unit.formats)}, {unit.datapath} "
          f"datapath, {unit.flow_control} flow control"
          + (f" ({unit.result_entries} result entries)" if unit.result_entries else "") + ", "
          f"accumulator {unit.accumulator_width} bits (exact up to {unit.max_blocks} blocks), "
          f"latency {unit.latency} cycles, one block pair per cycle")
    return 0


def _generate_actq(args):
    from fgmp.hw import ActivationQuantizer, Engine
    from fgmp.hw.verilog import lint, write_verilog

    try:
        if args.unit == "engine":
            unit = Engine(lanes=args.lanes, block_size=args.block_size, max_channels=args.max_channels,
                          quantizer_stages=args.pipeline_stages, dot_stages=args.dot_stages,
                          flow_control=args.flow_control)
            top = args.name or f"fgmp_engine_l{args.lanes}"
        else:
            unit = ActivationQuantizer(block_size=args.block_size, max_channels=args.max_channels,
                                       pipeline_stages=args.pipeline_stages, flow_control=args.flow_control)
            top = args.name or "fgmp_actq"
    except (ValueError, TypeError) as error:  # the generator's own parameter checks
        print(f"fgmp: error: {error}", file=sys.stderr)
        return 2
    path = write_verilog(unit, top, args.out)
    if args.lint:
        lint(path, top)
    print(f"wrote {path}" + (" (verilator -Wall lint clean)" if args.lint else ""))
    print(f"  blocks of {unit.block_size} BF16 values, sensitivity table for {unit.max_channels} channels, "
          f"{unit.flow_control} flow control, latency {unit.latency} cycles, one block per cycle")
    return 0


def _tile_params(args):
    return {"lanes": args.lanes, "max_inputs": args.max_inputs, "max_outputs": args.max_outputs,
            "max_tokens": args.max_tokens, "fp8_weight_blocks": args.fp8_weight_blocks,
            "elements_per_cycle": args.elements_per_cycle, "dot_stages": args.dot_stages,
            "datapath": args.datapath, "output_memory": args.output_memory}


def _generate_tile(args):
    from fgmp.hw.tile import Tile
    from fgmp.hw.verilog import lint, write_verilog
    from fgmp.sim.tile import tile_top

    try:
        unit = Tile(**_tile_params(args))
    except (ValueError, TypeError) as error:  # the generator's own parameter checks
        print(f"fgmp: error: {error}", file=sys.stderr)
        return 2
    top = args.name or tile_top(unit)
    path = write_verilog(unit, top, args.out)
    if args.lint:
        lint(path, top)
    print(f"wrote {path}" + (" (verilator -Wall lint clean)" if args.lint else ""))
    bits = unit.memory_bits
    print(f"  {unit.lanes} lanes, layers up to {unit.max_tokens} tokens x {unit.max_outputs} outputs x "
          f"{unit.max_inputs} inputs; activation unit {unit.elements_per_cycle} element(s) per cycle")
    print("  memories: " + ", ".join(f"{name} {value:,} bits" for name, value in bits.items())
          + f"; AXI4-Lite windows: " + ", ".join(f"{r.name} @ {r.base:#x}" for r in unit.regions.values()
                                                   if not r.name[-1].isdigit() or r.name.endswith("0")))
    return 0


def build_parser():
    from fgmp.hw.actq import MAX_PIPELINE_STAGES as ACTQ_MAX_STAGES
    from fgmp.hw.dot import DATAPATHS, FLOW_CONTROLS
    from fgmp.hw.dot import MAX_PIPELINE_STAGES as DOT_MAX_STAGES
    from fgmp.sim.decoders import DECODER_FORMATS

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
    dot.add_argument("--pipeline-stages", type=int, default=1,
                     help=f"register cuts, 0..{DOT_MAX_STAGES}, placed in the order of docs/interfaces.md (default 1)")
    dot.add_argument("--formats", nargs="+", choices=["nvfp4", "fp8"], default=["nvfp4", "fp8"],
                     help="element formats: both for FGMP, one for the single-precision baselines")
    dot.add_argument("--datapath", choices=DATAPATHS, default="shared",
                     help="FGMP units: 'shared' (one FP8-width path) or 'split' (FP4xFP4 pairs on a narrow path "
                          "of their own); docs/hardware.md")
    dot.add_argument("--flow-control", choices=FLOW_CONTROLS, default="stall",
                     help="'stall' (one clock enable holds every register while a result waits) or 'credit' "
                          "(registers run free, results queue in a FIFO of latency + 1 entries; for clock rate)")
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
            unit.add_argument("--dot-stages", type=int, default=1,
                              help=f"dot-unit register cuts, 0..{DOT_MAX_STAGES} (default 1)")
        unit.add_argument("--block-size", type=int, default=16)
        unit.add_argument("--max-channels", type=int, default=4096,
                          help="longest reduction in elements: the sensitivity table's size")
        unit.add_argument("--pipeline-stages", type=int, default=1,
                          help=f"activation-unit register cuts, 0..{ACTQ_MAX_STAGES} (default 1)")
        unit.add_argument("--flow-control", choices=FLOW_CONTROLS, default="stall",
                          help="'stall' (one clock enable holds every register while a result waits) or 'credit' "
                               "(registers run free, results queue in a FIFO of latency + 1 entries; for clock "
                               "rate)" + ("; both units" if name == "engine" else ""))
        unit.add_argument("--name", help="Verilog module name")
        unit.add_argument("--out", type=Path, default=Path("out/verilog"), help="output directory")
        unit.add_argument("--no-lint", dest="lint", action="store_false")
        unit.set_defaults(func=_generate_actq)

    tile = units.add_parser("tile", help="the FGMP tile: memories, sequencer, dot unit, post-processing, narrow "
                            "activation unit, AXI4-Lite host port (docs/interfaces.md)")
    tile.add_argument("--lanes", type=int, default=4, help="dot-unit lanes (default 4)")
    tile.add_argument("--max-inputs", type=int, default=256, help="largest K, a multiple of 16 (default 256)")
    tile.add_argument("--max-outputs", type=int, default=256,
                      help="largest M, a multiple of 16 and of the lanes (default 256)")
    tile.add_argument("--max-tokens", type=int, default=8, help="largest T (default 8)")
    tile.add_argument("--fp8-weight-blocks", type=int,
                      help="FP8 weight blocks each lane's high memory holds (default: all of them)")
    tile.add_argument("--elements-per-cycle", type=int, default=1,
                      help="post-processing and activation-unit width, divides 16 and the lanes (default 1)")
    tile.add_argument("--dot-stages", type=int, default=1,
                      help=f"dot-unit register cuts, 0..{DOT_MAX_STAGES} (default 1)")
    tile.add_argument("--datapath", choices=DATAPATHS, default="shared")
    tile.add_argument("--no-output-memory", dest="output_memory", action="store_false",
                      help="leave out the FP32 output memory (only the next layer's blocks are kept)")
    tile.add_argument("--name", help="Verilog module name (default fgmp_tile_l<lanes>)")
    tile.add_argument("--out", type=Path, default=Path("out/verilog"), help="output directory")
    tile.add_argument("--no-lint", dest="lint", action="store_false")
    tile.set_defaults(func=_generate_tile)

    from fgmp import demo, e2e, quantize
    quantize.add_commands(commands)
    e2e.add_commands(commands)
    demo.add_command(commands)
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
