"""How often the activation unit's truncated score decides differently from the exact real-number score,
on activations captured from the embedded model running under the FGMP policy (numerics §9).

    python bench/actq_agreement.py [--fractions 0.1 0.3 0.5] [--windows 16]

For each FP8 budget: calibrate the policy, run held-out windows with weights and activations quantized,
capture every quantized layer's BF16 input blocks, and compare golden.quantize_activations (the unit,
bit-exact) with golden.exact_decisions (exact rationals) under that layer's registers (k, f, T).
Also counts the blocks whose exact score lies within 2**-9 (relative) of T: the only ones where the
truncation can matter."""

import argparse
import time
from fractions import Fraction

import torch

from fgmp import golden


def capture(setup, plan, windows):
    from fgmp.golden.policy import quantized

    inputs = {name: [] for name in setup.layers}
    hooks = [layer.register_forward_pre_hook(
        lambda module, args, name=name: inputs[name].append(args[0].detach().to(torch.bfloat16).cpu()))
        for name, layer in setup.layers.items()]
    try:
        with torch.no_grad(), quantized(setup.lm.model, plan):
            setup.lm.logits(setup.eval_sequences[:windows, :-1])
    finally:
        for hook in hooks:
            hook.remove()
    return {name: torch.cat([x.reshape(-1, x.shape[-1]) for x in xs]) for name, xs in inputs.items()}


def agreement(inputs, plan):
    blocks = disagree = near = fp8 = 0
    for name, x in inputs.items():
        config = plan.activations[name].config
        unit = golden.quantize_activations(x, config).blocks.precision
        scores, _ = golden.exact_scores(x, config)
        threshold = Fraction(config.threshold)
        exact = torch.tensor([s is None or s > threshold for s in scores]).reshape(unit.shape)
        near += sum(1 for s in scores if s is not None and abs(s - threshold) <= threshold / 512)
        blocks += unit.numel()
        disagree += int((unit != exact).sum())
        fp8 += int(unit.sum())
    return blocks, disagree, near, fp8


def main():
    from fgmp.golden.policy import build_plan
    from fgmp.quantize import prepare

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.3, 0.5])
    parser.add_argument("--windows", type=int, default=16, help="held-out windows of 256 tokens captured")
    args = parser.parse_args()
    setup = prepare(eval_samples=args.windows, progress=False)
    print(f"{setup.lm.name}: {len(setup.layers)} layers, {args.windows} held-out windows of "
          f"{setup.eval_sequences.shape[1] - 1} tokens, FGMP plans with clipping\n")
    print("| requested FP8 | activation blocks | unit FP8 | within 2^-9 of T | decisions differing | agreement |")
    print("|---:|---:|---:|---:|---:|---:|")
    for fraction in args.fractions:
        start = time.perf_counter()
        plan = build_plan(setup.calibration, policy="fgmp", fp8_fraction=fraction)
        blocks, disagree, near, fp8 = agreement(capture(setup, plan, args.windows), plan)
        print(f"| {fraction:.0%} | {blocks:,} | {fp8 / blocks:.1%} | {near:,} | {disagree:,} | "
              f"{100 * (1 - disagree / blocks):.4f} % |   <!-- {time.perf_counter() - start:.0f} s -->")


if __name__ == "__main__":
    main()
