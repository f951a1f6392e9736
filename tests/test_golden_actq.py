"""The golden activation quantization unit (docs/numerics.md §9) against a scalar Fraction re-reading of
the spec, on BF16 blocks across the whole exponent range, every k, threshold edges and non-finite input."""

import math
import random
from fractions import Fraction

import pytest
import torch

import exact_oracle as O
from fgmp import golden
from fgmp.sim.actq_stimuli import random_bf16

B = 16


def _oracle_candidate(xp, negative, finite, element_max, fmt):
    amax = max((abs(v) for v, ok in zip(xp, finite) if ok), default=Fraction(0))
    scale, _ = O.encode_value(amax / element_max, False, O.UE4M3)
    codes, values = [], []
    for v, sign_bit, ok in zip(xp, negative, finite):
        if scale == 0 or not ok:
            codes.append(0)
            values.append(Fraction(0))
            continue
        magnitude, sign = O.encode_value(v / scale, sign_bit, fmt)  # the input's sign: -0 stays -0
        codes.append(O.value_to_code(magnitude, sign, fmt))
        values.append(scale * (-magnitude if sign else magnitude))
    return O.value_to_code(scale, 0, O.UE4M3), codes, values


def oracle_block(xs, f_codes, k, threshold):
    """(fp8, scale code, codes, score) of one block per numerics §9, in Fractions and Python ints."""
    finite = [math.isfinite(x) for x in xs]
    xp = [Fraction(x) * Fraction(2) ** -k if ok else Fraction(0) for x, ok in zip(xs, finite)]
    signs = [math.copysign(1, x) < 0 for x in xs]
    s4, q4, v4 = _oracle_candidate(xp, signs, finite, 6, O.E2M1)
    s8, q8, v8 = _oracle_candidate(xp, signs, finite, 448, O.E4M3)
    if not all(finite):
        if any(math.isinf(x) for x in xs):
            s8 = 0x7E
            q8 = []
            for x, v, ok, negative in zip(xs, xp, finite, signs):
                if math.isinf(x):
                    q8.append(0x7E | (0x80 if negative else 0))
                elif ok:
                    magnitude, sign = O.encode_value(v / 448, negative, O.E4M3)
                    q8.append(O.value_to_code(magnitude, sign, O.E4M3))
                else:
                    q8.append(0)
        q8 = [0x7F if math.isnan(x) else c for x, c in zip(xs, q8)]
        return True, s8, q8, 0
    terms = []
    for a, b, fc in zip(v4, v8, f_codes):
        d = (a - b) * (1 << 18)
        assert d.denominator == 1
        d = abs(int(d))
        shift = max(d.bit_length() - 12, 0)
        d_hat = (d >> shift) << shift
        f = O.code_to_value(fc, O.UE4M3)[0] * 512
        assert f.denominator == 1
        terms.append(int(f) * d_hat * d_hat)
    top = max(t.bit_length() for t in terms) - 1
    if top < 0:
        score = Fraction(0)
    else:
        lsb = top - 40
        total = sum((t >> lsb) if lsb >= 0 else t << -lsb for t in terms)
        score = total * Fraction(2) ** (lsb - 45)
    fp8 = score > Fraction(threshold) if math.isfinite(threshold) else False
    return fp8, (s8 if fp8 else s4), (q8 if fp8 else q4), score


def _config(k, threshold, f):
    return golden.ActivationConfig(scale_exponent=k, threshold=threshold, sensitivities=f)


