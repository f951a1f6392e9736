"""``fgmp quantize``: calibrate a causal or masked LM, quantize it under the FGMP policy (or a baseline, or all
of them at several FP8 budgets and calibration seeds), report perplexity (with its spread), FP8 fractions and
weight memory, export layers."""

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["DEFAULT_FRACTIONS", "Setup", "prepare", "recalibrate", "evaluate", "sweep", "sweep_seeds", "spread",
           "spread_markdown", "write_reports", "add_commands"]

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
    seed: int = 0  # calibration windows (and, for masked LMs, their masking)
    calib_text: str | None = None  # kept so another calibration seed can be drawn without reloading


def _loss(lm, seed, sequences):
    """(calibration samples, loss_fn) for the model's task: a causal LM's next-token loss per window, or
    a masked LM's loss on the window's seeded masked positions."""
    from fgmp.golden.models import masked_positions
    from fgmp.golden.models.evaluate import sequence_loss

    if lm.task == "masked":
        masks = masked_positions(lm, sequences, seed=seed)
        return list(zip(sequences, masks)), lambda model, s: sequence_loss(lm, s[0].unsqueeze(0), s[1].unsqueeze(0))
    return list(sequences), lambda model, s: sequence_loss(lm, s.unsqueeze(0))


def prepare(model=None, *, calib=None, eval_text=None, seq_len=256, calib_samples=32, eval_samples=64,
            include=None, exclude=DEFAULT_EXCLUDE, device=None, seed=0, progress=True, task=None, eval_seed=None,
            dtype=None):
    """Load the model and text, cut calibration/evaluation windows, select layers, calibrate.

    ``task``: "causal" or "masked" for a Hugging Face model (None: from its config); ``seed`` draws the
    calibration windows (and masks), ``eval_seed`` the evaluation windows (default seed + 1); ``dtype``
    the Hugging Face model's weights (default float32 on CPU, the checkpoint's on CUDA)."""
    from fgmp.golden.models import default_corpus, load_model, read_text, token_sequences

    torch.manual_seed(seed)
    lm = load_model(model, device=device, task=task, dtype=dtype)
    if seq_len < 1 or seq_len + 1 > lm.context + 1:
        raise ValueError(f"Sequence length {seq_len} must be between 1 and the model's context {lm.context}")
    # Layer shapes are checked before the text is read and tokenized: a model the unit cannot run fails fast.
    from fgmp.golden.policy import select_linear_layers
    layers = select_linear_layers(lm.model, include=include, exclude=exclude)
    if calib is None or eval_text is None:
        corpus = default_corpus()
    calib_text = read_text(calib) if calib is not None else corpus.train
    held_out = read_text(eval_text) if eval_text is not None else corpus.eval
    eval_sequences = token_sequences(lm.encode(held_out), seq_len, count=eval_samples,
                                     seed=seed + 1 if eval_seed is None else eval_seed)
    source = f"calibration: {calib or 'default corpus, train split'}; evaluation: {eval_text or 'default corpus, held-out split'}"
    setup = Setup(lm=lm, layers=layers, calibration=None, eval_sequences=eval_sequences,
                  calib_sequences=torch.empty(0, dtype=torch.long), source=source, seconds={}, seed=seed,
                  calib_text=calib_text)
    return recalibrate(setup, seed, calib_samples=calib_samples, progress=progress)


def recalibrate(setup, seed, *, calib_samples=None, progress=True):
    """The same model, layers and evaluation windows, calibrated on the windows ``seed`` draws (a fresh
    Setup): how much the results move with the calibration data."""
    from fgmp.golden.models import token_sequences
    from fgmp.golden.policy import calibrate

    count = calib_samples or setup.calib_sequences.shape[0]
    seq_len = setup.eval_sequences.shape[1] - 1
    calib_sequences = token_sequences(setup.lm.encode(setup.calib_text), seq_len, count=count, seed=seed)
    samples, loss_fn = _loss(setup.lm, seed, calib_sequences)
    start = time.perf_counter()
    calibration = calibrate(setup.lm.model, samples, loss_fn, setup.layers, progress=progress)
    return Setup(lm=setup.lm, layers=setup.layers, calibration=calibration, eval_sequences=setup.eval_sequences,
                 calib_sequences=calib_sequences, source=setup.source,
                 seconds={"calibration": time.perf_counter() - start}, seed=seed, calib_text=setup.calib_text)


