"""Policy speed: the exact quantizers against torchao and against their reference oracles, plan evaluation
against unquantized evaluation, and (--scale) calibration, planning and evaluation of a Llama model with
Llama-2-7B's layer dimensions, with peak memory and the extrapolation to 32 layers.

    python bench/policy_speed.py [--threads 1 2] [--repeat 7] [--scale] [--write-docs]

Every comparison is measured side by side in one run: the candidates take turns, each keeps its best
time of ``--repeat`` tries, so a busy machine slows all of them alike. torchao is an optional benchmark
dependency that ``make setup`` does not install: ``.venv/bin/pip install torchao`` (0.18 measured); without
it the table simply lacks its row and the ratio columns. ``--write-docs`` puts the tables into
docs/policy.md §10 (between the speed and scale markers)."""

import argparse
import gc
import json
import math
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from fgmp import golden
from fgmp.golden.actq import fake_quantize_activations, quantize_activations_reference
from fgmp.golden.blocks import dequantize_reference, quantize_blocks_reference
from fgmp.golden.recipes import nvfp4_fp32_divide

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "policy.md"
MARKERS = {"speed": ("<!-- speed:begin -->", "<!-- speed:end -->"),
           "scale": ("<!-- scale:begin -->", "<!-- scale:end -->")}
ROWS, COLS = 1024, 4096  # the tensor of issue 18: 1024 x 4096 FP32


def side_by_side(candidates, repeat):
    """Best seconds of each candidate, the candidates taking turns ``repeat`` times."""
    best = {name: math.inf for name in candidates}
    for run in candidates.values():
        run()  # warm up: tables, allocator, first-call costs
    for _ in range(repeat):
        for name, run in candidates.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _torchao():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import logging
            logging.disable(logging.WARNING)
            from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale
            import torchao
        return torchao.__version__, NVFP4Tensor, per_tensor_amax_to_scale
    except Exception:  # noqa: BLE001 - an optional dependency: any import failure means "not measured"
        return None, None, None


