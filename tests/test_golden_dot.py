"""The golden dot unit (docs/numerics.md §8) against the independent Fraction oracle, and its documented
properties: exact products, order independence, NaN and zero rules, range beyond int64, batching, the
layer-level helpers and input validation."""

import random
import struct

import ml_dtypes
import numpy as np
import pytest
import torch

import exact_oracle as O
from fgmp import golden
from fgmp.golden.dot import ACCUMULATOR_LSB_EXPONENT, exact_block_sums, fp32_bits_of_scaled_integer
from fgmp.sim.dot_stimuli import exhaustive_reductions, expected_results, random_reductions

B = 16


def _bt(codes, scales, precision, global_scale=1.0):
    return golden.BlockTensor(codes=torch.as_tensor(codes, dtype=torch.uint8),
                              scales=torch.as_tensor(scales, dtype=torch.uint8),
                              precision=torch.as_tensor(precision, dtype=torch.bool),
                              global_scale=torch.tensor(global_scale))


def _oracle_blocks(bt, row):
    return [(bt.codes[row, b].tolist(), int(bt.scales[row, b]), bool(bt.precision[row, b]))
            for b in range(bt.codes.shape[1])]


def _ml_dtypes_value(code, fp8):
    dtype = ml_dtypes.float8_e4m3fn if fp8 else ml_dtypes.float4_e2m1fn
    return float(np.array([code], np.uint8).view(dtype)[0])


def _f32_bits(value):
    return int.from_bytes(struct.pack(">f", value), "big")


@pytest.mark.parametrize("formats", [("nvfp4", "fp8"), ("fp8",), ("nvfp4",)])
def test_unit_dot_matches_fraction_oracle_on_random_reductions(formats):
    reductions = random_reductions(lanes=3, formats=formats, block_size=B, count=120, max_blocks=12, seed=7)
    expected = expected_results(reductions)
    compared = nan = zero = 0
    for reduction, bits in zip(reductions, expected):
        activation = _oracle_blocks(reduction.activation, 0)
        for lane in range(3):
            want = O.oracle_dot(_oracle_blocks(reduction.weights, lane), activation)
            assert bits[lane] == want, (lane, hex(bits[lane]), hex(want))
            compared += 1
            nan += want == O.CANONICAL_FP32_NAN
            zero += want == 0
    assert compared == 360 and nan > 0 and zero > 0  # the NaN and zero rules were exercised


def test_every_element_code_pair_is_an_exact_product():
    """Uniform blocks of codes (w, x) at scale 1 give exactly 16 * dec(w) * dec(x), checked against
    ml_dtypes' decoding in float64 (exact: at most 8 significant bits)."""
    reductions, pairs = exhaustive_reductions(lanes=16, formats=("nvfp4", "fp8"), block_size=B)
    results = expected_results(reductions)
    checked = 0
    for reduction, bits in zip(reductions, results):
        x = _ml_dtypes_value(int(reduction.activation.codes[0, 0, 0]), bool(reduction.activation.precision[0, 0]))
        for lane in range(16):
            w = _ml_dtypes_value(int(reduction.weights.codes[lane, 0, 0]), bool(reduction.weights.precision[lane, 0]))
            product = 16 * w * x
            if np.isnan(product):
                assert bits[lane] == golden.CANONICAL_NAN_BITS
            elif product == 0:
                assert bits[lane] == 0  # +0 even for (-0) * x
            else:
                assert bits[lane] == _f32_bits(product)
            checked += 1
    assert pairs == 65536 + 256 + 2 * 16 * 256
    assert checked >= pairs


def test_result_does_not_depend_on_block_order():
    rng = random.Random(3)
    reductions = random_reductions(lanes=4, formats=("nvfp4", "fp8"), block_size=B, count=40, max_blocks=24,
                                   seed=11)
    permuted_something = 0
    for reduction in reductions:
        n = reduction.blocks
        order = list(range(n))
        rng.shuffle(order)
        w, x = reduction.weights, reduction.activation
        shuffled_w = _bt(w.codes[:, order], w.scales[:, order], w.precision[:, order])
        shuffled_x = _bt(x.codes[:, order], x.scales[:, order], x.precision[:, order])
        assert torch.equal(golden.unit_dot(shuffled_w, shuffled_x), golden.unit_dot(w, x))
        permuted_something += order != sorted(order)
    assert permuted_something > 10


