"""Policy speed: Fisher calibration time on the embedded model, and golden NVFP4 quantization throughput
next to a straightforward FP32 step-by-step recipe on the same tensors.

    python bench/policy_speed.py [--elements 16777216] [--calib-samples 8 32] [--repeat 3]

Prints two Markdown tables. CPU only unless a GPU is present (the model's device then follows
fgmp.golden.models.pick_device; the quantizers always run on the CPU)."""

import argparse
import time

import torch

from fgmp import golden
from fgmp.golden.recipes import nvfp4_fp32_divide


def _best_of(repeat, run):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result


def quantizer_throughput(elements, repeat):
    generator = torch.Generator().manual_seed(0)
    rows = elements // 4096
    x = torch.randn(rows, 4096, generator=generator) * torch.rand(rows, 1, generator=generator).pow(4) * 8
    golden_seconds, bt = _best_of(repeat, lambda: golden.quantize_nvfp4(x))
    recipe_seconds, (codes, scale_codes) = _best_of(repeat, lambda: nvfp4_fp32_divide(x))
    differ = int((golden.dequantize(bt) != golden.dequantize(golden.BlockTensor(
        codes=codes.reshape(bt.codes.shape), scales=scale_codes.reshape(bt.scales.shape),
        precision=bt.precision, global_scale=bt.global_scale))).sum())
    print(f"\nNVFP4 quantization of {x.numel():,} FP32 elements ({torch.get_num_threads()} threads, best of {repeat})\n")
    print("| quantizer | seconds | elements/s | ratio to FP32 recipe |")
    print("|---|---:|---:|---:|")
    for name, seconds in (("golden (exact rational RNE)", golden_seconds),
                          ("FP32 step-by-step divide recipe", recipe_seconds)):
        print(f"| {name} | {seconds:.3f} | {x.numel() / seconds:,.0f} | {recipe_seconds / seconds:.2f}x |")
    print(f"\nelements whose dequantized value differs between the two: {differ}")


def fisher_time(sample_counts, seq_len):
    from fgmp.golden.models import default_corpus, load_default_model, token_sequences
    from fgmp.golden.models.evaluate import sequence_loss
    from fgmp.golden.policy import calibrate, estimate_fisher, select_linear_layers

    lm = load_default_model()
    corpus = default_corpus()
    ids = lm.encode(corpus.train)
    layers = select_linear_layers(lm.model, exclude="*lm_head*")
    loss = lambda model, sample: sequence_loss(lm, sample.unsqueeze(0))  # noqa: E731
    print(f"\nCalibration of {lm.name} ({len(layers)} Linear layers, {seq_len}-token windows, "
          f"{torch.get_num_threads()} threads, device {lm.device})\n")
    print("| samples | Fisher (s) | Fisher + activation scores (s) | per sample (s) |")
    print("|---:|---:|---:|---:|")
    for count in sample_counts:
        samples = list(token_sequences(ids, seq_len, count=count, seed=0))
        start = time.perf_counter()
        estimate_fisher(lm.model, samples, loss, layers, progress=False)
        fisher_seconds = time.perf_counter() - start
        start = time.perf_counter()
        calibrate(lm.model, samples, loss, layers, progress=False)
        total = time.perf_counter() - start
        print(f"| {count} | {fisher_seconds:.2f} | {total:.2f} | {total / count:.3f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=1 << 24)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--calib-samples", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--skip-fisher", action="store_true")
    args = parser.parse_args()
    quantizer_throughput(args.elements, args.repeat)
    if not args.skip_fisher:
        fisher_time(args.calib_samples, args.seq_len)


if __name__ == "__main__":
    main()
