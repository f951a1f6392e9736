"""How often do the FP32 recipes of other libraries agree with the exact NVFP4 quantizer?

    python bench/agreement.py [--elements N] [--seed S]

For each data set, quantizes the same FP32 tensor with ``fgmp.golden.quantize_nvfp4`` (the contract:
every scale and element rounded once from the exact value) and with each recipe of
``fgmp.golden.recipes`` (FP32 operation chains), and prints a Markdown table of how many scale codes and
element codes agree, followed by one differing element taken apart. Seeded and deterministic.
"""

import argparse
import math

import torch

from fgmp.golden import E2M1, UE4M3, decode, quantize_nvfp4
from fgmp.golden.recipes import nvfp4_fp32_divide, nvfp4_fp32_divide_clamped, nvfp4_fp32_reciprocal

BLOCK_SIZE = 16
RECIPES = {
    "fp32 reciprocal (TE)": nvfp4_fp32_reciprocal,
    "fp32 divide (ModelOpt)": nvfp4_fp32_divide,
    "fp32 divide, scale >= 2^-6 (torchao)": nvfp4_fp32_divide_clamped,
}
_RANDOM_BITS_LIMIT = 1e30


def _standard_normal(n, gen):
    return torch.randn(n, generator=gen)


def _student_t2(n, gen):
    # t with 2 degrees of freedom is Z / sqrt(chi2_2 / 2), and chi2_2 / 2 is a unit exponential.
    z = torch.randn(n, generator=gen, dtype=torch.float64)
    e = torch.empty(n, dtype=torch.float64).exponential_(generator=gen)
    return (z / e.sqrt()).to(torch.float32)


def _log_normal(n, gen):
    # |x| = e^(3z): at 2**22 samples the magnitudes span about 14 decades.
    magnitude = torch.exp(3.0 * torch.randn(n, generator=gen, dtype=torch.float64))
    sign = torch.randint(0, 2, (n,), generator=gen) * 2 - 1
    return (sign * magnitude).to(torch.float32)


def _random_bits(n, gen):
    # Rejection keeps every finite pattern below the limit equally likely (zeros and subnormals included).
    kept, count = [], 0
    while count < n:
        bits = torch.randint(-(2**31), 2**31, (n,), generator=gen, dtype=torch.int64).to(torch.int32)
        x = bits.view(torch.float32)
        x = x[torch.isfinite(x) & (x.abs() < _RANDOM_BITS_LIMIT)]
        kept.append(x)
        count += x.numel()
    return torch.cat(kept)[:n]


DATA_SETS = {
    "standard normal": _standard_normal,
    "Student-t, 2 dof": _student_t2,
    "log-normal e^(3z), random sign": _log_normal,
    # No "|x|" here: a pipe would split the Markdown table cell.
    "random finite FP32 bits, abs < 1e30": _random_bits,
}


def make_data(name, n_elements, seed):
    """The data set ``name`` as a float32 tensor of ``n_elements``; each set has its own generator."""
    index = list(DATA_SETS).index(name)
    gen = torch.Generator().manual_seed(seed * len(DATA_SETS) + index)
    return DATA_SETS[name](n_elements, gen)


def _first_difference(exact, codes, scales):
    """Flat index of one differing element, preferring one whose block scales agree (a pure element case)."""
    differs = (codes != exact.codes).reshape(-1)
    same_scale = (scales == exact.scales).reshape(-1).repeat_interleave(BLOCK_SIZE)
    for candidates in (differs & same_scale, differs):
        hits = candidates.nonzero()
        if hits.numel():
            return int(hits[0])
    return None


def _example(x, exact, codes, scales, index):
    block = index // BLOCK_SIZE
    return {
        "index": index,
        "x": x.reshape(-1)[index].item(),
        "global_scale": exact.global_scale.item(),
        "block_amax": x.reshape(-1, BLOCK_SIZE)[block].abs().max().item(),
        "exact_scale": int(exact.scales.reshape(-1)[block]),
        "recipe_scale": int(scales.reshape(-1)[block]),
        "exact_code": int(exact.codes.reshape(-1)[index]),
        "recipe_code": int(codes.reshape(-1)[index]),
    }


