"""Tables (terminal and Markdown), JSON and the stacked-bar plot of the flow's results."""

import json
import re
from pathlib import Path

from .groups import GROUP_ORDER
from .units import DOT_VARIANTS

__all__ = ["PRIMARY", "table", "markdown", "text", "area_tables", "breakdown_table", "timing_table",
           "compare_tables", "write_json", "plot_breakdown", "plot_depth", "targets_status", "TARGETS"]

# The one figure per target that the comparisons use.
PRIMARY = {"generic": "cells", "ice40": "LUT4", "ecp5": "LUT4 eq.", "ecp5-nodsp": "LUT4 eq."}
TARGET_TITLES = {"generic": "generic", "ice40": "iCE40", "ecp5": "ECP5", "ecp5-nodsp": "ECP5 no DSP"}


def table(header, rows):
    return {"header": list(header), "rows": [[_cell(v) for v in row] for row in rows]}


def _cell(value):
    if isinstance(value, float):
        return f"{value:.2f}"
    return "" if value is None else str(value)


def markdown(t):
    lines = ["| " + " | ".join(t["header"]) + " |", "|" + "---|" * len(t["header"])]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in t["rows"]]
    return "\n".join(lines)


def text(t):
    widths = [max(len(str(x)) for x in column) for column in zip(t["header"], *t["rows"])]
    fmt = lambda row: "  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(row, widths)))
    return "\n".join([fmt(t["header"]), fmt(["-" * w for w in widths]), *map(fmt, t["rows"])])


def area_tables(results):
    """One table per target: each result's summary figures (and transistors on the generic target)."""
    tables = {}
    for target in dict.fromkeys(r.target for r in results):
        rows = [r for r in results if r.target == target]
        keys = list(rows[0].summary)
        extra = ["CMOS transistors"] if target == "generic" else []
        tables[target] = table(["unit", *keys, *extra, "seconds"],
                               [[r.unit, *r.summary.values(), *([r.transistor_estimate] if extra else []), round(r.seconds)]
                                for r in rows])
    return tables


def breakdown_table(result):
    """Per-group figures of one result, with each group's share of the grouped total."""
    from .area import summarize

    key = PRIMARY[result.target]
    summaries = {g: summarize(result.target, c) for g, c in result.groups.items()}
    total = sum(s[key] for s in summaries.values()) or 1
    keys = list(result.summary)
    rows = [[g, *s.values(), f"{100 * s[key] / total:.1f} %"]
            for g, s in sorted(summaries.items(), key=lambda item: -item[1][key])]
    return table(["group", *keys, f"share of {key}"], rows)


def compare_tables(results, lanes):
    """Every dot-unit variant per lane count and target (primary figure and ratio to FGMP), and the
    activation unit's cost relative to the FGMP dot unit it feeds."""
    targets = list(dict.fromkeys(r.target for r in results))
    by = {(r.unit.split(" dot ")[0] if " dot " in r.unit else "actq", _lanes(r), r.target): r for r in results}
    header = ["L", "unit"]
    for target in targets:
        header += [f"{TARGET_TITLES[target]} {PRIMARY[target]}", "vs FGMP"]
        if target == "generic":
            header.insert(-1, "CMOS transistors")
        if target == "ecp5":
            header.insert(-1, "MULT18X18D")
        if target == "ice40":
            header.insert(-1, "SB_MAC16")
    rows = []
    for count in lanes:
        for variant in DOT_VARIANTS:
            if not any(by.get((variant, count, target)) for target in targets):
                continue
            row = [count, variant]
            for target in targets:
                r, base = by.get((variant, count, target)), by.get(("FGMP", count, target))
                value = r.summary[PRIMARY[target]] if r else None
                row.append(value)
                extra = {"generic": "transistors", "ecp5": "MULT18X18D", "ice40": "SB_MAC16"}.get(target)
                if extra:
                    row.append(None if r is None else r.transistor_estimate if extra == "transistors" else r.summary[extra])
                row.append(value / base.summary[PRIMARY[target]] if r and base else None)
            rows.append(row)
    variants = table(header, rows)

    overhead_rows = []
    for target in targets:
        actq = by.get(("actq", None, target))
        if actq is None:
            continue
        key = PRIMARY[target]
        # The FPGA scripts may fold the pipeline register behind the table's read port into it and map
        # the table to block RAM in the flat run; the breakdown's table module, cut off from that
        # register, is logic instead. Then the flat figure is all logic and the table is its RAMs.
        block_rams = actq.summary.get("BRAM", 0)
        if block_rams:
            table_cost, logic = f"{block_rams} block RAMs", actq.summary[key]
        else:
            table_cost = actq.group_summaries().get("sensitivity table", {}).get(key, 0)
            logic = actq.summary[key] - table_cost
        for count in lanes:
            dot = by.get(("FGMP", count, target))
            if dot is None:
                continue
            base = dot.summary[key]
            overhead_rows.append([TARGET_TITLES[target], key, count, base, actq.summary[key], table_cost, logic,
                                  f"{100 * actq.summary[key] / base:.0f} %", f"{100 * logic / base:.0f} %"])
    overhead = table(["target", "figure", "L", "FGMP dot unit", "activation unit", "of which table",
                      "logic without table", "actq / dot", "actq logic / dot"], overhead_rows)
    return variants, overhead