def test_float32_sequential_accumulation_would_depend_on_order():
    """Why exactness matters: the same three blocks summed in FP32 in two orders give two answers; the
    unit gives the correctly rounded exact sum for both."""
    big, tiny = 0x7E, 0x01  # 448 and 2**-9
    w = _bt([[[big] + [0] * 15, [tiny] + [0] * 15, [big | 0x80] + [0] * 15]], [[0x7E, 0x38, 0x7E]],
            [[True, True, True]])
    x = _bt([[[0x38] + [0] * 15] * 3], [[0x38, 0x38, 0x38]], [[True, True, True]])
    terms = [448.0 * 448.0, 2.0**-9, -448.0 * 448.0]
    forward = np.float32(0)
    for t in terms:
        forward = np.float32(forward + np.float32(t))
    backward = np.float32(0)
    for t in (terms[0], terms[2], terms[1]):
        backward = np.float32(backward + np.float32(t))
    assert forward == 0.0 and backward == 2.0**-9
    assert golden.unit_dot(w, x).item() == _f32_bits(2.0**-9)


def test_nan_anywhere_in_a_reduction_poisons_only_that_lane():
    codes = [[[0x38] * B] * 3, [[0x38] * B] * 3]
    w = _bt(codes, [[0x38, 0x38, 0x38], [0x38, 0x7F, 0x38]], [[True] * 3, [True] * 3])
    x = _bt([[[0x38] * B] * 3], [[0x38] * 3], [[True] * 3])
    assert golden.unit_dot(w, x).tolist() == [[_f32_bits(48.0), golden.CANONICAL_NAN_BITS]]
    x_nan = _bt([[[0x38] * (B - 1) + [0xFF]] * 3], [[0x38] * 3], [[True] * 3])
    assert golden.unit_dot(w, x_nan).tolist() == [[golden.CANONICAL_NAN_BITS] * 2]
    # The same byte in an NVFP4 block is the E2M1 code 0xF (-6), not a NaN: 3 * (15 * 0 + 1 * -6).
    ones = _bt([[[0x38] * B] * 3], [[0x38] * 3], [[True] * 3])
    x_fp4 = _bt([[[0x00] * (B - 1) + [0xFF]] * 3], [[0x38] * 3], [[False] * 3])
    assert golden.unit_dot(ones, x_fp4).item() == _f32_bits(-18.0)


def test_exact_zero_is_positive_zero():
    w = _bt([[[0x38] * B, [0xB8] * B]], [[0x38, 0x38]], [[True, True]])  # +1 then -1
    x = _bt([[[0x38] * B, [0x38] * B]], [[0x38, 0x38]], [[True, True]])
    assert golden.unit_dot(w, x).item() == 0
    negative_zeros = _bt([[[0x80] * B]], [[0x38]], [[True]])
    assert golden.unit_dot(negative_zeros, _bt([[[0x38] * B]], [[0x38]], [[True]])).item() == 0


def test_sums_beyond_int64_stay_exact():
    """10,000 blocks of the largest products: 10,000 * 16 * 448**4 * 2**36 overflows int64 by far."""
    n = 10_000
    w = _bt([[[0x7E] * B] * n], [[0x7E] * n], [[True] * n])
    x = _bt([[[0x7E] * B] * n], [[0x7E] * n], [[True] * n])
    limbs, nan = exact_block_sums(w, x)
    low, mid, high = (int(limb.item()) for limb in limbs)
    exact = (high << 48) + (mid << 24) + low
    assert exact == n * B * 448**4 * 2**-ACCUMULATOR_LSB_EXPONENT and exact > 2**80 and not nan.item()
    assert golden.unit_dot(w, x).item() == _f32_bits(float(np.float32(n * B * 448.0**4)))


def test_fp32_rounding_of_the_accumulator_is_round_to_nearest_even():
    rng = random.Random(5)
    for _ in range(2000):
        value = rng.choice([-1, 1]) * rng.getrandbits(rng.randint(1, 52))
        exponent = rng.randint(-60, 20)
        want = _f32_bits(float(np.float32(value * 2.0**exponent))) if value else 0
        assert fp32_bits_of_scaled_integer(value, exponent) == want
    # Ties: 2**24 + 1 lies halfway between 2**24 and 2**24 + 2 -> even (2**24); + 3 -> 2**24 + 4.
    assert fp32_bits_of_scaled_integer((1 << 24) + 1, 0) == _f32_bits(2.0**24)
    assert fp32_bits_of_scaled_integer((1 << 24) + 3, 0) == _f32_bits(2.0**24 + 4)
    assert fp32_bits_of_scaled_integer((1 << 25) - 1, 0) == _f32_bits(2.0**25)  # carry into the exponent


