"""``fgmp area``, ``fgmp timing``, ``fgmp constraints`` and ``fgmp bitstream``: the synthesis flow's commands.

``add_commands(commands)`` adds them to the ``fgmp`` parser's subparsers."""

import sys
from pathlib import Path

from fgmp.hw.dot import DATAPATHS, FLOW_CONTROLS
from fgmp.toolchain import ToolchainError

from .timing import ROUTERS
from .tools import FlowError

__all__ = ["add_commands"]

_UNITS = ("dot", "actq", "engine", "decoder")
# Command-line option -> (generator parameter, per unit kind); --pipeline-stages is the engine's
# activation-unit depth and --dot-stages its dot-unit depth.
_OPTIONS = {
    "block_size": {"dot": "block_size", "actq": "block_size", "engine": "block_size"},
    "max_blocks": {"dot": "max_blocks"},
    "max_channels": {"actq": "max_channels", "engine": "max_channels"},
    "dot_stages": {"engine": "dot_stages"},
    "formats": {"dot": "formats"},
    "datapath": {"dot": "datapath"},
    "flow_control": {"dot": "flow_control", "actq": "flow_control", "engine": "flow_control"},
    "format": {"decoder": "format"},
}


def _error(message):
    print(f"fgmp: error: {message}", file=sys.stderr)
    return 2


def _configs(args):
    """(kind, params) for every combination of the swept --lanes and --pipeline-stages values."""
    kind = args.unit
    fixed = {}
    for option, per_kind in _OPTIONS.items():
        value = getattr(args, option)
        if value is None:
            continue
        if kind not in per_kind:
            raise ValueError(f"--{option.replace('_', '-')} does not apply to unit {kind!r}")
        fixed[per_kind[kind]] = tuple(value) if option == "formats" else value
    if args.lanes is not None and kind not in ("dot", "engine"):
        raise ValueError(f"--lanes does not apply to unit {kind!r}")
    if args.pipeline_stages is not None and kind == "decoder":
        raise ValueError("--pipeline-stages does not apply to unit 'decoder'")
    stages_param = "quantizer_stages" if kind == "engine" else "pipeline_stages"
    configs = []
    for lanes in args.lanes or [None]:
        for stages in args.pipeline_stages or [None]:
            params = dict(fixed)
            if lanes is not None:
                params["lanes"] = lanes
            if stages is not None:
                params[stages_param] = stages
            configs.append((kind, params))
    return configs


def _add_unit_options(parser):
    parser.add_argument("--lanes", type=int, nargs="+", help="lane counts (dot, engine; several values sweep)")
    parser.add_argument("--pipeline-stages", type=int, nargs="+",
                        help="register cuts, 0 to the unit's MAX_PIPELINE_STAGES (several values sweep; the engine's "
                             "activation unit)")
    parser.add_argument("--block-size", type=int, help="elements per block (default 16)")
    parser.add_argument("--max-channels", type=int, help="activation unit / engine: sensitivity table size")
    parser.add_argument("--max-blocks", type=int, help="dot unit: longest exact reduction (default 1024)")
    parser.add_argument("--dot-stages", type=int, help="engine: the dot unit's register cuts")
    parser.add_argument("--formats", nargs="+", choices=["nvfp4", "fp8"], help="dot unit: element formats")
    parser.add_argument("--datapath", choices=DATAPATHS, help="FGMP dot unit: shared or split (docs/hardware.md)")
    parser.add_argument("--flow-control", choices=FLOW_CONTROLS,
                        help="dot unit, activation unit, engine: stall (global clock enable) or credit (result "
                             "FIFO; docs/hardware.md)")
    parser.add_argument("--format", choices=["e2m1", "e4m3", "ue4m3"], help="decoder: which one")


def _print_tables(tables):
    from .report import text

    for title, t in tables:
        print(f"\n{title}\n{text(t)}")


def _write(out, name, payload, tables):
    from .report import markdown, write_json

    write_json(Path(out) / f"{name}.json", payload)
    body = "\n\n".join(f"**{title}**\n\n{markdown(t)}" for title, t in tables)
    (Path(out) / f"{name}.md").write_text(body + "\n")
    print(f"\nwrote {Path(out) / (name + '.json')}, {Path(out) / (name + '.md')}")


