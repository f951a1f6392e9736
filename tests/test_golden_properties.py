"""Property tests of fgmp.golden (docs/numerics.md §1, §2, §5) with hypothesis.

Round trips of every code, monotonicity and optimality of the encoders, byte-layout round trips of
pack_e2m1 / pack_blocks, and the BF16 <-> FP32 bit conversions against torch. Hypothesis runs derandomized
(a fixed seed) so the suite is reproducible.
"""

import bisect
import math
from fractions import Fraction

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import exact_oracle as O
from fgmp import golden

FORMATS = {"e2m1": (golden.E2M1, O.E2M1), "e4m3": (golden.E4M3, O.E4M3), "ue4m3": (golden.UE4M3, O.UE4M3)}
INF = float("inf")

SETTINGS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------ strategies


def _near_grid_floats(fmt_o):
    """Floats on, at, or one float32 ulp around the grid points and midpoints of ``fmt_o`` (times 2**j)."""
    points = [float(p) for p in O.grid(fmt_o) + O.midpoints(fmt_o)]

    def build(p, j, nudge, negative):
        v = torch.tensor(p * 2.0**j, dtype=torch.float32)
        if nudge:
            v = torch.nextafter(v, torch.tensor(INF if nudge > 0 else -INF))
        v = float(v)
        return -v if negative else v

    return st.builds(
        build, st.sampled_from(points), st.integers(-3, 3), st.sampled_from([-1, 0, 0, 1]), st.booleans()
    )


def _values(fmt_o):
    finite32 = st.floats(width=32, allow_nan=False, allow_infinity=True)
    bound = float(fmt_o.max_value) * 1.25  # exact in FP32
    in_range = st.floats(min_value=-bound, max_value=bound, width=32)
    return st.one_of(finite32, in_range, _near_grid_floats(fmt_o))


def _for_format(fmt_o, values):
    return [abs(v) for v in values] if not fmt_o.signed else values


# --------------------------------------------------------------------------------- decode -> encode


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", FORMATS)
def test_decode_encode_roundtrip_every_code(name, dtype):
    """encode(decode(c)) == c for every valid code (all 16 / 256 / 128 of them, -0 included); NaN codes
    give the canonical NaN code; UE4M3 codes with bit 7 set (invalid) are left out."""
    fmt_g, fmt_o = FORMATS[name]
    codes = torch.arange(1 << fmt_o.code_bits)
    if not fmt_o.signed:
        codes = codes[codes < 0x80]
    values = golden.decode(codes, fmt_g, dtype=dtype)
    back = golden.encode(values, fmt_g)
    nan = torch.isnan(values)
    expected = torch.where(nan, fmt_o.nan_code if fmt_o.nan_code is not None else -1, codes)
    assert back.tolist() == expected.tolist()
    assert codes.numel() == {"e2m1": 16, "e4m3": 256, "ue4m3": 128}[name]
    assert int(nan.sum()) == {"e2m1": 0, "e4m3": 2, "ue4m3": 1}[name]


# --------------------------------------------------------------------------------------- monotone


@pytest.mark.parametrize("name", FORMATS)
def test_encode_is_monotone(name):
    fmt_g, fmt_o = FORMATS[name]

    @settings(max_examples=150, **SETTINGS)
    @given(st.lists(_values(fmt_o), min_size=2, max_size=48))
    def check(values):
        values = sorted(_for_format(fmt_o, values))
        x = torch.tensor(values, dtype=torch.float32)
        decoded = golden.decode(golden.encode(x, fmt_g), fmt_g, dtype=torch.float64).tolist()
        for i in range(len(decoded) - 1):
            assert decoded[i] <= decoded[i + 1], (values[i], values[i + 1], decoded[i], decoded[i + 1])

    check()


# ---------------------------------------------------------------------------------- nearest value