def _compare(x, exact, recipe):
    """The agreement counts of one recipe on ``x``, and one differing element (None if all agree)."""
    codes, scales = recipe(x, BLOCK_SIZE)
    element_diffs = int((codes != exact.codes).sum())
    scale_diffs = int((scales != exact.scales).sum())
    counts = {
        "blocks": scales.numel(),
        "scale_diffs": scale_diffs,
        "scale_agreement_pct": 100.0 * (1 - scale_diffs / scales.numel()),
        "elements": codes.numel(),
        "element_diffs": element_diffs,
        "element_agreement_pct": 100.0 * (1 - element_diffs / codes.numel()),
    }
    index = _first_difference(exact, codes, scales)
    return counts, None if index is None else _example(x, exact, codes, scales, index)


def _run(n_elements, seed):
    if n_elements <= 0 or n_elements % BLOCK_SIZE:
        raise ValueError(f"Element count must be a positive multiple of {BLOCK_SIZE}, not {n_elements}")
    rows, examples = [], []
    for name in DATA_SETS:
        x = make_data(name, n_elements, seed)
        exact = quantize_nvfp4(x, block_size=BLOCK_SIZE)
        for recipe_name, recipe in RECIPES.items():
            labels = {"data_set": name, "recipe": recipe_name}
            counts, example = _compare(x, exact, recipe)
            rows.append(labels | counts)
            if example is not None:
                examples.append(labels | example)
    return rows, examples


def measure(n_elements=2**22, seed=0):
    """One dict per (data set, recipe): block and element counts, differences and agreement percentages."""
    return _run(n_elements, seed)[0]


def _pct(value):
    return "100%" if value == 100.0 else f"{value:.6f}%"


_COLUMNS = ("data set", "recipe", "scale codes agree", "differing scales", "element codes agree",
            "differing elements")


def format_table(rows):
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        cells = (
            r["data_set"], r["recipe"], _pct(r["scale_agreement_pct"]), f"{r['scale_diffs']:,}",
            _pct(r["element_agreement_pct"]), f"{r['element_diffs']:,}",
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _code_text(code, fmt):
    value = decode(torch.tensor([code], dtype=torch.uint8), fmt).item()
    return f"0x{code:X} ({value:g})"


def format_example(e):
    g, x = e["global_scale"], e["x"]
    exact_scale = decode(torch.tensor([e["exact_scale"]], dtype=torch.uint8), UE4M3).item()
    bits = torch.tensor([x], dtype=torch.float32).view(torch.int32).item() & 0xFFFFFFFF
    # G * s is exact in float64 and the quotient is rounded once, at 2**-53: fine enough to show how
    # close x sits to an E2M1 midpoint, which is what FP32 rounding (2**-24 a step) can cross.
    quotient = x / (g * exact_scale) if exact_scale else math.nan
    kind = "same block scale" if e["exact_scale"] == e["recipe_scale"] else "different block scale"
    scale = f"exact {_code_text(e['exact_scale'], UE4M3)}, recipe {_code_text(e['recipe_scale'], UE4M3)}"
    code = f"exact {_code_text(e['exact_code'], E2M1)}, recipe {_code_text(e['recipe_code'], E2M1)}"
    return "\n".join([
        f"Example ({e['data_set']}, {e['recipe']}, element {e['index']:,}, {kind}):",
        f"  x = {x!r} (FP32 bits 0x{bits:08X}), block amax = {e['block_amax']!r}, G = {g!r}",
        f"  block scale: {scale}",
        f"  x / (G * exact scale) = {quotient!r}",
        f"  element code: {code}",
    ])


def _pick_example(examples):
    """Prefer a difference in a block whose scales agree: it isolates the FP32 rounding of one element."""
    order = list(DATA_SETS)
    return min(
        examples,
        key=lambda e: (e["exact_scale"] != e["recipe_scale"], order.index(e["data_set"])),
        default=None,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=2**22, help="elements per data set (multiple of 16)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    try:
        rows, examples = _run(args.elements, args.seed)
    except ValueError as error:
        parser.error(str(error))
    print(format_table(rows))
    print()
    example = _pick_example(examples)
    print(format_example(example) if example else "No recipe differs from the exact quantizer on these data.")
    print()
    total = sum(r["elements"] for r in rows)
    print(
        f"Total: {total:,} element codes compared ({len(DATA_SETS)} data sets x {len(RECIPES)} recipes "
        f"x {args.elements:,} elements, seed {args.seed})."
    )


if __name__ == "__main__":
    main()