def _area(args):
    from .area import check_targets
    from .report import area_tables, breakdown_table, compare_tables, plot_breakdown, TARGET_TITLES
    from .sweep import area_sweep, compare_configs

    targets = check_targets(args.targets)
    if args.unit == "compare":
        lanes = args.lanes or [1, 4, 8]
        stages = args.pipeline_stages or [1]
        if len(stages) != 1:
            raise ValueError("compare takes one --pipeline-stages value")
        configs = compare_configs(lanes, block_size=args.block_size or 16, max_blocks=args.max_blocks or 1024,
                                  pipeline_stages=stages[0], max_channels=args.max_channels or 4096,
                                  actq=not args.no_actq)
    else:
        configs = _configs(args)
        lanes = None
    progress = lambda r: print(f"  {r.unit} on {r.target}: {r.summary} ({r.seconds:.0f} s)", flush=True)
    results = area_sweep(configs, targets, args.out, reuse=args.reuse, jobs=args.jobs, progress=progress)
    tables = [(f"Area on {TARGET_TITLES[t]}", table) for t, table in area_tables(results).items()]
    if lanes is not None:
        variants, overhead = compare_tables(results, lanes)
        tables += [("FGMP (shared, split) vs FP8-only vs FP4-only (primary figure per target, ratio to FGMP)",
                    variants)]
        if overhead["rows"]:
            tables += [("Activation unit relative to the FGMP dot unit it feeds", overhead)]
    for r in results:
        tables.append((f"Breakdown: {r.unit} on {TARGET_TITLES[r.target]}", breakdown_table(r)))
    _print_tables(tables)
    _write(args.out, "area", [r.as_dict() for r in results], tables)
    if lanes is not None:
        dots = [r for r in results if " dot " in r.unit]
        path = plot_breakdown(dots, Path(args.out) / "area.png", title="Dot unit area by submodule")
        print(f"wrote {path}")
    return 0


def _timing(args):
    from .constraints import check_frequency
    from .report import plot_depth, timing_table
    from .sweep import timing_sweep
    from .timing import check_parts

    parts = check_parts(args.parts)
    freq = check_frequency(args.freq)
    configs = _configs(args)
    progress = lambda r: print(f"  {r.unit} on {r.part}{f' (seed {r.seed})' if r.seed != 1 else ''}: "
                               + (f"{r.fmax_mhz:.1f} MHz (target {r.target_mhz:g})" if r.fmax_mhz else "does not fit"),
                               flush=True)
    results = timing_sweep(configs, parts, args.out, freq=freq, reuse=args.reuse, jobs=args.jobs, router=args.router,
                           seeds=args.seeds, progress=progress)
    tables = [("Fmax and utilisation after place and route (unit + timing harness)", timing_table(results))]
    _print_tables(tables)
    _write(args.out, "timing", [r.as_dict() for r in results], tables)
    if len({r.pipeline_stages for r in results if r.fmax_mhz is not None and r.pipeline_stages is not None}) > 1:
        print(f"wrote {plot_depth(results, Path(args.out) / 'timing.png')}")
    misfits = [r.error for r in results if r.fmax_mhz is None]
    return _error(misfits[0]) if misfits else 0


def _constraints(args):
    from fgmp.hw.verilog import write_verilog

    from .constraints import check_frequency, check_sdc, unit_constraints, verilog_ports
    from .units import make_unit

    freq = check_frequency(args.freq)
    for kind, params in _configs(args):
        unit = make_unit(kind, **params)
        verilog = write_verilog(unit.component, unit.top, args.out)
        ports = verilog_ports(verilog, unit.top)
        for flavour in ("sdc", "xdc"):
            text = unit_constraints(ports, unit.top, freq, flavour)
            check_sdc(text, ports)
            path = Path(args.out) / f"{unit.top}.{flavour}"
            path.write_text(text)
            print(f"wrote {path} (clock clk, {1000 / freq:.3f} ns, {len(ports) - 1} ports with I/O delays)")
    return 0


def _bitstream(args):
    from fgmp.hw.dot import MAX_PIPELINE_STAGES

    from .board import BOARDS, build_bitstream

    board = BOARDS[args.board]
    formats = tuple(args.formats) if args.formats else board.formats
    stages = MAX_PIPELINE_STAGES if args.pipeline_stages is None else args.pipeline_stages
    params = {"lanes": args.lanes, "block_size": args.block_size, "max_blocks": args.max_blocks,
              "pipeline_stages": stages, "formats": formats, "datapath": args.datapath}
    result = build_bitstream(args.board, params, args.out, freq_mhz=args.freq, reductions=args.reductions)
    clock = result.pll or f"the {board.oscillator_mhz:g} MHz oscillator"
    print(f"wrote {result.path} ({result.bytes} bytes) in {result.seconds:.0f} s: self-test of "
          f"{result.block_pairs} block pairs at {result.freq_mhz:.6g} MHz ({clock}); {result.fmax_log}")
    return 0


