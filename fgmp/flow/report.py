"""Tables (terminal and Markdown), JSON and the stacked-bar plot of the flow's results."""

import json
from pathlib import Path

from .groups import GROUP_ORDER
from .units import DOT_VARIANTS

__all__ = ["PRIMARY", "table", "markdown", "text", "area_tables", "breakdown_table", "timing_table",
           "compare_tables", "write_json", "plot_breakdown"]

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
    rows = []
    for r in results:
        if r.fmax_mhz is None:
            if ": it needs " in r.error:  # the flow's capacity check, before place and route
                reason = "needs " + r.error.split(": it needs ")[-1]
            else:  # nextpnr's own words, on the line after the flow's
                lines = r.error.splitlines()
                reason = "nextpnr: " + (lines[1] if len(lines) > 1 else lines[0]).removeprefix("ERROR: ")
            rows.append([r.unit, r.part, r.pipeline_stages, "does not fit", "", "", reason, "", "", "", "", ""])
            continue
        used = lambda k: f"{r.utilization[k][0]} / {r.utilization[k][1]}" if k in r.utilization else ""
        logic = "LUT4" if "LUT4" in r.utilization else "LC"
        dsp = "MULT18X18D" if "LUT4" in r.utilization else "SB_MAC16"
        rows.append([r.unit, r.part, r.pipeline_stages, round(r.fmax_mhz, 1), r.target_mhz,
                     "yes" if r.met else "no", used(logic), used("FF"), used(dsp), r.critical_path,
                     _harness(r), round(r.seconds)])
    return table(["unit", "part", "P", "Fmax MHz", "target MHz", "met", "logic used", "FF used", "DSP used",
                  "critical path", "harness adds", "seconds"], rows)


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
