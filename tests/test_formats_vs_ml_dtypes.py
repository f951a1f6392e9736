"""The golden codecs against ml_dtypes: every code, and over a million random FP32 values.

ml_dtypes is an independent, correctly rounding implementation; the only differences allowed are its
documented edge behaviours (numerics §2), and each is asserted to be exactly that, so nothing hides.
"""

import ml_dtypes
import numpy as np
import pytest
import torch

from fgmp import golden

REFERENCE = {"E2M1": ml_dtypes.float4_e2m1fn, "E4M3": ml_dtypes.float8_e4m3fn, "UE4M3": ml_dtypes.float8_e4m3fn}


def ml_decode(codes, name):
    return np.asarray(codes, dtype=np.uint8).view(REFERENCE[name]).astype(np.float64)


def ml_encode(values, name):
    with np.errstate(invalid="ignore", over="ignore"):
        return values.astype(REFERENCE[name]).view(np.uint8)


@pytest.fixture(scope="module")
def random_fp32():
    """> 10**6 FP32 values: random bit patterns (all exponents, subnormals, Inf, NaN), scaled normals, exact
    ties of every format, huge values and signed zeros."""
    gen = torch.Generator().manual_seed(2025)
    bits = torch.randint(-(2**31), 2**31, (1_000_000,), generator=gen, dtype=torch.int64).to(torch.int32)
    pieces = [bits.view(torch.float32), torch.randn(200_000, generator=gen) * 2.0 ** torch.randint(-12, 10, (200_000,), generator=gen)]
    for fmt in (golden.E2M1, golden.E4M3):
        mids = fmt._midpoints.to(torch.float32)
        for exponent in range(-3, 3):
            pieces += [mids * 2.0**exponent, -mids * 2.0**exponent]
    special = [0.0, -0.0, float("inf"), -float("inf"), float("nan"), 448.0, 464.0, 464.00003, 480.0, 6.0, 7.0, 3e38,
               2.0**-10, -(2.0**-10), 2.0**-10 * 1.0000001, 2.0**-149, 0.25, -0.25]
    pieces.append(torch.tensor(special))
    values = torch.cat(pieces)
    assert values.numel() > 1_000_000
    return values


@pytest.mark.parametrize("name", ["E2M1", "E4M3"])
def test_every_code_decodes_like_ml_dtypes(name):
    fmt = getattr(golden, name)
    codes = np.arange(1 << fmt.code_bits)
    ours = golden.decode(torch.from_numpy(codes), fmt, dtype=torch.float64).numpy()
    np.testing.assert_array_equal(ours, ml_decode(codes, name))  # NaN == NaN in assert_array_equal
    numbers = ~np.isnan(ours)  # a NaN's sign carries nothing (numerics §2)
    np.testing.assert_array_equal(np.signbit(ours[numbers]), np.signbit(ml_decode(codes, name)[numbers]))


def test_ue4m3_decodes_like_positive_e4m3_and_flags_the_sign_bit_invalid():
    codes = np.arange(256)
    ours = golden.decode(torch.from_numpy(codes), golden.UE4M3, dtype=torch.float64).numpy()
    np.testing.assert_array_equal(ours[:128], ml_decode(codes[:128], "UE4M3"))
    assert np.isnan(ours[128:]).all()


def test_e4m3_encode_matches_ml_dtypes_except_its_overflow_to_nan(random_fp32):
    x = random_fp32.numpy()
    ours = golden.encode(random_fp32, golden.E4M3).numpy()
    reference = ml_encode(x, "E4M3")
    # ml_dtypes: |x| > 464 and +-Inf become NaN; the contract saturates them to +-448.
    overflow = np.isfinite(x) & (np.abs(x) > 464) | np.isinf(x)
    nan = np.isnan(x)  # ml_dtypes keeps the NaN's sign (0xFF); the contract has one canonical NaN, 0x7F
    same = ~overflow & ~nan
    np.testing.assert_array_equal(ours[same], reference[same])
    assert overflow.sum() > 100_000
    assert (reference[overflow] & 0x7F == 0x7F).all()
    assert (ours[overflow] == np.where(np.signbit(x[overflow]), 0xFE, 0x7E)).all()
    assert nan.sum() > 100 and (ours[nan] == 0x7F).all() and (reference[nan] & 0x7F == 0x7F).all()


def test_e2m1_encode_matches_ml_dtypes_on_every_non_nan_value(random_fp32):
    finite_or_inf = random_fp32[~torch.isnan(random_fp32)]
    ours = golden.encode(finite_or_inf, golden.E2M1).numpy()
    np.testing.assert_array_equal(ours, ml_encode(finite_or_inf.numpy(), "E2M1"))


def test_e2m1_has_no_nan_so_encoding_nan_raises():
    with pytest.raises(ValueError, match=r"^E2M1 has no NaN encoding; the input contains NaN$"):
        golden.encode(torch.tensor([1.0, float("nan")]), golden.E2M1)


def test_ue4m3_encode_matches_ml_dtypes_on_magnitudes(random_fp32):
    magnitudes = random_fp32.abs()
    x = magnitudes.numpy()
    ours = golden.encode(magnitudes, golden.UE4M3).numpy()
    reference = ml_encode(x, "UE4M3")
    in_range = ~(np.abs(x) > 464)  # NaN included: both give 0x7F
    np.testing.assert_array_equal(ours[in_range], reference[in_range])
    assert (ours[~in_range] == 0x7E).all()


def test_ue4m3_rejects_negative_values_but_takes_negative_zero():
    assert int(golden.encode(torch.tensor([-0.0]), golden.UE4M3)[0]) == 0x00
    with pytest.raises(ValueError, match=r"^UE4M3 is unsigned; the input contains negative values$"):
        golden.encode(torch.tensor([-1.0]), golden.UE4M3)


def test_negative_values_that_round_to_zero_keep_their_sign():
    x = torch.tensor([-0.1, -0.0, -(2.0**-11)])
    assert golden.encode(x, golden.E2M1).tolist() == [0x8, 0x8, 0x8]
    assert golden.encode(x[1:], golden.E4M3).tolist() == [0x80, 0x80]


@pytest.mark.parametrize("bad, error, message", [
    ([1, 2], TypeError, r"^Input must be a torch\.Tensor, not list$"),
    (torch.tensor([1, 2]), TypeError, r"^Input must be a floating-point tensor, not torch\.int64$"),
])
def test_encode_rejects_bad_input(bad, error, message):
    with pytest.raises(error, match=message):
        golden.encode(bad, golden.E4M3)


@pytest.mark.parametrize("codes, error, message", [
    (torch.tensor([1.0]), TypeError, r"^Codes must be an integer tensor, not torch\.float32$"),
    (torch.tensor([16]), ValueError, r"^E2M1 codes must lie in \[0, 15\]$"),
    (torch.tensor([-1]), ValueError, r"^E2M1 codes must lie in \[0, 15\]$"),
])
def test_decode_rejects_bad_codes(codes, error, message):
    with pytest.raises(error, match=message):
        golden.decode(codes, golden.E2M1)


def test_encode_ratio_rejects_a_non_positive_denominator():
    with pytest.raises(ValueError, match=r"^Denominator must be positive and finite$"):
        golden.encode_ratio(torch.tensor([1.0]), torch.tensor([0.0]), golden.E4M3)


def test_format_must_be_a_format():
    with pytest.raises(TypeError, match=r"^Format must be a FloatFormat \(E2M1, E4M3 or UE4M3\), not 'e4m3'$"):
        golden.encode(torch.tensor([1.0]), "e4m3")