def _check(x, config):
    result = golden.quantize_activations(x, config)
    xs = x.float().tolist()
    f = config.sensitivities.tolist()
    checked = fp8 = 0
    for row in range(x.shape[0]):
        for b in range(x.shape[1] // B):
            block = xs[row][b * B:(b + 1) * B]
            want_fp8, scale, codes, score = oracle_block(block, f[b * B:(b + 1) * B], config.scale_exponent,
                                                         config.threshold)
            assert bool(result.blocks.precision[row, b]) == want_fp8, (row, b)
            assert int(result.blocks.scales[row, b]) == scale, (row, b)
            assert result.blocks.codes[row, b].tolist() == codes, (row, b)
            assert Fraction(float(result.scores[row, b])) == score, (row, b)
            checked += 1
            fp8 += want_fp8
    return checked, fp8


@pytest.mark.parametrize("seed", range(4))
def test_matches_the_spec_on_random_bf16_blocks_and_scale_exponents(seed):
    rng = random.Random(seed)
    x = random_bf16(rng, (24, 64))
    f = torch.tensor([rng.randrange(0x7F) for _ in range(64)], dtype=torch.uint8)
    for k in (rng.randint(-128, 127), rng.randint(-20, 20), 0):
        scores = golden.quantize_activations(x, _config(k, 0.0, f)).scores
        positive = scores[scores > 0]
        threshold = float(positive.median().float()) if positive.numel() else 0.0
        checked, fp8 = _check(x, _config(k, threshold, f))
        assert checked == 96


def test_every_scale_exponent():
    rng = random.Random(11)
    x = random_bf16(rng, (4, 32))
    f = torch.full((32,), 0x38, dtype=torch.uint8)
    total = 0
    for k in range(-128, 128):
        total += _check(x, _config(k, 1.0, f))[0]
    assert total == 256 * 8


def test_threshold_straddling_and_equality():
    """score > T is FP8; score == T and score < T are NVFP4."""
    x = torch.tensor([[1.0, 0.3] + [0.0] * 14], dtype=torch.bfloat16)
    f = torch.full((B,), 0x38, dtype=torch.uint8)
    score = float(golden.quantize_activations(x, _config(0, 0.0, f)).scores[0, 0])
    assert score > 0 and float(torch.tensor(score, dtype=torch.float32)) == score  # exactly FP32
    below = float(torch.nextafter(torch.tensor(score, dtype=torch.float32), torch.tensor(0.0)))
    above = float(torch.nextafter(torch.tensor(score, dtype=torch.float32), torch.tensor(1.0)))
    decisions = [bool(golden.quantize_activations(x, _config(0, t, f)).blocks.precision[0, 0])
                 for t in (below, score, above, math.inf)]
    assert decisions == [True, False, False, False]


def test_non_finite_input_forces_fp8_and_never_becomes_an_ordinary_number():
    f = torch.full((B,), 0x38, dtype=torch.uint8)
    nan, inf = float("nan"), float("inf")
    x = torch.tensor([[1.0, nan] + [0.5] * 14, [2.0, -inf] + [0.25] * 14, [inf, nan] + [0.0] * 14],
                     dtype=torch.bfloat16)
    result = golden.quantize_activations(x, _config(0, math.inf, f))
    assert result.blocks.precision.tolist() == [[True], [True], [True]]
    assert result.forced_fp8.all()
    codes, scales = result.blocks.codes, result.blocks.scales
    assert codes[0, 0, 1] == 0x7F and codes[2, 0, 1] == 0x7F
    assert codes[1, 0, 1] == 0xFE and scales[1, 0] == 0x7E and codes[2, 0, 0] == 0x7E
    values = golden.dequantize(result.blocks)
    # 2.0 next to -Inf is quantized at the saturated scale 448: 448 * RNE_E4M3(2/448) = 448 * 2**-8.
    assert math.isnan(values[0, 1]) and values[1, 1] == -448.0 * 448.0 and values[1, 0] == 1.75
    _check(x, _config(0, math.inf, f))


def test_zero_blocks_and_underflow_give_zero_codes():
    f = torch.full((32,), 0x7E, dtype=torch.uint8)
    x = torch.tensor([[0.0] * 16 + [-0.0] * 16, [1e-30] * 32], dtype=torch.bfloat16)
    result = golden.quantize_activations(x, _config(0, 0.0, f))
    assert not result.blocks.precision.any() and (result.scores == 0).all()
    assert (result.blocks.scales == 0).all() and (result.blocks.codes == 0).all()
    _check(x, _config(0, 0.0, f))


def test_truncated_score_decisions_match_exact_decisions_on_gaussian_data():
    torch.manual_seed(0)
    x = (torch.randn(128, 256) * torch.exp(torch.randn(128, 1))).bfloat16()
    f = torch.randint(0x20, 0x50, (256,), dtype=torch.uint8)
    scores = golden.quantize_activations(x, _config(0, 0.0, f)).scores
    threshold = float(scores.flatten().quantile(0.7).float())
    config = _config(0, threshold, f)
    unit = golden.quantize_activations(x, config).blocks.precision
    exact = golden.exact_decisions(x, config)
    assert 0.2 < unit.float().mean() < 0.4
    assert (unit == exact).float().mean() >= 0.999


@pytest.mark.parametrize("kwargs,error,message", [
    ({"scale_exponent": 128}, ValueError, "Scale exponent must be between -128 and 127, not 128"),
    ({"scale_exponent": 1.0}, TypeError, "Scale exponent must be an integer, not 1.0"),
    ({"threshold": -1.0}, ValueError, "Threshold must be non-negative, not -1.0"),
    ({"threshold": float("nan")}, ValueError, "Threshold must be non-negative, not nan"),
    ({"threshold": 0.1}, ValueError, "Threshold 0.1 is not exactly representable in FP32"),
    ({"threshold": "1"}, TypeError, "Threshold must be a number, not '1'"),
    ({"sensitivities": torch.zeros(16)}, TypeError, "Sensitivities must be a 1-D uint8 tensor of UE4M3 codes"),
    ({"sensitivities": torch.full((16,), 0x7F, dtype=torch.uint8)}, ValueError,
     "Sensitivities must be finite UE4M3 codes (0x00..0x7E)"),
])
def test_invalid_configuration(kwargs, error, message):
    params = {"scale_exponent": 0, "threshold": 1.0, "sensitivities": torch.zeros(16, dtype=torch.uint8), **kwargs}
    with pytest.raises(error) as info:
        golden.ActivationConfig(**params)
    assert str(info.value) == message


def test_invalid_input():
    config = _config(0, 1.0, torch.zeros(32, dtype=torch.uint8))
    with pytest.raises(TypeError, match="Activations must be a torch.bfloat16 tensor"):
        golden.quantize_activations(torch.zeros(2, 32), config)
    with pytest.raises(ValueError, match="must be a multiple of the block size 16"):
        golden.quantize_activations(torch.zeros(2, 24, dtype=torch.bfloat16), config)
    with pytest.raises(ValueError, match="32 sensitivities for 48 input channels"):
        golden.quantize_activations(torch.zeros(2, 48, dtype=torch.bfloat16), config)
    with pytest.raises(TypeError, match="Config must be an ActivationConfig"):
        golden.quantize_activations(torch.zeros(2, 32, dtype=torch.bfloat16), {"k": 0})
