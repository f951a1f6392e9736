"""``fgmp quantize``: calibrate a causal LM, quantize it under the FGMP policy (or a baseline, or all of
them at several FP8 budgets), report perplexity, FP8 fractions and weight memory, export layers."""

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["DEFAULT_FRACTIONS", "Setup", "prepare", "evaluate", "sweep", "write_reports", "add_commands"]

DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.5)
SWEEP_POLICIES = ("fgmp", "unweighted", "magnitude", "random", "layerwise")
DEFAULT_EXCLUDE = ("*lm_head*",)  # the output head stays in high precision, as in the paper
FP8_BITS = 8 + 9 / 16  # all-FP8 storage per element for B = 16 (codes + scale + precision bit)


@dataclass
class Setup:
    lm: object
    layers: dict
    calibration: object
    eval_sequences: torch.Tensor
    calib_sequences: torch.Tensor
    source: str
    seconds: dict


def prepare(model=None, *, calib=None, eval_text=None, seq_len=256, calib_samples=32, eval_samples=64,
            include=None, exclude=DEFAULT_EXCLUDE, device=None, seed=0, progress=True):
    """Load the model and text, cut calibration/evaluation windows, select layers, calibrate."""
    from fgmp.golden.models import default_corpus, load_model, read_text, token_sequences
    from fgmp.golden.models.evaluate import sequence_loss
    from fgmp.golden.policy import calibrate, select_linear_layers

    torch.manual_seed(seed)
    lm = load_model(model, device=device)
    if seq_len < 1 or seq_len + 1 > lm.context + 1:
        raise ValueError(f"Sequence length {seq_len} must be between 1 and the model's context {lm.context}")
    # Layer shapes are checked before the text is read and tokenized: a model the unit cannot run fails fast.
    layers = select_linear_layers(lm.model, include=include, exclude=exclude)
    if calib is None or eval_text is None:
        corpus = default_corpus()
    calib_text = read_text(calib) if calib is not None else corpus.train
    held_out = read_text(eval_text) if eval_text is not None else corpus.eval
    calib_sequences = token_sequences(lm.encode(calib_text), seq_len, count=calib_samples, seed=seed)
    eval_sequences = token_sequences(lm.encode(held_out), seq_len, count=eval_samples, seed=seed + 1)
    start = time.perf_counter()
    calibration = calibrate(lm.model, list(calib_sequences), lambda model, s: sequence_loss(lm, s.unsqueeze(0)),
                            layers, progress=progress)
    source = f"calibration: {calib or 'default corpus, train split'}; evaluation: {eval_text or 'default corpus, held-out split'}"
    return Setup(lm=lm, layers=layers, calibration=calibration, eval_sequences=eval_sequences,
                 calib_sequences=calib_sequences, source=source,
                 seconds={"calibration": time.perf_counter() - start})


def evaluate(setup, plan=None, *, progress=True):
    """One results row: perplexity on the held-out windows under ``plan`` (None: unquantized)."""
    from fgmp.golden.models import perplexity
    from fgmp.golden.policy import quantized

    start = time.perf_counter()
    if plan is None:
        ppl = perplexity(setup.lm, setup.eval_sequences, progress=progress)
        return {"policy": "unquantized", "clipping": False, "requested_fp8": None, "weight_fp8": None,
                "activation_fp8": None, "bits_per_weight": _stored_bits(setup),
                "perplexity": ppl, "seconds": time.perf_counter() - start}
    with torch.no_grad(), quantized(setup.lm.model, plan):
        ppl = perplexity(setup.lm, setup.eval_sequences, progress=progress)
    return {"policy": plan.policy, "clipping": plan.clipping, "requested_fp8": plan.fp8_fraction,
            "weight_fp8": plan.weight_fp8_fraction, "activation_fp8": plan.activation_fp8_fraction,
            "bits_per_weight": plan.bits_per_weight, "perplexity": ppl, "seconds": time.perf_counter() - start}


def _stored_bits(setup):
    """Bits per weight of the unquantized layers: 16 when every weight is exactly a BF16 value (the
    shipped model is stored in BF16 and computed in FP32), else the in-memory width."""
    weights = [layer.weight.detach() for layer in setup.layers.values()]
    if all(torch.equal(w, w.to(torch.bfloat16).to(w.dtype)) for w in weights):
        return 16.0
    return float(torch.finfo(weights[0].dtype).bits)


