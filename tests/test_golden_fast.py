"""The fast exact kernels (golden/kernels.py, docs/numerics.md §2.1 and §9.1) against the reference
implementations they replace: exhaustively for the element rounding of the activation unit (every BF16
value against every UE4M3 scale), with hypothesis and crafted near-ties for the block quantizer, and on
every path of the activation unit (fast blocks, the exact scores near T, non-finite and saturating
blocks, chunking). A CUDA test runs where a GPU exists."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fgmp import golden
from fgmp.golden import kernels
from fgmp.golden.actq import (
    fake_quantize_activations, fake_quantize_blocks, quantize_activations_reference,
)
from fgmp.golden.blocks import dequantize_reference, quantize_blocks_reference
from fgmp.golden.formats import E2M1, E4M3, UE4M3, encode_ratio

SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _bits(t):
    return t.view(torch.int32) if t.dtype == torch.float32 else t


def _every_bf16_over_every_scale():
    """(x, s): every finite BF16 value (both signs) against every non-zero finite UE4M3 scale."""
    x = (torch.arange(1 << 16, dtype=torch.int32) << 16).view(torch.float32)
    x = x[torch.isfinite(x)]
    s = UE4M3._code_values[1:0x7F].to(torch.float32)
    return x.unsqueeze(0).expand(s.numel(), -1), s.unsqueeze(1).expand(-1, x.numel())


@pytest.mark.parametrize("fmt", ["e2m1", "e4m3"])
def test_element_rounding_of_every_bf16_value_at_every_scale(fmt):
    """numerics §9.1: one FP32 division of a BF16 value by a UE4M3 scale, then the cast / table (codes)
    or the magic addition (values), is the exact RNE of the ratio; 8.2 M pairs per format."""
    x, s = _every_bf16_over_every_scale()
    y = x / s
    reference = encode_ratio(x, s, E2M1 if fmt == "e2m1" else E4M3)
    if fmt == "e2m1":
        codes, _ = kernels.e2m1_codes(y, y.abs())
    else:
        codes = kernels._e4m3_codes(y)
    rounded = kernels.round_to_grid(y.abs(), fmt == "e4m3")
    assert torch.equal(codes, reference)
    table = kernels.tables("cpu").e2m1 if fmt == "e2m1" else kernels.tables("cpu").e4m3
    assert torch.equal(rounded, table[(reference & (0x7 if fmt == "e2m1" else 0x7F)).long()])


def test_scale_rounding_of_every_bf16_amax_at_every_exponent():
    """RNE_UE4M3(amax' / 6) and (amax' / 448) from one FP32 division by 6 * 2**k and 448 * 2**k."""
    amax = (torch.arange(0x7F80, dtype=torch.int32) << 16).view(torch.float32)  # every finite |BF16|
    low, high = kernels.ACTIVATION_FAST_EXPONENTS
    for k in (*range(low, high, 7), -1, 1, high):
        for element_max in (6.0, 448.0):
            fast = kernels._e4m3_codes(amax / torch.tensor(element_max * 2.0**k))
            exact = encode_ratio(amax.double() * 2.0**-k, torch.tensor(element_max, dtype=torch.float64), UE4M3)
            assert torch.equal(fast, exact), (k, element_max)


# ----------------------------------------------------------------------------------- block quantizer


def _check_blocks(x, precision, **kwargs):
    fast = golden.quantize_blocks(x, precision, **kwargs)
    reference = quantize_blocks_reference(x, precision, **kwargs)
    for name in ("codes", "scales", "precision", "global_scale"):
        assert torch.equal(getattr(fast, name), getattr(reference, name)), name
    assert torch.equal(_bits(golden.dequantize(fast)), _bits(dequantize_reference(reference)))
    return fast


@settings(max_examples=60, **SETTINGS)
@given(st.integers(0, 2**32 - 1), st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
       st.sampled_from(["normal", "heavy", "bits", "ties", "integers"]), st.floats(0, 1),
       st.sampled_from([16, 32, 8]), st.booleans())
def test_quantize_blocks_matches_the_reference(seed, dtype, data, fp8_share, block_size, custom_scale):
    g = torch.Generator().manual_seed(seed)
    rows, cols = 7, 4 * block_size
    if data == "normal":
        x = torch.randn(rows, cols, generator=g)
    elif data == "heavy":
        x = torch.randn(rows, cols, generator=g) * torch.exp(torch.randn(rows, cols, generator=g) * 4)
    elif data == "bits":  # random finite FP32 bit patterns below 1e30
        x = torch.randint(-(2**31), 2**31 - 1, (rows, cols), generator=g, dtype=torch.int32).view(torch.float32)
        x = torch.where(torch.isfinite(x) & (x.abs() < 1e30), x, 0.0)
    elif data == "ties":  # exact midpoints under a G with few significant bits
        x = torch.randint(-13, 14, (rows, cols), generator=g) * 0.25 * 3 * 2.0**-7
    else:
        x = torch.randint(-100, 100, (rows, cols), generator=g).float()
    x = x.clamp(-6e4, 6e4).to(dtype) if dtype == torch.float16 else x.to(dtype)
    precision = torch.rand(rows, cols // block_size, generator=g) < fp8_share
    scale = float(torch.tensor(x.float().abs().max().item() / 1000 + 1e-30).float()) if custom_scale else None
    _check_blocks(x, precision, block_size=block_size, scale=scale)


def test_near_ties_under_a_24_bit_global_scale_take_the_reference():
    """x chosen one FP32 ulp from G * s * midpoint: the nudged quotients straddle the midpoint, so the
    reference settles those blocks, and every code equals the reference's."""
    g = torch.Generator().manual_seed(3)
    G = torch.tensor(0.7134521, dtype=torch.float32)  # 24 significant bits
    scales = UE4M3._code_values[torch.randint(40, 100, (64, 4), generator=g)].to(torch.float32)
    mids = E2M1._midpoints[torch.randint(0, 7, (64, 4, 16), generator=g)].to(torch.float32)
    x = (G.double() * scales.double().unsqueeze(-1) * mids.double()).float()
    x = torch.nextafter(x, torch.where(torch.rand(x.shape, generator=g) < 0.5, 0.0, 1e30)).reshape(64, 64)
    x[:, ::16] = (G * scales * 6).reshape(64, 4)  # each block's amax: its scale is the chosen one
    bt = _check_blocks(x, torch.tensor(False), scale=G)
    assert bt.codes.any()