@pytest.mark.parametrize("name", FORMATS)
def test_encode_is_nearest_and_ties_even(name):
    """For finite |x| <= max no representable value is strictly closer than dec(enc(x)); at an exact tie
    the chosen code has an even mantissa LSB (codes of magnitude 0 count as even)."""
    fmt_g, fmt_o = FORMATS[name]
    signed_grid = sorted({s * g for g in O.grid(fmt_o) for s in ((1, -1) if fmt_o.signed else (1,))})
    limit = float(fmt_o.max_value)

    @settings(max_examples=150, **SETTINGS)
    @given(st.lists(_values(fmt_o), min_size=1, max_size=48))
    def check(values):
        values = [v for v in _for_format(fmt_o, values) if math.isfinite(v) and abs(v) <= limit]
        if not values:
            return
        codes = golden.encode(torch.tensor(values, dtype=torch.float32), fmt_g)
        decoded = golden.decode(codes, fmt_g, dtype=torch.float64).tolist()
        for v, d, c in zip(values, decoded, codes.tolist()):
            f = Fraction(v)
            err = abs(Fraction(d) - f)
            i = bisect.bisect_left(signed_grid, f)
            best = min(abs(g - f) for g in signed_grid[max(i - 1, 0) : i + 1])
            assert err == best, (v, d, float(best))
            assert best == min(abs(g - f) for g in signed_grid)  # the neighbours are the nearest
            if err != 0 and sum(abs(g - f) == best for g in signed_grid) == 2:  # a tie
                assert c & 1 == 0, (v, hex(c))

    check()


# ------------------------------------------------------------------------------------------ packing


@settings(max_examples=100, **SETTINGS)
@given(
    lead=st.lists(st.integers(1, 3), max_size=3),
    half=st.integers(1, 16),
    seed=st.integers(0, 2**31 - 1),
)
def test_pack_e2m1_roundtrip(lead, half, seed):
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (*lead, 2 * half), generator=gen, dtype=torch.uint8)
    packed = golden.pack_e2m1(codes)
    assert packed.shape == (*lead, half) and packed.dtype == torch.uint8
    assert torch.equal(packed & 0xF, codes[..., 0::2]) and torch.equal(packed >> 4, codes[..., 1::2])
    assert torch.equal(golden.unpack_e2m1(packed), codes)
    # and the other way: every byte is a valid pair of nibbles
    raw = torch.randint(0, 256, (*lead, half), generator=gen, dtype=torch.uint8)
    assert torch.equal(golden.pack_e2m1(golden.unpack_e2m1(raw)), raw)