def evaluate(setup, plan=None, *, progress=True):
    """One results row: perplexity on the held-out windows under ``plan`` (None: unquantized), with every
    window's loss for paired comparisons. Masked LMs: the masked-token perplexity (masks seeded with 0,
    the same for every plan and calibration seed)."""
    from fgmp.golden.models.evaluate import window_losses
    from fgmp.golden.policy import quantized

    start = time.perf_counter()
    if plan is None:
        losses, counts = window_losses(setup.lm, setup.eval_sequences, progress=progress)
        row = {"policy": "unquantized", "clipping": False, "requested_fp8": None, "weight_fp8": None,
               "activation_fp8": None, "bits_per_weight": _stored_bits(setup)}
    else:
        with torch.no_grad(), quantized(setup.lm.model, plan):
            losses, counts = window_losses(setup.lm, setup.eval_sequences, progress=progress)
        row = {"policy": plan.policy, "clipping": plan.clipping, "requested_fp8": plan.fp8_fraction,
               "weight_fp8": plan.weight_fp8_fraction, "activation_fp8": plan.activation_fp8_fraction,
               "bits_per_weight": plan.bits_per_weight}
    row.update(perplexity=math.exp(float(losses.sum()) / int(counts.sum())), seconds=time.perf_counter() - start,
               seed=setup.seed, window_nll=[float(v) / int(c) for v, c in zip(losses, counts)])
    return row


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


def sweep_seeds(setup, seeds, *, policies=SWEEP_POLICIES, fractions=DEFAULT_FRACTIONS, progress=True, log=print):
    """``sweep`` once per calibration seed, on the same evaluation windows (every row carries its seed)."""
    rows = []
    for seed in seeds:
        seeded = setup if seed == setup.seed and setup.calibration is not None else recalibrate(setup, seed,
                                                                                                 progress=progress)
        log(f"calibration seed {seed} ({seeded.seconds['calibration']:.1f} s)")
        rows += sweep(seeded, policies=policies, fractions=fractions, progress=progress, log=log)
    return rows


REFERENCE = ("fgmp", True)  # each budget's rows are compared with FGMP + clipping at that budget


def _key(row):
    return row["policy"], row["clipping"], row["requested_fp8"]


def spread(rows, reference=REFERENCE):
    """One entry per (policy, clipping, requested fraction) over the calibration seeds in ``rows``: the
    mean perplexity and its range over seeds, and the difference from ``reference`` at the same budget,
    paired by seed and by evaluation window. ``delta``: mean over seeds of 100 (ppl / ppl_ref - 1);
    ``seed_sd``: its standard deviation over seeds; ``window_se``: the standard error of the mean per-window
    log-perplexity difference (x 100, about a percentage), averaged over seeds; ``noise``: the combined
    standard uncertainty sqrt(seed_sd**2 / seeds + window_se**2); ``within_noise``: |delta| <= 2 noise."""
    groups = {}
    for r in rows:
        groups.setdefault(_key(r), {})[r["seed"]] = r
    out = []
    for key, by_seed in groups.items():
        seeds = sorted(by_seed)
        ppl = [by_seed[s]["perplexity"] for s in seeds]
        entry = {"policy": key[0], "clipping": key[1], "requested_fp8": key[2], "seeds": seeds,
                 "perplexity": sum(ppl) / len(ppl), "perplexity_min": min(ppl), "perplexity_max": max(ppl),
                 "weight_fp8": _mean(by_seed[s]["weight_fp8"] for s in seeds),
                 "activation_fp8": _mean(by_seed[s]["activation_fp8"] for s in seeds),
                 "bits_per_weight": _mean(by_seed[s]["bits_per_weight"] for s in seeds),
                 "delta": None, "seed_sd": None, "window_se": None, "noise": None, "within_noise": None}
        ref = groups.get((reference[0], reference[1], key[2]))
        if ref is not None and key != (reference[0], reference[1], key[2]) and key[2] is not None:
            paired = [s for s in seeds if s in ref]
            deltas = [100 * (by_seed[s]["perplexity"] / ref[s]["perplexity"] - 1) for s in paired]
            ses = [_standard_error([a - b for a, b in zip(by_seed[s]["window_nll"], ref[s]["window_nll"])])
                   for s in paired]
            if deltas:
                mean = sum(deltas) / len(deltas)
                sd = _sd(deltas)
                se = 100 * sum(ses) / len(ses)
                noise = math.sqrt((sd or 0.0) ** 2 / len(deltas) + se**2)
                entry.update(delta=mean, seed_sd=sd, window_se=se, noise=noise, within_noise=abs(mean) <= 2 * noise)
        out.append(entry)
    return out


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _sd(values):
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _standard_error(values):
    sd = _sd(values)
    return 0.0 if sd is None else sd / math.sqrt(len(values))