def test_bracket_flags_only_near_midpoints():
    """On Gaussian data the nudged quotients disagree for about one element in 10**5: the fallback is
    the exception, not the path."""
    x = torch.randn(512, 1024, generator=torch.Generator().manual_seed(0))
    rows = x.reshape(-1, 16)
    g = golden.global_scale(x)
    scales = golden.quantize_nvfp4(x).scales.reshape(-1)
    r = (1.0 / g.double()).float() / kernels.tables("cpu").ue4m3[scales.long()]
    for fp8 in (False, True):
        if fp8:
            _, undecided = kernels._fp8_codes(rows, rows.abs(), r, (r * (1 - kernels._NUDGE), r * (1 + kernels._NUDGE)))
        else:
            _, undecided = kernels._fp4_codes(rows, rows.abs(), r, None, kernels.tables("cpu"))
        assert int(undecided.sum()) < 1e-4 * rows.numel()


def test_chunks_and_extreme_global_scales():
    x = torch.randn(300, 1024, generator=torch.Generator().manual_seed(1))  # more than one chunk
    _check_blocks(x, torch.rand(300, 64) < 0.3)
    _check_blocks(x * 1e-33, torch.tensor(True))  # G below 2**-100: the reference runs
    _check_blocks(x[:4], torch.tensor(False), scale=2.0**-120)
    _check_blocks(torch.zeros(2, 32), torch.tensor(False))


# ---------------------------------------------------------------------------------- activation unit