def _lanes(result):
    for part in result.unit.split():
        if part.startswith("L="):
            return int(part[2:])
    return None


def timing_table(results):
    """One row per point: Fmax against its target, utilisation, the unit's own LUT4 and DSPs, latency,
    throughput per area (GMAC/s per 1,000 LUT4 of the unit alone) and the critical path."""
    rows = []
    for r in results:
        if r.fmax_mhz is None:
            if ": it needs " in r.error:  # the flow's capacity check, before place and route
                reason = "needs " + r.error.split(": it needs ")[-1]
            else:  # nextpnr's own words, on the line after the flow's
                lines = r.error.splitlines()
                reason = "nextpnr: " + (lines[1] if len(lines) > 1 else lines[0]).removeprefix("ERROR: ")
            rows.append([r.unit, r.part, _stages(r), r.latency, "does not fit", "", "", reason,
                         *[""] * 9])
            continue
        used = lambda k: f"{r.utilization[k][0]} / {r.utilization[k][1]}" if k in r.utilization else ""
        logic = "LUT4" if "LUT4" in r.utilization else "LC"
        dsp = "MULT18X18D" if "LUT4" in r.utilization else "SB_MAC16"
        gmacs = None if r.gmacs is None else round(r.gmacs, 2)
        per_klut = None if r.gmacs_per_klut is None else f"{r.gmacs_per_klut:.3f}"
        notes = [*([r.router] if r.router != "router1" else []), *([f"seed {r.seed}"] if r.seed != 1 else [])]
        part = f"{r.part} ({', '.join(notes)})" if notes else r.part
        rows.append([r.unit, part, _stages(r), r.latency, round(r.fmax_mhz, 1), r.target_mhz,
                     "yes" if r.met else "no", used(logic), used("FF"), used(dsp), r.unit_lut4, r.unit_dsp or 0,
                     gmacs, per_klut, r.critical_path, _harness(r), round(r.seconds)])
    return table(["unit", "part", "P", "latency", "Fmax MHz", "target MHz", "met", "logic used", "FF used",
                  "DSP used", "unit LUT4", "unit DSP", "GMAC/s", "GMAC/s per kLUT4", "critical path",
                  "harness adds", "seconds"], rows)


def _stages(r):
    p = r.pipeline_stages
    return f"Q={p[0]} P={p[1]}" if isinstance(p, (list, tuple)) else p


def _series(r):
    """(series name, depth) of a timing point for the per-depth plot: the unit without its depth, on its part."""
    label = re.sub(r" P=\d+$", "", r.unit)
    depth = r.pipeline_stages
    if isinstance(depth, (list, tuple)):  # the engine: its dot-unit depth, at a fixed quantizer depth
        label = re.sub(r" Q=\d+ P=\d+$", f" Q={depth[0]}", r.unit)
        depth = depth[1]
    return f"{label} ({r.part})", depth