def spread_markdown(entries, reference=REFERENCE):
    """The spread table: every comparison with its noise, and a flag where it is within the noise."""
    name = reference[0] + (" + clipping" if reference[1] else "")
    lines = [f"| policy | clipping | requested FP8 | weight FP8 | activation FP8 (eval) | bits / weight | "
             f"perplexity, mean over seeds | range over seeds | vs {name} | seed sd | window s.e. | "
             f"difference |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for e in entries:
        if e["delta"] is None:
            versus = sd = se = verdict = "-"
        else:
            versus = f"{e['delta']:+.2f} %"
            sd = "-" if e["seed_sd"] is None else f"{e['seed_sd']:.2f} %"
            se = f"{e['window_se']:.2f} %"
            verdict = "within noise" if e["within_noise"] else ("worse" if e["delta"] > 0 else "better")
        lines.append(f"| {e['policy']} | {'on' if e['clipping'] else 'off'} | {_percent(e['requested_fp8'])} | "
                     f"{_percent(e['weight_fp8'])} | {_percent(e['activation_fp8'])} | {e['bits_per_weight']:.3f} | "
                     f"{e['perplexity']:.4f} | {e['perplexity_min']:.4f}-{e['perplexity_max']:.4f} | {versus} | "
                     f"{sd} | {se} | {verdict} |")
    return "\n".join(lines)


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
    seeds = sorted({r["seed"] for r in rows})
    table = markdown_table([r for r in rows if r["seed"] == seeds[0]])
    entries = spread(rows)
    if any(e["delta"] is not None for e in entries):
        table += "\n\n" + spread_markdown(entries)
    (out / "results.md").write_text(table + "\n")
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

    if args.seeds and not args.sweep:
        raise ValueError("--seeds repeats the sweep per calibration seed; add --sweep")
    seeds = args.seeds or [args.seed]
    setup = prepare(args.model, calib=args.calib, eval_text=args.eval, seq_len=args.seq_len,
                    calib_samples=args.calib_samples, eval_samples=args.eval_samples, include=args.layers,
                    exclude=args.exclude, device=args.device, seed=seeds[0], progress=not args.quiet,
                    task=args.task, eval_seed=args.seed + 1)
    measure = "masked-token perplexity" if setup.lm.task == "masked" else "perplexity"
    print(f"{setup.lm.name} ({setup.lm.task} LM, {measure}): {len(setup.layers)} Linear layers quantized, "
          f"{setup.calib_sequences.shape[0]} calibration x {args.seq_len} tokens, "
          f"{setup.eval_sequences.shape[0]} evaluation windows; calibration {setup.seconds['calibration']:.1f} s")
    print(HEADER)
    if args.sweep:
        rows = sweep_seeds(setup, seeds, fractions=args.fractions, progress=not args.quiet)
    else:
        rows = [evaluate(setup, progress=not args.quiet)]
        print(row_line(rows[0]))
        for policy in ("fp8", args.policy):
            plan = build_plan(setup.calibration, policy=policy, fp8_fraction=args.fp8_fraction,
                              clipping=args.clipping and policy != "fp8")
            rows.append(evaluate(setup, plan, progress=not args.quiet))
            print(row_line(rows[-1]))
    meta = {"model": setup.lm.name, "task": setup.lm.task, "source": setup.source, "layers": list(setup.layers),
            "seq_len": args.seq_len, "calibration_windows": int(setup.calib_sequences.shape[0]),
            "evaluation_windows": int(setup.eval_sequences.shape[0]),
            "calibration_seconds": setup.seconds["calibration"], "seed": args.seed, "seeds": seeds,
            "evaluation_seed": args.seed + 1, "threads": torch.get_num_threads(), "device": str(setup.lm.device)}
    paths = write_reports(rows, out, meta=meta)
    if args.export:
        plan = build_plan(setup.calibration, policy="fgmp", fp8_fraction=args.fp8_fraction, clipping=args.clipping)
        for name in args.export:
            if name not in plan.weights:
                raise ValueError(f"Cannot export {name!r}: not a quantized layer (e.g. {next(iter(plan.weights))})")
            paths.append(export_layer(plan.weights[name], plan.activations[name].config,
                                      out / "export" / name, name=name))
    rows = [r for r in rows if r["seed"] == seeds[0]]
    fp8 = next(r for r in rows if r["policy"] == "fp8")["perplexity"]
    for r in rows:
        if r["policy"] == args.policy and r["requested_fp8"] == args.fp8_fraction and r["clipping"] == args.clipping:
            print(f"\n{args.policy} at {args.fp8_fraction:.0%} FP8: {measure} {r['perplexity']:.4f}, "
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
    from fgmp.golden.models import TASKS
    from fgmp.golden.policy import POLICIES

    q = commands.add_parser("quantize", help="quantize a language model with the FGMP policy; perplexity, memory, export")
    q.add_argument("--model", help="a local Hugging Face causal- or masked-LM directory (default: the embedded tiny LM)")
    q.add_argument("--task", choices=TASKS, help="causal: next-token perplexity; masked: seeded masked-token "
                   "perplexity (default: from the model's config)")
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
    q.add_argument("--seed", type=int, default=0, help="calibration windows; evaluation windows use seed + 1")
    q.add_argument("--seeds", type=int, nargs="+", help="with --sweep: repeat it per calibration seed (same "
                   "evaluation windows) and report each comparison with its spread")
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
