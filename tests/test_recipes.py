"""FP32 step-by-step recipes vs the exact quantizer: rare, explained differences only (numerics §4)."""

import torch

from fgmp import golden
from fgmp.golden import recipes


def heavy_tailed(n, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.distributions.StudentT(2.0).sample((n,)).to(torch.float32) * torch.rand(n, generator=gen)


def test_fp32_recipes_agree_with_exact_rounding_almost_everywhere():
    x = heavy_tailed(1 << 18, 0).reshape(-1, 256)
    exact = golden.quantize_nvfp4(x)
    for recipe in (recipes.nvfp4_fp32_reciprocal, recipes.nvfp4_fp32_divide):
        codes, scales = recipe(x)
        assert codes.shape == exact.codes.shape and scales.shape == exact.scales.shape
        assert (scales != exact.scales).sum() <= 2
        assert (codes != exact.codes).sum() <= 16


def test_clamped_recipe_differs_only_where_the_exact_scale_is_subnormal():
    """torchao-style clamping of the block scale to >= 2**-6 is the only source of its disagreements."""
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(1 << 16, generator=gen) * torch.exp(3 * torch.randn(1 << 16, generator=gen))).reshape(-1, 64)
    exact = golden.quantize_nvfp4(x)
    codes, scales = recipes.nvfp4_fp32_divide_clamped(x)
    subnormal_scale = exact.scales < 0x08
    differing = (scales != exact.scales) | (codes != exact.codes).any(dim=-1)
    assert differing.any(), "the data must reach subnormal block scales for this test to mean anything"
    assert not (differing & ~subnormal_scale).any()