def plot_depth(results, path, *, title="Fmax and area against pipeline depth"):
    """Fmax (top) and the unit's LUT4 (bottom) against pipeline depth, one line per unit and part, for
    the placed points (decoders, without a depth, are left out); PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {}
    for r in results:
        if r.fmax_mhz is None or r.pipeline_stages is None:
            continue
        name, depth = _series(r)
        series.setdefault(name, []).append((depth, r.fmax_mhz, r.unit_lut4))
    figure, (fmax_axis, area_axis) = plt.subplots(2, 1, figsize=(8, 7.5), sharex=True)
    for index, (name, points) in enumerate(series.items()):
        points.sort()
        depths = [p[0] for p in points]
        style = {"marker": "o", "label": name, "color": plt.get_cmap("tab10").colors[index % 10]}
        fmax_axis.plot(depths, [p[1] for p in points], **style)
        area_axis.plot(depths, [p[2] for p in points], **style)
    fmax_axis.set_ylabel("Fmax (MHz)")
    area_axis.set_ylabel("unit LUT4 (ECP5: + 2 per CCU2C)")
    area_axis.set_xlabel("pipeline depth P (register cuts)")
    for axis in (fmax_axis, area_axis):
        axis.grid(alpha=0.3)
    fmax_axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


# Issue 16's targets: (what, which points, MHz). Measured after place and route, not test assertions.
TARGETS = [
    ("FGMP dot unit, 4 lanes, ECP5-85F", lambda r: r.unit.startswith("FGMP dot L=4 ") and r.part.startswith("ecp5"),
     150.0),
    ("activation unit, B = 16, ECP5-85F", lambda r: r.kind == "actq" and r.part.startswith("ecp5"), 100.0),
    ("engine, 4 lanes, ECP5-85F", lambda r: r.kind == "engine" and " L=4 " in r.unit and r.part.startswith("ecp5"),
     100.0),
    ("FP4-only dot unit, 1 lane, iCE40 UP5K", lambda r: r.unit.startswith("FP4-only dot L=1 ") and r.part == "ice40-up5k",
     24.0),
]


def targets_status(results, targets=TARGETS):
    """One line per target: met / not met / not measured, with the best measured point, its depth and
    critical path."""
    lines = []
    for what, chosen, mhz in targets:
        points = [r for r in results if chosen(r) and r.fmax_mhz is not None]
        if not points:
            lines.append(f"- {what}, ≥ {mhz:g} MHz: **not measured** in this run.")
            continue
        best = max(points, key=lambda r: r.fmax_mhz)
        verdict = "met" if best.fmax_mhz >= mhz else "not met"
        lines.append(f"- {what}, ≥ {mhz:g} MHz: **{verdict}**; best {best.fmax_mhz:.1f} MHz at "
                     f"{_stages(best) if isinstance(best.pipeline_stages, (list, tuple)) else f'P = {best.pipeline_stages}'}"
                     f" ({best.part}, constrained at {best.target_mhz:g} MHz), critical path {best.critical_path or '?'}.")
    return lines


def _harness(r):
    cells = r.harness_cells
    logic = cells.get("LUT4 eq.", cells.get("LUT4", 0))
    return f"{logic} LUT4, {cells.get('FF', 0)} FF"


def write_json(path, payload):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


def plot_breakdown(results, path, *, title):
    """Stacked bars, one per result, one segment per group of its primary figure; PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = list(dict.fromkeys(r.target for r in results))
    present = {g for r in results for g in r.groups}
    groups = [g for g in GROUP_ORDER if g in present] + sorted(present - set(GROUP_ORDER))
    figure, axes = plt.subplots(1, len(targets), figsize=(5.5 * len(targets), 4.8), squeeze=False)
    colours = plt.get_cmap("tab20").colors
    for axis, target in zip(axes[0], targets):
        rows = [r for r in results if r.target == target]
        labels = [r.unit.replace(" dot", "\n").replace(" P=", " P=") for r in rows]
        bottom = [0.0] * len(rows)
        key = PRIMARY[target]
        for index, group in enumerate(groups):
            values = [r.group_summaries().get(group, {}).get(key, 0) for r in rows]
            if any(values):
                axis.bar(labels, values, bottom=bottom, label=group, color=colours[index % len(colours)])
                bottom = [b + v for b, v in zip(bottom, values)]
        axis.set_title(f"{TARGET_TITLES[target]}: {key}")
        axis.tick_params(axis="x", labelsize=7)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