def _guarded(function):
    """Parameter, tool and fit errors become `fgmp: error: ...` and exit status 2 (DoesNotFit is a FlowError)."""
    def run(args):
        try:
            if getattr(args, "jobs", 1) < 1:
                raise ValueError(f"Jobs must be at least 1, not {args.jobs}")
            args.out = args.out.resolve()  # the tools run in directories of their own below it
            return function(args)
        except (ValueError, TypeError, FlowError, ToolchainError) as error:
            return _error(error)
    return run


def add_commands(commands):
    """Add area, timing, constraints and bitstream to the ``fgmp`` subparsers ``commands``."""
    from .area import TARGETS
    from .board import BOARDS
    from .timing import PARTS

    area = commands.add_parser("area", help="Yosys area of a unit (generic, iCE40, ECP5), or the FGMP comparison")
    area.add_argument("unit", choices=[*_UNITS, "compare"],
                      help="a unit, or 'compare': the FGMP (shared, split), FP8-only and FP4-only dot units "
                           "and the activation unit")
    _add_unit_options(area)
    area.add_argument("--targets", nargs="+", default=list(TARGETS), help=f"of {', '.join(TARGETS)} (default all)")
    area.add_argument("--no-actq", action="store_true", help="compare: leave out the activation unit")
    area.add_argument("--out", type=Path, default=Path("out/flow/area"))
    area.add_argument("--reuse", action="store_true", help="reuse results whose Verilog and scripts are unchanged")
    area.add_argument("--jobs", type=int, default=1, help="parallel Yosys runs")
    area.set_defaults(func=_guarded(_area))

    timing = commands.add_parser("timing", help="nextpnr place and route of a unit in a timing harness: Fmax")
    timing.add_argument("unit", choices=_UNITS)
    _add_unit_options(timing)
    timing.add_argument("--parts", nargs="+", default=["ecp5-85f"],
                        help=f"of {', '.join(PARTS)} (ecp5-85f-nodsp: synth_ecp5 -nodsp, multipliers in logic)")
    timing.add_argument("--freq", type=float,
                        help="target clock in MHz (default: the unit's target on the part, 150 MHz for the dot unit "
                             "and 100 for the activation unit and the engine on the ECP5, 24 for the dot unit on the "
                             "iCE40; else the part's constraint file)")
    timing.add_argument("--out", type=Path, default=Path("out/flow/timing"))
    timing.add_argument("--reuse", action="store_true")
    timing.add_argument("--jobs", type=int, default=1)
    timing.add_argument("--router", choices=ROUTERS, default="router1",
                        help="nextpnr's router (default router1; router2 routes the largest units far faster)")
    timing.add_argument("--seeds", type=int, nargs="+", default=[1],
                        help="nextpnr's placement seeds (default 1; several place each point once per seed, to tell "
                             "a design change from placement noise)")
    timing.set_defaults(func=_guarded(_timing))

    constraints = commands.add_parser("constraints", help="SDC and XDC for a generated top")
    constraints.add_argument("unit", choices=_UNITS)
    _add_unit_options(constraints)
    constraints.add_argument("--freq", type=float, default=100.0, help="clock in MHz (default 100)")
    constraints.add_argument("--out", type=Path, default=Path("out/constraints"))
    constraints.set_defaults(func=_guarded(_constraints))

    bitstream = commands.add_parser("bitstream", help="a self-testing dot unit built to a board bitstream")
    bitstream.add_argument("--board", choices=list(BOARDS), default="ulx3s-85f")
    bitstream.add_argument("--lanes", type=int, default=1)
    bitstream.add_argument("--block-size", type=int, default=16)
    bitstream.add_argument("--max-blocks", type=int, default=1024)
    bitstream.add_argument("--pipeline-stages", type=int, help="register cuts (default: the deepest pipeline)")
    bitstream.add_argument("--formats", nargs="+", choices=["nvfp4", "fp8"],
                           help="default: nvfp4 fp8 on the ULX3S, nvfp4 (FP4-only, what fits the UP5K) on the iCEBreaker")
    bitstream.add_argument("--freq", type=float,
                           help="clock in MHz (default: the board's oscillator, 25 / 12 MHz; otherwise from its PLL)")
    bitstream.add_argument("--datapath", choices=DATAPATHS, default="shared")
    bitstream.add_argument("--reductions", type=int, default=4, help="reductions in the self-test ROM")
    bitstream.add_argument("--out", type=Path, default=Path("out/flow/bitstream"))
    bitstream.set_defaults(func=_guarded(_bitstream))