def _bf16_activations(seed, rows, cols, specials):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g) * torch.exp(torch.randn(rows, 1, generator=g) * 2)
    if specials:
        x[0, :16] = 0.0
        x[1, :16] = -0.0
        x[2, 3] = float("nan")
        x[3, 5] = float("inf")
        x[4, 7] = -float("inf")
        x[5, 9] = 1e6  # saturates the NVFP4 scale at small k
        x[6, 16:32] = 1e-30  # underflows: zero scales
    return x.bfloat16()


def _check_activations(x, config):
    fast = golden.quantize_activations(x, config)
    reference = quantize_activations_reference(x, config)
    for name in ("codes", "scales", "precision", "global_scale"):
        assert torch.equal(getattr(fast.blocks, name), getattr(reference.blocks, name)), name
    assert torch.equal(fast.scores, reference.scores) and fast.scores.dtype == torch.float64
    assert torch.equal(fast.forced_fp8, reference.forced_fp8)
    values, precision = fake_quantize_activations(x, config)
    assert torch.equal(precision, reference.blocks.precision)
    assert torch.equal(_bits(values), _bits(dequantize_reference(reference.blocks)))
    return reference


@settings(max_examples=40, **SETTINGS)
@given(st.integers(0, 2**32 - 1), st.integers(-45, 45), st.booleans(), st.sampled_from([0.0, 0.5, 0.9, 1.0]))
def test_activation_unit_matches_the_reference(seed, k, specials, quantile):
    x = _bf16_activations(seed, 24, 64, specials) * 2.0**k
    f = torch.randint(0, 0x7F, (64,), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    probe = quantize_activations_reference(x, golden.ActivationConfig(k, math.inf, f)).scores
    finite = probe[torch.isfinite(probe)].float()
    threshold = math.inf if quantile == 1.0 else float(finite.quantile(quantile)) if finite.numel() else 0.0
    _check_activations(x, golden.ActivationConfig(k, threshold, f))


def test_thresholds_at_and_next_to_scores_take_the_exact_path():
    """T equal to a block's exact score, and one FP32 ulp either side: the FP32 sum cannot decide, the
    exact scores do (score > T is FP8)."""
    x = _bf16_activations(5, 16, 64, False)
    f = torch.randint(0x20, 0x60, (64,), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
    scores = quantize_activations_reference(x, golden.ActivationConfig(0, math.inf, f)).scores
    exact32 = scores[scores == scores.float().double()]
    assert exact32.numel()
    t = torch.tensor(float(exact32[0]), dtype=torch.float32)
    for threshold in (t, torch.nextafter(t, torch.tensor(0.0)), torch.nextafter(t, torch.tensor(1e30))):
        _check_activations(x, golden.ActivationConfig(0, float(threshold), f))


def test_activation_chunks_outside_fast_exponents_and_empty():
    f = torch.full((256,), 0x38, dtype=torch.uint8)
    x = _bf16_activations(7, 1100, 256, True)  # more than one chunk
    _check_activations(x, golden.ActivationConfig(-2, 0.0625, f))
    _check_activations(x[:8], golden.ActivationConfig(90, 0.0, f))  # |k| > 40: the reference
    empty = golden.quantize_activations(torch.zeros(0, 256, dtype=torch.bfloat16), golden.ActivationConfig(0, 1.0, f))
    assert empty.blocks.codes.shape == (0, 16, 16)


def test_fake_quantize_blocks_is_quantize_then_dequantize():
    x = _bf16_activations(9, 40, 64, False)
    x[5, 9] = 1e6
    precision = torch.rand(40, 4, generator=torch.Generator().manual_seed(9)) < 0.4
    for k in (-3, 0, 12):
        config = golden.ActivationConfig(k, math.inf, torch.zeros(64, dtype=torch.uint8))
        want = dequantize_reference(quantize_blocks_reference(x, precision, scale=2.0**k))
        assert torch.equal(_bits(fake_quantize_blocks(x, precision, config)), _bits(want))
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="Input contains NaN or Inf; block quantization needs finite values"):
        fake_quantize_blocks(bad, precision, config)


def test_fast_blocks_never_truncate_d():
    """numerics §9.1: in finite blocks with amax' <= 2688 both candidates lie within a factor 2 of x',
    so |D| has at most 10 significant bits and the 12-bit truncation of the score is a no-op there."""
    x = _bf16_activations(11, 512, 256, False)
    f = torch.full((256,), 0x38, dtype=torch.uint8)
    from fgmp.golden.actq import _perturbation
    for k in (-4, 0, 3):
        scaled, finite, _, _, d = _perturbation(x, golden.ActivationConfig(k, 0.0, f), 16)
        fast = scaled.abs().amax(dim=-1) <= 2688
        magnitude = d.abs()[fast]
        magnitude = magnitude[magnitude > 0]
        lowest = magnitude & -magnitude  # the lowest set bit
        assert int((magnitude // lowest).max()) < 2**10


# --------------------------------------------------------------------------------------------- CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_kernels_match_the_cpu_and_stay_on_the_device():
    device = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    w = torch.randn(256, 512, generator=g)
    precision = torch.rand(256, 32, generator=g) < 0.3
    cpu = golden.quantize_blocks(w, precision)
    gpu = golden.quantize_blocks(w.to(device), precision.to(device))
    assert gpu.codes.device.type == "cuda" and gpu.global_scale.device.type == "cuda"
    for name in ("codes", "scales", "precision", "global_scale"):
        assert torch.equal(getattr(gpu, name).cpu(), getattr(cpu, name))
    assert torch.equal(_bits(golden.dequantize(gpu).cpu()), _bits(golden.dequantize(cpu)))
    x = _bf16_activations(1, 64, 512, True)
    f = torch.randint(0, 0x7F, (512,), generator=g, dtype=torch.uint8)
    config = golden.ActivationConfig(-3, 0.01, f)
    reference = quantize_activations_reference(x, config)
    fast = golden.quantize_activations(x.to(device), golden.ActivationConfig(-3, 0.01, f.to(device)))
    assert fast.blocks.codes.device.type == "cuda"
    assert torch.equal(fast.blocks.codes.cpu(), reference.blocks.codes)
    assert torch.equal(fast.scores.cpu(), reference.scores)
    values, precision = fake_quantize_activations(x.to(device), config)
    assert values.device.type == "cuda"
    assert torch.equal(_bits(values.cpu()), _bits(dequantize_reference(reference.blocks)))


# ------------------------------------------------------------------------- policy fast paths (issue 18)


def _clip_oracle(weight, fisher, candidates):
    """Scale clipping from the reference quantizer alone: every candidate code's blocks through
    quantize_blocks_reference, the exact float64 dequantized value G * s * dec(code), the Fisher-weighted
    block error in float64; the first (largest) code of the smallest error wins."""
    plain = quantize_blocks_reference(weight, torch.tensor(False))
    g = plain.global_scale.double()
    e2m1, ue4m3 = E2M1._code_values, UE4M3._code_values
    best_codes, best_error = None, None
    for step in range(candidates):
        codes = (plain.scales.long() - step).clamp(min=0).to(torch.uint8)
        bt = quantize_blocks_reference(weight, torch.tensor(False), scale=plain.global_scale, block_scales=codes)
        values = e2m1[bt.codes.long()] * ue4m3[bt.scales.long()].unsqueeze(-1) * g
        blocks = weight.double().reshape(values.shape)
        error = ((blocks - values).pow(2) * fisher.double().reshape(values.shape)).sum(dim=-1)
        if best_codes is None:
            best_codes, best_error = codes, error
            continue
        better = error < best_error
        best_codes, best_error = torch.where(better, codes, best_codes), torch.where(better, error, best_error)
    return best_codes


@pytest.mark.parametrize("seed", [0, 1])
def test_clip_nvfp4_scales_matches_the_reference_paths(seed):
    """The fast clipping loop (one fast quantization per candidate, errors from exact FP32 s * dec
    products) picks the same codes as _clip_reference (quantize_blocks + weighted_error) and as an
    oracle built on quantize_blocks_reference alone: rows spanning several cache chunks, heavy tails,
    zero blocks, tiny blocks whose candidates reach scale code 0, Fisher zeros (ties keep the larger
    scale), and a global scale outside the fast range (the reference fallback)."""
    from fgmp.golden.policy.weights import _clip_reference, clip_nvfp4_scales

    g = torch.Generator().manual_seed(seed)
    rows, cols = 160, 2048  # 128 rows per CPU chunk at this width: two chunks
    weight = torch.randn(rows, cols, generator=g) * torch.rand(rows, cols, generator=g).pow(4) * 3
    weight[3, :64] = 0  # zero blocks
    weight[5, 16:32] *= 2.0**-12  # blocks far below amax: small scale codes, candidates clamp at 0
    weight[7, :16] = 1e-30
    fisher = torch.rand(rows, cols, generator=g).pow(3)
    fisher[:, :32] = 0  # every candidate ties
    fast = clip_nvfp4_scales(weight, fisher)
    plain = golden.quantize_nvfp4(weight)
    assert torch.equal(fast, _clip_reference(weight.float(), fisher, plain, 16, 8))
    assert torch.equal(fast, _clip_oracle(weight, fisher, 8))
    assert torch.equal(clip_nvfp4_scales(weight, fisher, candidates=3), _clip_oracle(weight, fisher, 3))
    assert not torch.equal(fast, plain.scales)  # clipping moved some scales
    # G outside FAST_SCALE_RANGE: the reference path, same choice as the oracle.
    small = weight[:8, :256] * 2.0**-110
    assert float(golden.quantize_nvfp4(small).global_scale) < kernels.FAST_SCALE_RANGE[0]
    assert torch.equal(clip_nvfp4_scales(small, fisher[:8, :256]), _clip_oracle(small, fisher[:8, :256], 8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fisher_weight_accumulation_is_the_plain_square_and_add(dtype):
    """The Fisher collector squares and adds gradients in cache-sized chunks: bit-identical to
    ``acc += grad.float().pow(2)`` over several samples, whatever the gradient's dtype."""
    from torch import nn

    from fgmp.golden.policy.fisher import _Collector

    g = torch.Generator().manual_seed(2)
    layer = nn.Linear(1536, 300, bias=False).to(dtype)  # 300 rows: three CPU chunks at this width
    collector = _Collector(layer)
    expected = torch.zeros(300, 1536)
    for sample in range(3):
        grad = (torch.randn(300, 1536, generator=g) * 2.0 ** torch.randint(-70, 20, (300, 1), generator=g)).to(dtype)
        grad[0, :4] = torch.tensor([0.0, -0.0, 1e-45, -3e38])
        layer.weight.grad = grad
        collector.add_weight_grad()
        expected += grad.float().pow(2)
    layer.weight.grad = None
    collector.add_weight_grad()  # no gradient: nothing added
    assert torch.equal(collector.weight.view(torch.int32), expected.view(torch.int32))
    collector.handle.remove()


def test_dequantize_in_chunks_matches_the_reference():
    """dequantize works through cache-sized chunks of blocks: bit-identical to the reference across chunk
    boundaries, with mixed precision, a broadcast precision and a 3-D tensor."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 300, 1024, generator=g) * torch.rand(2, 300, 1, generator=g).pow(6) * 100  # 38400 blocks
    precision = torch.rand(2, 300, 64, generator=g) < 0.4
    for bt in (golden.quantize_blocks(x, precision), golden.quantize_blocks(x, torch.tensor(True))):
        assert torch.equal(_bits(golden.dequantize(bt)), _bits(dequantize_reference(bt)))
    broadcast = golden.quantize_nvfp4(x)
    broadcast = golden.BlockTensor(codes=broadcast.codes, scales=broadcast.scales, precision=torch.tensor(False),
                                   global_scale=broadcast.global_scale)
    assert torch.equal(_bits(golden.dequantize(broadcast)), _bits(dequantize_reference(broadcast)))