def _expected_payload(bt):
    """The §5 byte stream built by hand: blocks row-major, NVFP4 blocks as nibble pairs (element 2i low)."""
    out = []
    size = bt.block_size
    for codes, fp8 in zip(bt.codes.reshape(-1, size).tolist(), bt.precision.reshape(-1).tolist()):
        if fp8:
            out += codes
        else:
            out += [codes[2 * i] | (codes[2 * i + 1] << 4) for i in range(size // 2)]
    return out


@settings(max_examples=120, **SETTINGS)
@given(
    lead=st.lists(st.integers(1, 3), max_size=2),
    n_blocks=st.integers(1, 6),
    block_size=st.sampled_from([2, 4, 8, 16, 32]),
    p_fp8=st.sampled_from([0.0, 0.3, 0.5, 1.0]),
    spread=st.integers(0, 30),
    seed=st.integers(0, 2**31 - 1),
)
def test_pack_blocks_roundtrip(lead, n_blocks, block_size, p_fp8, spread, seed):
    gen = torch.Generator().manual_seed(seed)
    shape = (*lead, n_blocks * block_size)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    x = (x * torch.exp2(torch.randint(-spread, spread + 1, shape, generator=gen).double())).to(torch.float32)
    precision = torch.rand((*lead, n_blocks), generator=gen) < p_fp8
    bt = golden.quantize_blocks(x, precision, block_size=block_size)
    assert bool((bt.codes[~bt.precision] <= 0xF).all())

    pb = golden.pack_blocks(bt)
    total_blocks = precision.numel()
    assert pb.n_blocks == total_blocks and pb.shape == tuple(shape) and pb.block_size == block_size
    assert pb.payload.tolist() == _expected_payload(bt)
    assert pb.total_bits == golden.block_bits(precision, block_size=block_size)
    bits = pb.precision_bits.tolist()
    assert len(bits) == (total_blocks + 7) // 8
    for j, p in enumerate(precision.reshape(-1).tolist()):
        assert (bits[j // 8] >> (j % 8)) & 1 == p
    assert all(b >> (total_blocks - 8 * (len(bits) - 1)) == 0 for b in bits[-1:])  # padding bits are 0

    back = golden.unpack_blocks(pb)
    assert torch.equal(back.codes, bt.codes) and back.codes.dtype == torch.uint8
    assert torch.equal(back.scales, bt.scales) and torch.equal(back.precision, bt.precision)
    assert back.global_scale.item() == bt.global_scale.item() and back.shape == bt.shape
    a, b = golden.dequantize(back), golden.dequantize(bt)
    assert torch.equal(a.view(torch.int32), b.view(torch.int32))


@pytest.mark.parametrize("shape", [(0, 32), (2, 0, 32), (3, 0)])
def test_pack_blocks_roundtrip_empty_tensor(shape):
    """quantize_blocks and pack_blocks accept empty tensors (G = 1), so unpack_blocks must invert them."""
    bt = golden.quantize_blocks(torch.zeros(shape), torch.tensor(False))
    pb = golden.pack_blocks(bt)
    assert pb.n_blocks == 0 and pb.payload.numel() == 0
    back = golden.unpack_blocks(pb)
    assert back.codes.shape == bt.codes.shape and back.scales.shape == bt.scales.shape
    assert back.precision.shape == bt.precision.shape and back.shape == bt.shape


# ------------------------------------------------------------------------------------------ bfloat16


def _torch_bf16_bits(x):
    return (x.to(torch.bfloat16).view(torch.int16).to(torch.int32) & 0xFFFF).tolist()


@settings(max_examples=200, **SETTINGS)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=64))
def test_fp32_to_bf16_bits_matches_torch_hypothesis(words):
    x = torch.tensor(words, dtype=torch.int64).to(torch.int32).view(torch.float32)
    got = golden.fp32_to_bf16_bits(x)
    assert got.dtype == torch.int32
    nan = torch.isnan(x)
    got_l, ref = got.tolist(), _torch_bf16_bits(x)
    for w, g, r, n in zip(words, got_l, ref, nan.tolist()):
        assert g == (0x7FC0 if n else r), (hex(w), hex(g), hex(r))


def test_fp32_to_bf16_bits_matches_torch_structured():
    """Every BF16 upper half with lower halves 0, 0x7FFF, 0x8000 (tie), 0x8001, 0xFFFF, plus 2**20 random
    words: 1,376,256 patterns; NaNs must give 0x7FC0, everything else (Inf included) torch's bits."""
    hi = torch.arange(1 << 16, dtype=torch.int64) << 16
    lows = torch.tensor([0, 0x7FFF, 0x8000, 0x8001, 0xFFFF], dtype=torch.int64)
    words = (hi.unsqueeze(-1) | lows).reshape(-1)
    gen = torch.Generator().manual_seed(7)
    words = torch.cat([words, torch.randint(0, 2**32, (1 << 20,), generator=gen, dtype=torch.int64)])
    x = words.to(torch.int32).view(torch.float32)
    got = golden.fp32_to_bf16_bits(x)
    nan = torch.isnan(x)
    ref = x.to(torch.bfloat16).view(torch.int16).to(torch.int32) & 0xFFFF
    assert torch.equal(got[~nan], ref[~nan])
    assert bool((got[nan] == 0x7FC0).all())
    assert int((~nan).sum()) > 1_300_000 and int(nan.sum()) > 0
    inf = torch.tensor([INF, -INF, 3.4028234663852886e38, -3.4028234663852886e38])
    assert golden.fp32_to_bf16_bits(inf).tolist() == [0x7F80, 0xFF80, 0x7F80, 0xFF80]


def test_bf16_bits_to_fp32_all_65536_patterns():
    bits = torch.arange(1 << 16, dtype=torch.int32)
    x = golden.bf16_bits_to_fp32(bits)
    assert x.dtype == torch.float32
    # exact: the bits become the top half of the FP32 word, and agree with torch's own widening
    assert torch.equal(x.view(torch.int32).to(torch.int64) & 0xFFFFFFFF, bits.to(torch.int64) << 16)
    ref = bits.to(torch.int16).view(torch.bfloat16).to(torch.float32)
    nan = torch.isnan(ref)
    assert torch.equal(torch.isnan(x), nan)
    assert torch.equal(x[~nan].view(torch.int32), ref[~nan].view(torch.int32))
    back = golden.fp32_to_bf16_bits(x)
    assert torch.equal(back[~nan], bits[~nan])
    assert bool((back[nan] == 0x7FC0).all())
    assert int((~nan).sum()) == 65536 - 2 * 127 and int(nan.sum()) == 2 * 127
