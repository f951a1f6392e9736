"""Writes docs/results.md (and its plot) from an `fgmp quantize --sweep` run: FGMP vs every baseline at
several FP8 budgets on the embedded model, with the paper's claims beside the measured figures.

    .venv/bin/fgmp quantize --sweep --threads 1 --quiet --out out/quantize-sweep
    .venv/bin/python bench/policy_results.py out/quantize-sweep/results.json

Every number in the document comes from the JSON; nothing is typed in."""

import argparse
import json
import sys
from pathlib import Path

from fgmp.quantize import FP8_BITS, markdown_table, plot

ROOT = Path(__file__).resolve().parent.parent
COMMAND = ("`.venv/bin/fgmp quantize --sweep --threads 1 --quiet --eval-samples 32 --out out/quantize-sweep` then "
           "`.venv/bin/python bench/policy_results.py out/quantize-sweep/results.json`")


def _row(rows, policy, fraction=None, clipping=None):
    for r in rows:
        if r["policy"] == policy and (fraction is None or r["requested_fp8"] == fraction) \
                and (clipping is None or r["clipping"] == clipping):
            return r
    raise KeyError((policy, fraction, clipping))


def _loss(r, fp8):
    return 100 * (r["perplexity"] / fp8["perplexity"] - 1)


def document(data):
    rows, meta = data["rows"], data["meta"]
    fp8, nvfp4 = _row(rows, "fp8"), _row(rows, "nvfp4", clipping=False)
    fractions = sorted({r["requested_fp8"] for r in rows if r["policy"] == "fgmp"})
    lines = [
        "# Results: the FGMP policy on the embedded model",
        "",
        f"Regenerate: {COMMAND}. Model `{meta['model']}` (docs/policy.md §9), {len(meta['layers'])} Linear "
        f"layers quantized (the output head is not), {meta['seq_len']}-token windows ({meta.get('calibration_windows', '?')} for calibration, "
        f"{meta.get('evaluation_windows', '?')} for evaluation); {meta['source']}. "
        f"Calibration (Fisher + activation scores) took {meta['calibration_seconds']:.1f} s. Weights and "
        "activations are both quantized (activations through the activation unit's bit-exact golden model "
        "for `fgmp` / `unweighted`); the matmuls are evaluated in FP32 on the dequantized values.",
        "",
        "## FGMP vs every baseline",
        "",
        markdown_table(rows),
        "",
        "Requested FP8 is the budget for weights and activations; weight FP8 is exact to a block (one "
        "global threshold); activation FP8 is what the calibrated unit chose on the evaluation text. "
        "Bits per weight count codes, the 8-bit scale and the precision bit of every block (numerics §5).",
        "",
        "![perplexity vs FP8 fraction](img/perplexity_vs_fp8.png)",
        "",
        "## Against the paper's claims",
        "",
        "| claim (Llama-2-7B in the paper) | measured here |",
        "|---|---|",
    ]
    if 0.3 in fractions:
        at30 = _row(rows, "fgmp", 0.3, True)
        lines.append(f"| < 1 % perplexity loss vs all-FP8 with 30 % FP8 blocks | FGMP + clipping at 30 %: "
                     f"{at30['perplexity']:.4f} vs {fp8['perplexity']:.4f}, {_loss(at30, fp8):+.2f} % |")
        lines.append(f"| 30 % less weight memory than FP8 | {at30['bits_per_weight']:.3f} vs {FP8_BITS:.3f} bits "
                     f"per weight: {100 * (at30['bits_per_weight'] / FP8_BITS - 1):+.1f} % |")
    lines.append("| 14 % less energy than FP8 | not measured yet: the energy proxy belongs to the end-to-end issue |")
    best = {f: min((r for r in rows if r["requested_fp8"] == f and r["policy"] not in ("fp8", "nvfp4")),
                   key=lambda r: r["perplexity"]) for f in fractions}
    lines += [
        "",
        "## Reading the numbers",
        "",
        f"- All-NVFP4 costs {_loss(nvfp4, fp8):+.2f} % perplexity vs all-FP8 on this model "
        f"({_loss(_row(rows, 'nvfp4', clipping=True), fp8):+.2f} % with clipping). The byte-level tiny model "
        "has a small all-NVFP4 penalty, so every mixed policy sits inside that gap and the differences "
        "between policies are correspondingly small. " + (
            "That gap is itself under 1 %, so the paper's < 1 % bar is met by construction on this model "
            "and says little about the policy; " if _loss(nvfp4, fp8) < 1 else
            "That gap exceeds 1 %, so the < 1 % bar is a real test here; ") +
        "use `--model PATH` on a real LLM to test the claim where it is hard.",
        "- Several mixed rows score slightly below all-FP8 (and some below the unquantized model): on 32 "
        "windows a few tenths of a percent is within what quantization noise can move either way, so "
        "read the ranking of policies per budget, not the sign against FP8.",
        "- Lowest perplexity per budget: " + "; ".join(
            f"{100 * f:.0f} %: {best[f]['policy']}{' + clipping' if best[f]['clipping'] else ''} "
            f"({best[f]['perplexity']:.4f})" for f in fractions) + ".",
        "- Every row is evaluated on the same held-out windows (a paired comparison), with one calibration "
        "seed; the `random` rows show how much an uninformed choice of the same budget moves perplexity.",
        "",
    ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, help="results.json of an fgmp quantize --sweep run")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md")
    args = parser.parse_args()
    if not args.json.is_file():
        sys.exit(f"error: {args.json} not found; run the sweep first: {COMMAND}")
    data = json.loads(args.json.read_text())
    images = args.out.parent / "img"
    images.mkdir(parents=True, exist_ok=True)
    plot(data["rows"], images / "perplexity_vs_fp8.png")
    args.out.write_text(document(data))
    print(f"wrote {args.out} and {images / 'perplexity_vs_fp8.png'}")


if __name__ == "__main__":
    main()