def sweep(setup, *, policies=SWEEP_POLICIES, fractions=DEFAULT_FRACTIONS, progress=True, log=print):
    """Every policy at every FP8 fraction (FGMP with and without clipping), the all-FP8 / all-NVFP4
    baselines and the unquantized model. Baselines other than FGMP use plain amax scales."""
    from fgmp.golden.policy import build_plan

    configurations = [("fp8", 1.0, False), ("nvfp4", 0.0, False), ("nvfp4", 0.0, True)]
    for fraction in fractions:
        for policy in policies:
            configurations.append((policy, fraction, False))
            if policy == "fgmp":
                configurations.append((policy, fraction, True))
    rows = [evaluate(setup, progress=progress)]
    log(row_line(rows[0]))
    for policy, fraction, clipping in configurations:
        plan = build_plan(setup.calibration, policy=policy, fp8_fraction=fraction, clipping=clipping)
        rows.append(evaluate(setup, plan, progress=progress))
        log(row_line(rows[-1]))
    return rows


def _percent(value):
    return "-" if value is None else f"{100 * value:.1f}"


def row_line(row):
    clip = "+clip" if row["clipping"] else ""
    return (f"{row['policy'] + clip:<18}{_percent(row['requested_fp8']):>10}{_percent(row['weight_fp8']):>10}"
            f"{_percent(row['activation_fp8']):>10}{row['bits_per_weight']:>9.3f}{row['perplexity']:>12.4f}")


HEADER = f"{'policy':<18}{'req FP8%':>10}{'W FP8%':>10}{'A FP8%':>10}{'bits/w':>9}{'perplexity':>12}"