def test_batched_unit_dot_equals_one_call_per_batch_entry():
    reductions = [r for r in random_reductions(lanes=2, formats=("nvfp4", "fp8"), block_size=B, count=30,
                                               max_blocks=3, seed=2) if r.blocks == 3][:4]
    assert len(reductions) >= 2
    w = _bt(torch.stack([r.weights.codes for r in reductions]), torch.stack([r.weights.scales for r in reductions]),
            torch.stack([r.weights.precision for r in reductions]))
    x = _bt(torch.stack([r.activation.codes for r in reductions]),
            torch.stack([r.activation.scales for r in reductions]),
            torch.stack([r.activation.precision for r in reductions]))
    batched = golden.unit_dot(w, x)
    assert batched.shape == (len(reductions), 1, 2)
    for k, r in enumerate(reductions):
        assert torch.equal(batched[k], golden.unit_dot(r.weights, r.activation))


def test_layer_output_applies_global_scales_outside_the_unit():
    torch.manual_seed(0)
    w = golden.quantize_blocks(torch.randn(8, 64) * 3, torch.rand(8, 4) < 0.3)
    x = golden.quantize_blocks(torch.randn(5, 64) * 0.1, torch.rand(5, 4) < 0.3)
    unit = golden.bits_to_float32(golden.unit_dot(w, x))
    layer = golden.layer_output(w, x)
    assert torch.equal(layer, unit * (w.global_scale * x.global_scale))
    reference = golden.dequantize(x, dtype=torch.float64) @ golden.dequantize(w, dtype=torch.float64).T
    assert torch.allclose(layer.double(), reference, rtol=1e-5, atol=1e-6 * reference.abs().max().item())
    fast = golden.fake_quant_matmul(w, x)
    assert fast.dtype == torch.float32 and torch.allclose(fast, layer, rtol=1e-4, atol=1e-5)


def test_bits_to_float32_round_trips():
    values = torch.tensor([0.0, -0.0, 1.5, -3.25e-9, 6.0e30])
    bits = values.view(torch.int32).to(torch.int64)
    assert torch.equal(golden.bits_to_float32(bits).view(torch.int32), values.view(torch.int32))


def test_invalid_operands_are_rejected():
    w = _bt([[[0] * B] * 2], [[0x38] * 2], [[True] * 2])
    x = _bt([[[0] * B] * 3], [[0x38] * 3], [[True] * 3])
    with pytest.raises(TypeError, match="Weights must be a BlockTensor, not Tensor"):
        golden.unit_dot(torch.zeros(2, 32), x)
    with pytest.raises(ValueError, match=r"Weights \(1, 32\) and activations \(1, 48\) differ in reduction length"):
        golden.unit_dot(w, x)
    batched = _bt([[[[0] * B] * 2]] * 2, [[[0x38] * 2]] * 2, [[[True] * 2]] * 2)
    with pytest.raises(ValueError, match="differ in batch shape"):
        golden.unit_dot(batched, _bt([[[0] * B] * 2], [[0x38] * 2], [[True] * 2]))
    with pytest.raises(ValueError, match="must be at least 2-D"):
        golden.unit_dot(_bt([[0] * B], [0x38], [True]), x)


def test_fp32_rounding_of_wide_accumulators_matches_the_fraction_oracle():
    rng = random.Random(8)
    for _ in range(500):
        value = rng.choice([-1, 1]) * rng.getrandbits(rng.randint(53, 95))
        if value == 0:
            continue
        rounded = O.fl32(O.Fraction(value, 1 << 36))
        assert fp32_bits_of_scaled_integer(value) == _f32_bits(float(rounded))


def test_limbs_stay_exact_when_every_block_is_its_own_chunk(monkeypatch):
    """Carry normalisation between chunks, with negative block sums, gives the same bits as one chunk."""
    import fgmp.golden.dot as dot

    reductions = random_reductions(lanes=3, formats=("nvfp4", "fp8"), block_size=B, count=30, max_blocks=20,
                                   seed=21)
    whole = expected_results(reductions)
    monkeypatch.setattr(dot, "_CHUNK_ELEMENTS", 1)
    assert expected_results(reductions) == whole
