"""Energy proxy of the FGMP dot unit vs the FP8-only (and FP4-only) unit on one layer of the embedded model,
swept over the FP8 fraction; writes docs/results.md between ``<!-- energy:begin -->`` / ``<!-- energy:end -->``
and docs/img/energy_vs_fp8_fraction.png.

    python bench/energy.py [--fractions 0 0.1 0.3 0.5 0.7 1] [--tokens 4] [--lanes 4] [--threads 1]

Per FP8 fraction f: the FGMP policy's plan at f (weights, and the activation unit's registers), the
layer's real BF16 inputs captured under the f = 0.3 plan, activations quantized as the activation unit
does (golden, bit-exact), streamed through the generated FGMP dot unit on Verilator with toggle
coverage; outputs are checked against golden on the way. Baselines on the same inputs: the FP8-only
unit with every block in FP8 and the FP4-only unit with every block in NVFP4. Method: fgmp/energy.py.
"""

import argparse
import json
import platform
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- energy:begin -->", "<!-- energy:end -->"
PAPER_SAVING = 14  # percent, FGMP vs all-FP8 at 70 % NVFP4 (Hooper et al., 2025)


def _plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fgmp = [r for r in rows if r["unit"] == "FGMP"]
    figure, axes = plt.subplots(figsize=(6, 3.6))
    axes.plot([100 * r["weight_fp8"] for r in fgmp], [r["vs_baseline"] for r in fgmp], "o-", label="FGMP unit")
    for unit, style in (("FP8-only", "--"), ("FP4-only", ":")):
        for r in rows:
            if r["unit"] == unit:
                axes.axhline(r["vs_baseline"], linestyle=style, color="gray", label=f"{unit} unit")
    axes.axhline(1 - PAPER_SAVING / 100, color="tab:red", linewidth=0.8, label="paper: FGMP at 30 % FP8")
    axes.set_xlabel("FP8 weight blocks (%)")
    axes.set_ylabel("energy proxy / FP8-only unit")
    axes.set_title("Dot-unit energy proxy on a real layer")
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def markdown(rows):
    lines = ["| unit | FP8 weight blocks | FP8 activation blocks | energy proxy per block pair | vs FP8-only |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {100 * r['weight_fp8']:.1f} % | {100 * r['activation_fp8']:.1f} % | "
                     f"{r['energy_per_block_pair']:.0f} | {r['vs_baseline']:.3f} |")
    return lines


def breakdown(rows):
    """Per-group energy of each row, as a share of the FP8-only unit's total."""
    reference = next(r for r in rows if r["unit"] == "FP8-only")["energy_per_block_pair"]
    groups = list(dict.fromkeys(g for r in rows for g in r["groups"]))
    lines = ["| group | " + " | ".join(r["label"] for r in rows) + " |", "|---|" + "---|" * len(rows)]
    for group in groups:
        cells = [f"{100 * r['groups'][group]['energy'] / reference:.1f}" if group in r["groups"] else ""
                 for r in rows]
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", default="blocks.0.mlp.up_proj")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.1, 0.3, 0.5, 0.7, 1.0])
    parser.add_argument("--tokens", type=int, default=4)
    parser.add_argument("--lanes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "out/bench/energy")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs/results.md")
    args = parser.parse_args(argv)

    from fgmp.e2e import capture_layer_input
    from fgmp.energy import energy_rows, fgmp_case, measure_layer, uniform_case
    from fgmp.golden.policy import build_plan
    from fgmp.quantize import prepare

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    setup = prepare(None, calib_samples=16, eval_samples=16, progress=False)
    capture_plan = build_plan(setup.calibration, policy="fgmp", fp8_fraction=0.3, clipping=True)
    x = capture_layer_input(setup, capture_plan, args.layer, args.tokens)
    cases = [fgmp_case(f"FGMP, {100 * f:.0f} % FP8 requested", build_plan(setup.calibration, policy="fgmp",
                                                                           fp8_fraction=f, clipping=True),
                       args.layer, x) for f in args.fractions]
    cases += [uniform_case("FP8-only, all FP8", setup.calibration, args.layer, x, "fp8"),
              uniform_case("FP4-only, all NVFP4", setup.calibration, args.layer, x, "nvfp4")]
    rows = energy_rows(measure_layer(cases, lanes=args.lanes, out=args.out))
    for r in rows:
        print(f"  {r['label']:<28} weights {100 * r['weight_fp8']:5.1f} % FP8, activations "
              f"{100 * r['activation_fp8']:5.1f} % FP8: {r['energy_per_block_pair']:9.0f} "
              f"({r['vs_baseline']:.3f} of FP8-only)", flush=True)
    minutes = (time.perf_counter() - start) / 60

    image = args.doc.parent / "img/energy_vs_fp8_fraction.png"
    image.parent.mkdir(parents=True, exist_ok=True)
    _plot(rows, image)
    weights = setup.calibration.layers[args.layer].weight
    section = [BEGIN, "", f"Generated by `python bench/energy.py` (embedded model, layer `{args.layer}` "
               f"{weights.shape[0]} x {weights.shape[1]}, {args.tokens} captured tokens, {args.lanes}-lane "
               f"units at P = 1, N = 1024; {platform.machine()}, this run {minutes:.0f} min). Do not edit by hand.",
               "", *markdown(rows), "",
               "Energy by submodule group, in % of the FP8-only unit's total per block pair:", "",
               *breakdown(rows), "", f"![Energy proxy vs FP8 fraction]({image.relative_to(args.doc.parent)})", "",
               END]
    text = args.doc.read_text()
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + "\n".join(section) + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(section) + "\n"
    args.doc.write_text(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"layer": args.layer, "tokens": args.tokens,
                                                       "lanes": args.lanes, "rows": rows}, indent=1))
    print(f"wrote {args.doc}, {image} and {args.out / 'results.json'} in {minutes:.1f} min")


if __name__ == "__main__":
    main()