def markdown_table(rows):
    fp8 = next((r["perplexity"] for r in rows if r["policy"] == "fp8"), None)
    lines = ["| policy | clipping | requested FP8 | weight FP8 | activation FP8 (eval) | bits / weight | "
             "weight memory vs FP8 | perplexity | vs all-FP8 |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        memory = "-" if r["policy"] == "unquantized" else f"{100 * (r['bits_per_weight'] / FP8_BITS - 1):+.1f} %"
        versus = "-" if fp8 is None else f"{100 * (r['perplexity'] / fp8 - 1):+.2f} %"
        lines.append(f"| {r['policy']} | {'on' if r['clipping'] else 'off'} | {_percent(r['requested_fp8'])} | "
                     f"{_percent(r['weight_fp8'])} | {_percent(r['activation_fp8'])} | {r['bits_per_weight']:.3f} | "
                     f"{memory} | {r['perplexity']:.4f} | {versus} |")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    series = {}
    for r in rows:
        if r["policy"] in SWEEP_POLICIES:
            label = r["policy"] + (" + clipping" if r["clipping"] else "")
            series.setdefault(label, []).append((r["requested_fp8"] * 100, r["perplexity"]))
    for label, points in series.items():
        points.sort()
        axes.plot(*zip(*points), marker="o", label=label)
    for r in rows:
        if r["policy"] in ("fp8", "nvfp4", "unquantized") and not r["clipping"]:
            axes.axhline(r["perplexity"], linestyle="--", linewidth=0.8, color="gray")
            axes.text(0.01, r["perplexity"], f"all-{r['policy'].upper()}" if r["policy"] != "unquantized"
                      else "unquantized", transform=axes.get_yaxis_transform(), fontsize=7, color="gray",
                      va="bottom")
    axes.set_xlabel("FP8 blocks (%, weights and activations)")
    axes.set_ylabel("held-out perplexity")
    axes.set_title("Perplexity vs FP8 fraction per policy")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_reports(rows, out, *, meta):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (out / "results.md").write_text(markdown_table(rows) + "\n")
    paths = [out / "results.json", out / "results.md"]
    if any(r["policy"] in SWEEP_POLICIES for r in rows):
        plot(rows, out / "perplexity_vs_fp8.png")
        paths.append(out / "perplexity_vs_fp8.png")
    return paths


def _run(args):
    from fgmp.golden.policy import build_plan, export_layer

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, not {args.threads}")
        torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()

    setup = prepare(args.model, calib=args.calib, eval_text=args.eval, seq_len=args.seq_len,
                    calib_samples=args.calib_samples, eval_samples=args.eval_samples, include=args.layers,
                    exclude=args.exclude, device=args.device, seed=args.seed, progress=not args.quiet)
    print(f"{setup.lm.name}: {len(setup.layers)} Linear layers quantized, "
          f"{setup.calib_sequences.shape[0]} calibration x {args.seq_len} tokens, "
          f"{setup.eval_sequences.shape[0]} evaluation windows; calibration {setup.seconds['calibration']:.1f} s")
    print(HEADER)
    if args.sweep:
        rows = sweep(setup, fractions=args.fractions, progress=not args.quiet)
    else:
        rows = [evaluate(setup, progress=not args.quiet)]
        print(row_line(rows[0]))
        for policy in ("fp8", args.policy):
            plan = build_plan(setup.calibration, policy=policy, fp8_fraction=args.fp8_fraction,
                              clipping=args.clipping and policy != "fp8")
            rows.append(evaluate(setup, plan, progress=not args.quiet))
            print(row_line(rows[-1]))
    meta = {"model": setup.lm.name, "source": setup.source, "layers": list(setup.layers),
            "seq_len": args.seq_len, "calibration_windows": int(setup.calib_sequences.shape[0]),
            "evaluation_windows": int(setup.eval_sequences.shape[0]), "calibration_seconds": setup.seconds["calibration"], "seed": args.seed}
    paths = write_reports(rows, out, meta=meta)
    if args.export:
        plan = build_plan(setup.calibration, policy="fgmp", fp8_fraction=args.fp8_fraction, clipping=args.clipping)
        for name in args.export:
            if name not in plan.weights:
                raise ValueError(f"Cannot export {name!r}: not a quantized layer (e.g. {next(iter(plan.weights))})")
            paths.append(export_layer(plan.weights[name], plan.activations[name].config,
                                      out / "export" / name, name=name))
    fp8 = next(r for r in rows if r["policy"] == "fp8")["perplexity"]
    for r in rows:
        if r["policy"] == args.policy and r["requested_fp8"] == args.fp8_fraction and r["clipping"] == args.clipping:
            print(f"\n{args.policy} at {args.fp8_fraction:.0%} FP8: perplexity {r['perplexity']:.4f}, "
                  f"{100 * (r['perplexity'] / fp8 - 1):+.2f} % vs all-FP8 {fp8:.4f}; "
                  f"{r['bits_per_weight']:.3f} bits per weight ({100 * (r['bits_per_weight'] / FP8_BITS - 1):+.1f} % vs FP8)")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _fraction(text):
    value = float(text)
    if not 0 <= value <= 1 or math.isnan(value):
        import argparse
        raise argparse.ArgumentTypeError(f"an FP8 fraction lies in [0, 1], not {text}")
    return value


def add_commands(commands):
    from fgmp.golden.policy import POLICIES

    q = commands.add_parser("quantize", help="quantize a causal LM with the FGMP policy; perplexity, memory, export")
    q.add_argument("--model", help="a local Hugging Face causal-LM directory (default: the embedded tiny LM)")
    q.add_argument("--calib", type=Path, help="calibration text file (default: the corpus's train split)")
    q.add_argument("--eval", type=Path, help="evaluation text file (default: the corpus's held-out split)")
    q.add_argument("--policy", choices=POLICIES, default="fgmp")
    q.add_argument("--fp8-fraction", type=_fraction, default=0.3, help="FP8 share of the blocks (default 0.3)")
    q.add_argument("--no-clipping", dest="clipping", action="store_false",
                   help="plain amax scales for NVFP4 weight blocks")
    q.add_argument("--sweep", action="store_true", help="every policy at every --fractions value, and baselines")
    q.add_argument("--fractions", type=_fraction, nargs="+", default=list(DEFAULT_FRACTIONS))
    q.add_argument("--layers", nargs="+", help="fnmatch patterns of the Linear layers to quantize (default all)")
    q.add_argument("--exclude", nargs="*", default=list(DEFAULT_EXCLUDE), help="patterns to leave unquantized")
    q.add_argument("--seq-len", type=int, default=256, help="tokens per calibration/evaluation window")
    q.add_argument("--calib-samples", type=int, default=32, help="calibration windows (one backward each)")
    q.add_argument("--eval-samples", type=int, default=64, help="evaluation windows (default 64)")
    q.add_argument("--export", nargs="+", metavar="LAYER", help="write these layers' hardware images (FGMP plan)")
    q.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--threads", type=int, help="CPU threads for torch (1 is fastest on a busy machine)")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.add_argument("--out", type=Path, default=Path("out/quantize"))
    q.set_defaults(func=_run_reporting_errors)


def _run_reporting_errors(args):
    import sys

    try:
        return _run(args)
    except (ValueError, FileNotFoundError, UnicodeDecodeError) as error:  # bad input, said plainly
        print(f"fgmp: error: {error}", file=sys.stderr)
        return 2