def quantizer_tables(threads, repeat):
    """One table per thread count of elements/s, with the ratio to torchao's NVFP4 quantizer, and
    whether each fast path's output is bit-identical to its reference on the measured tensor."""
    version, nvfp4_tensor, amax_to_scale = _torchao()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(ROWS, COLS, generator=generator)
    precision = torch.rand(ROWS, COLS // 16, generator=generator) < 0.3
    activations = (torch.randn(ROWS, COLS, generator=generator)
                   * torch.exp(torch.randn(ROWS, 1, generator=generator))).bfloat16()
    sensitivities = torch.randint(0x28, 0x48, (COLS,), generator=generator, dtype=torch.uint8)
    probe = golden.quantize_activations(activations[:64], golden.ActivationConfig(0, math.inf, sensitivities)).scores
    config = golden.ActivationConfig(0, float(probe.flatten().quantile(0.7).float()), sensitivities)
    xf = activations.float()
    bt = golden.quantize_nvfp4(x)

    fast = {
        "golden.quantize_nvfp4 (exact, fast path)": lambda: golden.quantize_nvfp4(x),
        "golden.quantize_fp8 (exact, fast path)": lambda: golden.quantize_fp8(x),
        "golden.quantize_blocks, 30 % FP8 blocks": lambda: golden.quantize_blocks(x, precision),
        "golden.dequantize (NVFP4 -> FP32)": lambda: golden.dequantize(bt),
        "golden.quantize_activations (codes, exact scores)": lambda: golden.quantize_activations(activations, config),
        "golden.fake_quantize_activations (evaluation)": lambda: fake_quantize_activations(activations, config),
        "torch float8_e4m3fn cast round trip (not the unit)": lambda: xf.to(torch.float8_e4m3fn).float(),
        "FP32 step-by-step divide recipe (not exact)": lambda: nvfp4_fp32_divide(x),
    }
    if nvfp4_tensor is not None:
        fast = {f"torchao {version} NVFP4Tensor.to_nvfp4": lambda: nvfp4_tensor.to_nvfp4(
            x, per_tensor_scale=amax_to_scale(x.abs().max())), **fast}
    slow = {
        "reference quantize_blocks_reference, NVFP4 (the oracle)": lambda: quantize_blocks_reference(x, torch.tensor(False)),
        "reference quantize_activations_reference (the oracle)": lambda: quantize_activations_reference(activations, config),
    }
    identical = {
        "quantize_nvfp4": _same_blocks(golden.quantize_nvfp4(x), quantize_blocks_reference(x, torch.tensor(False))),
        "quantize_blocks 30 % FP8": _same_blocks(golden.quantize_blocks(x, precision),
                                                 quantize_blocks_reference(x, precision)),
        "dequantize": torch.equal(golden.dequantize(bt).view(torch.int32), dequantize_reference(bt).view(torch.int32)),
    }
    reference = quantize_activations_reference(activations, config)
    unit = golden.quantize_activations(activations, config)
    values, chosen = fake_quantize_activations(activations, config)
    identical["quantize_activations"] = _same_blocks(unit.blocks, reference.blocks) and torch.equal(
        unit.scores, reference.scores)
    identical["fake_quantize_activations"] = torch.equal(chosen, reference.blocks.precision) and torch.equal(
        values.view(torch.int32), dequantize_reference(reference.blocks).view(torch.int32))

    tables = {}
    for count in threads:
        torch.set_num_threads(count)
        seconds = side_by_side(fast, repeat)
        seconds.update(side_by_side(slow, max(1, repeat // 4)))
        tables[count] = seconds
    names = list(fast) + list(slow)
    torchao = next((n for n in names if n.startswith("torchao")), None)
    lines = [f"Quantizers on one {ROWS} x {COLS} tensor (FP32 weights; BF16 activations, per-row log-normal "
             f"scale, 30 % FP8 threshold), best of {repeat} side by side (the references: best of "
             f"{max(1, repeat // 4)}):", ""]
    header = "| quantizer |" + "".join(f" elements/s, {c} thread{'s' if c > 1 else ''} |"
                                       + (" vs torchao |" if torchao else "") for c in threads)
    lines += [header, "|---|" + "---:|" * (len(threads) * (2 if torchao else 1))]
    for name in names:
        cells = []
        for count in threads:
            rate = ROWS * COLS / tables[count][name]
            cells.append(f" {rate / 1e6:,.1f} M |")
            if torchao:
                cells.append(f" {tables[count][torchao] / tables[count][name]:.2f}x |")
        lines.append(f"| {name} |" + "".join(cells))
    lines += ["", "Fast paths bit-identical to their references on these tensors: " + ", ".join(
        f"{name} {'yes' if same else 'NO'}" for name, same in identical.items()) + "."]
    if torchao is None:
        lines += ["", "torchao is not installed (`.venv/bin/pip install torchao`): its row and the ratios are missing."]
    return lines, tables, identical


def _same_blocks(a, b):
    return all(torch.equal(getattr(a, n), getattr(b, n)) for n in ("codes", "scales", "precision", "global_scale"))


def model_table(threads, windows, repeat):
    """The embedded model: calibration, plan building and evaluation of an FGMP plan against the
    unquantized evaluation of the same windows, per thread count."""
    from fgmp.golden.policy import build_plan
    from fgmp.quantize import evaluate, prepare

    lines = [f"The embedded model (docs/policy.md §9), {windows} evaluation windows of 256 bytes, 32 calibration "
             f"windows, FGMP at 30 % with clipping; evaluation times best of {repeat} side by side:", "",
             "| threads | calibration (s) | plan (s) | unquantized evaluation (s) | FGMP plan evaluation (s) | "
             "ratio |", "|---:|---:|---:|---:|---:|---:|"]
    results = {}
    for count in threads:
        torch.set_num_threads(count)
        setup = prepare(None, calib_samples=32, eval_samples=windows, progress=False)
        start = time.perf_counter()
        plan = build_plan(setup.calibration, policy="fgmp", fp8_fraction=0.3, clipping=True)
        planning = time.perf_counter() - start
        seconds = side_by_side({"unquantized": lambda: evaluate(setup, progress=False),
                                "fgmp": lambda: evaluate(setup, plan, progress=False)}, repeat)
        ratio = seconds["fgmp"] / seconds["unquantized"]
        results[count] = {"calibration": setup.seconds["calibration"], "plan": planning, **seconds, "ratio": ratio}
        lines.append(f"| {count} | {setup.seconds['calibration']:.2f} | {planning:.2f} | {seconds['unquantized']:.2f} | "
                     f"{seconds['fgmp']:.2f} | {ratio:.2f}x |")
    return lines, results


# ---- scale: a Llama model with Llama-2-7B's layer dimensions ------------------------------------------

def _peak_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: kilobytes


def _gib(tensors):
    return sum(t.numel() * t.element_size() for t in tensors) / 2**30


class _PhasePeak:
    """Peak resident size within one phase: a thread samples /proc/self/statm every few milliseconds
    (ru_maxrss only ever grows, so it cannot tell a later phase's peak from an earlier one's)."""

    def __init__(self, interval=0.002):
        import threading

        self.page = os.sysconf("SC_PAGE_SIZE")
        self.interval, self.peak, self.running = interval, 0, True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _rss(self):
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self):
        while self.running:
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def take(self):
        """The peak since the last take(), in GiB, and start a new phase."""
        peak, self.peak = max(self.peak, self._rss()), self._rss()
        return peak / 2**30

    def stop(self):
        self.running = False
        self.thread.join()


def scale_child(layers, samples, seq_len, eval_windows, threads, dtype):
    """One configuration in this (fresh) process: a JSON line of times and peak memory per phase."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from fgmp.golden.models import LanguageModel, window_losses
    from fgmp.golden.models.evaluate import sequence_loss
    from fgmp.golden.policy import build_plan, calibrate, quantized, select_linear_layers

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    meter = _PhasePeak()
    record = {"layers": layers, "threads": threads, "dtype": dtype, "samples": samples, "seq_len": seq_len,
              "eval_windows": eval_windows, "torch": torch.__version__}
    start = time.perf_counter()
    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                         num_hidden_layers=layers, vocab_size=32000, max_position_embeddings=4096)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype)).eval()
    record["build_s"] = time.perf_counter() - start
    record["weights_gib"] = sum(p.numel() for p in model.parameters()) * 4 / 2**30  # at FP32
    record["layer_weights_gib"] = sum(p.numel() for p in model.model.layers.parameters()) * 4 / 2**30
    lm = LanguageModel(model=model, name=f"llama-7b-dims-{layers}", context=4096, device=torch.device("cpu"),
                       vocab_size=32000)
    generator = torch.Generator().manual_seed(0)
    calib = torch.randint(0, 32000, (samples, seq_len + 1), generator=generator)
    evaluation = torch.randint(0, 32000, (eval_windows, seq_len + 1), generator=generator)
    layers_to_quantize = select_linear_layers(model, exclude="*lm_head*")
    record["quantized_layers"] = len(layers_to_quantize)
    record["build_peak_gib"] = meter.take()

    start = time.perf_counter()
    cal = calibrate(model, list(calib), lambda m, s: sequence_loss(lm, s.unsqueeze(0)), layers_to_quantize,
                    progress=False)
    record["calibration_s"] = time.perf_counter() - start
    record["calibration_peak_gib"] = meter.take()

    start = time.perf_counter()
    plan = build_plan(cal, policy="fgmp", fp8_fraction=0.3, clipping=True)
    record["plan_s"] = time.perf_counter() - start
    record["plan_peak_gib"] = meter.take()
    # What the Calibration keeps for further plans (a sweep): the Fisher, the cached weight scores, the
    # activation scores; the plan itself: codes (1 byte per element), scales and precision bits.
    record["calibration_kept_gib"] = _gib([f.weight for f in cal.fisher.values()] + list(cal.weight_scores.values())
                                          + [t for scores in cal.activation_scores.values() for t in scores.values()])
    record["plan_kept_gib"] = _gib([t for bt in plan.weights.values() for t in (bt.codes, bt.scales, bt.precision)])

    start = time.perf_counter()
    with torch.no_grad():
        losses, counts = window_losses(lm, evaluation, batch_size=1, progress=False)
    record["unquantized_eval_s"] = time.perf_counter() - start
    record["unquantized_ppl"] = math.exp(float(losses.sum()) / int(counts.sum()))
    record["unquantized_eval_peak_gib"] = meter.take()
    start = time.perf_counter()
    with torch.no_grad(), quantized(model, plan):
        losses, counts = window_losses(lm, evaluation, batch_size=1, progress=False)
    record["fgmp_eval_s"] = time.perf_counter() - start
    record["fgmp_ppl"] = math.exp(float(losses.sum()) / int(counts.sum()))
    record["activation_fp8"] = plan.activation_fp8_fraction
    record["eval_peak_gib"] = meter.take()
    # One plan, then evaluation only: the Calibration released first (memory only, one window).
    layers_to_quantize.clear()
    del cal
    gc.collect()
    meter.take()
    start = time.perf_counter()
    with torch.no_grad(), quantized(model, plan):
        window_losses(lm, evaluation[:1], batch_size=1, progress=False)
    record["released_eval_s"] = time.perf_counter() - start
    record["released_eval_peak_gib"] = meter.take()
    meter.stop()
    record["max_rss_gib"] = _peak_gib()
    print(json.dumps(record))


def scale_table(layer_counts, samples, seq_len, eval_windows, threads, dtype):
    records = []
    for layers in layer_counts:
        command = [sys.executable, __file__, "--scale-child", str(layers), "--scale-samples", str(samples),
                   "--scale-seq-len", str(seq_len), "--scale-eval-windows", str(eval_windows),
                   "--scale-threads", str(threads), "--scale-dtype", dtype]
        done = subprocess.run(command, capture_output=True, text=True, check=True,
                              env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        records.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"  {layers} layer(s): {json.dumps(records[-1])}", flush=True)
    return scale_lines(records), records


def scale_lines(records):
    phases = [("model build", "build_s", "build_peak_gib"), ("calibration", "calibration_s", "calibration_peak_gib"),
              ("plan building", "plan_s", "plan_peak_gib"),
              ("unquantized evaluation", "unquantized_eval_s", "unquantized_eval_peak_gib"),
              ("FGMP plan evaluation", "fgmp_eval_s", "eval_peak_gib"),
              ("FGMP plan evaluation, Calibration released (1 window)", "released_eval_s", "released_eval_peak_gib")]
    first = records[0]
    lines = [f"A `transformers` LlamaForCausalLM with Llama-2-7B's dimensions (hidden 4096, intermediate 11008, "
             f"32 heads, vocabulary 32000, untied embeddings), random weights, {first['dtype']}, {first['threads']} "
             f"thread(s), torch {first.get('torch', '?')}: calibration on {first['samples']} windows x "
             f"{first['seq_len']} tokens (one forward and backward each), an FGMP plan at 30 % with clipping, "
             f"evaluation of {first['eval_windows']} windows x {first['seq_len']} tokens. Each configuration runs "
             "in a fresh process; peak = the largest resident size within the phase (sampled every 2 ms).", ""]
    head = "| phase |" + "".join(f" {r['layers']} layer{'s' if r['layers'] > 1 else ''}: s | peak GiB |" for r in records)
    if len(records) > 1:
        head += " per added layer: s | peak GiB | 32 layers (extrapolated): s | peak GiB |"
    lines += [head, "|---|" + "---:|---:|" * len(records) + ("---:|---:|---:|---:|" if len(records) > 1 else "")]
    for label, time_key, peak_key in phases:
        cells = "".join(f" {r[time_key]:.1f} | {r[peak_key]:.2f} |" for r in records)
        if len(records) > 1:
            a, b = records[0], records[-1]
            slope = (b[time_key] - a[time_key]) / (b["layers"] - a["layers"])
            peak_slope = (b[peak_key] - a[peak_key]) / (b["layers"] - a["layers"])
            cells += (f" {slope:.1f} | {peak_slope:.2f} | {a[time_key] + slope * (32 - a['layers']):,.0f} | "
                      f"{a[peak_key] + peak_slope * (32 - a['layers']):.1f} |")
        lines.append(f"| {label} |" + cells)
    layer_gib = first["layer_weights_gib"] / first["layers"]
    lines += ["", f"One decoder layer's FP32 weights: {layer_gib:.3f} GiB (7 Linear layers, all quantized); the "
              f"embedding and the untied head add {first['weights_gib'] - first['layer_weights_gib']:.3f} GiB."]
    for r in records:
        total = r["calibration_s"] + r["plan_s"] + r["fgmp_eval_s"]
        peak = max(r[k] for _, _, k in phases[:-1])
        lines.append("")
        lines.append(
            f"{r['layers']} layer(s): {r['quantized_layers']} Linear layers quantized; calibration + plan + FGMP "
            f"evaluation {total:.0f} s ({total / 60:.1f} min); peak {peak:.2f} GiB = "
            f"{peak / r['weights_gib']:.2f}x the model's FP32 weights ({r['weights_gib']:.2f} GiB); "
            f"FGMP evaluation {r['fgmp_eval_s'] / r['unquantized_eval_s']:.2f}x the unquantized one "
            f"(activation blocks in FP8: {100 * r['activation_fp8']:.1f} %; perplexity {r['unquantized_ppl']:,.0f} "
            f"-> {r['fgmp_ppl']:,.0f} on random tokens).")
    lines += ["", f"Kept in memory beside the model's weights: the Calibration (Fisher, weight and activation scores, "
              f"kept for further plans) {first['calibration_kept_gib'] / first['layers']:.3f} GiB and the plan "
              f"(codes, scales, precision) {first['plan_kept_gib'] / first['layers']:.3f} GiB per decoder layer; "
              "during the FGMP evaluation the planned layers also hold their dequantized FP32 weights "
              "(the originals are restored on exit)."]
    if len(records) > 1:
        a, b = records[0], records[-1]
        per_layer = {k: (b[k] - a[k]) / (b["layers"] - a["layers"]) for _, _, k in phases}
        weights32 = a["weights_gib"] + (32 - a["layers"]) * layer_gib
        for label, keys in (("with the Calibration kept (a sweep)", [k for _, _, k in phases[:-1]]),
                            ("with the Calibration released before evaluation (one plan)",
                             ["calibration_peak_gib", "plan_peak_gib", "released_eval_peak_gib"])):
            key = max(keys, key=lambda k: a[k] + per_layer[k] * (32 - a["layers"]))
            grow, peak32 = per_layer[key], a[key] + per_layer[key] * (32 - a["layers"])
            lines += ["", f"Peak memory {label}: {grow:.2f} GiB more per added decoder layer = {grow / layer_gib:.2f}x "
                      f"the layer's FP32 weights; extrapolated to 32 layers {peak32:.1f} GiB = "
                      f"{peak32 / weights32:.2f}x the model's FP32 weights ({weights32:.1f} GiB)."]
    return lines


def write_docs(section, lines):
    begin, end = MARKERS[section]
    text = DOC.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"error: {DOC} has no {begin} ... {end} section")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    body = "\n".join(lines)
    DOC.write_text(f"{head}{begin}\n\nGenerated by `python bench/policy_speed.py {' '.join(sys.argv[1:])}` "
                   f"({time.strftime('%Y-%m-%d')}); do not edit by hand.\n\n{body}\n\n{end}{tail}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--windows", type=int, default=32, help="evaluation windows of the embedded model")
    parser.add_argument("--skip-quantizers", action="store_true")
    parser.add_argument("--skip-model", action="store_true")
    parser.add_argument("--scale", action="store_true", help="also the Llama-2-7B-dimension model (minutes)")
    parser.add_argument("--scale-layers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--scale-samples", type=int, default=32)
    parser.add_argument("--scale-seq-len", type=int, default=512)
    parser.add_argument("--scale-eval-windows", type=int, default=8)
    parser.add_argument("--scale-threads", type=int, default=2)
    parser.add_argument("--scale-dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--scale-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--write-docs", action="store_true", help="update docs/policy.md §10")
    args = parser.parse_args()
    if args.scale_child:
        scale_child(args.scale_child, args.scale_samples, args.scale_seq_len, args.scale_eval_windows,
                    args.scale_threads, args.scale_dtype)
        return
    speed = []
    if not args.skip_quantizers:
        lines, _, _ = quantizer_tables(args.threads, args.repeat)
        speed += lines
        print("\n".join(lines), flush=True)
    if not args.skip_model:
        lines, _ = model_table(args.threads, args.windows, max(3, args.repeat // 2))
        speed += [""] + lines if speed else lines
        print("\n" + "\n".join(lines), flush=True)
    if args.write_docs and speed:
        write_docs("speed", speed)
    if args.scale:
        lines, _ = scale_table(args.scale_layers, args.scale_samples, args.scale_seq_len, args.scale_eval_windows,
                               args.scale_threads, args.scale_dtype)
        print("\n" + "\n".join(lines), flush=True)
        if args.write_docs:
            write_docs("scale", lines)


if __name__ == "__main__":
    main()
