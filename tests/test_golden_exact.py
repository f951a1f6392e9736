"""fgmp.golden against the independent Fraction oracle of tests/exact_oracle.py (docs/numerics.md §1-§4).

Every test compares bit-for-bit (codes, sign of zero, dequantized FP32 values) and asserts how many cases it
compared, so that none of them can pass vacuously. All randomness is seeded.
"""

import math
import random
from fractions import Fraction

import pytest
import torch

import exact_oracle as O
from fgmp import golden

FORMATS = {"e2m1": (golden.E2M1, O.E2M1), "e4m3": (golden.E4M3, O.E4M3), "ue4m3": (golden.UE4M3, O.UE4M3)}
B = 16
INF = float("inf")


# ---------------------------------------------------------------------------------------------- helpers


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _exact_f32(fractions):
    """float32 tensor holding exactly these rationals (asserts each is FP32-representable)."""
    t = torch.tensor([float(f) for f in fractions], dtype=torch.float64).to(torch.float32)
    for f, v in zip(fractions, t.tolist()):
        assert Fraction(v) == f, f"{f} is not exact in FP32"
    return t


def _next_up(x):
    return torch.nextafter(x, torch.full_like(x, INF))


def _next_down(x):
    return torch.nextafter(x, torch.full_like(x, -INF))


def _random_f32_bits(n, gen, lo=-(2**31), hi=2**31):
    return torch.randint(lo, hi, (n,), dtype=torch.int64, generator=gen).to(torch.int32).view(torch.float32)


def _finite(x):
    return x[torch.isfinite(x)]


def _ladder(fmt_o, lo=-14, hi=4):
    """Grid values and midpoints of ``fmt_o`` times 2**j: ties at every binade, incl. the subnormal range."""
    points = O.grid(fmt_o)[1:] + O.midpoints(fmt_o)
    return sorted({p * Fraction(2) ** j for j in range(lo, hi) for p in points})


def _element_inputs(fmt_o, seed):
    """float32 inputs for element encodes: ties, hair-off ties, random, subnormal FP32, huge, zeros."""
    gen = _gen(seed)
    ladder = _exact_f32(_ladder(fmt_o))
    base = torch.cat([ladder, -ladder])
    parts = [base, _next_up(base), _next_down(base)]
    parts.append(_finite(_random_f32_bits(8000, gen)))
    # log-uniform magnitudes around the format's range
    mags = torch.exp2(torch.rand(8000, generator=gen, dtype=torch.float64) * 36 - 24)
    signs = torch.where(torch.rand(8000, generator=gen) < 0.5, -1.0, 1.0).double()
    parts.append((mags * signs).to(torch.float32))
    # FP32 subnormals and the smallest normals
    sub = torch.randint(1, 1 << 24, (2000,), dtype=torch.int64, generator=gen).to(torch.int32).view(torch.float32)
    parts.append(torch.cat([sub, -sub]))
    huge = torch.tensor(
        [3.4028234663852886e38, 1e38, 1e30, 65504.0, 4096.0, 480.0, 464.0, 456.0, 449.0, 7.0, 6.5, 5.0 + 2**-20],
        dtype=torch.float32,
    )
    special = torch.tensor([0.0, -0.0, INF, -INF, 2.0**-149, -(2.0**-149)], dtype=torch.float32)
    parts += [huge, -huge, _next_up(huge), _next_down(huge), special]
    return torch.cat(parts)


def _compare_encode(x, fmt_g, fmt_o):
    """golden.encode vs oracle code on every element of ``x``; returns the number compared."""
    codes = golden.encode(x, fmt_g).tolist()
    values = x.to(torch.float64).tolist()  # exact for float16/bfloat16/float32/float64
    bad = []
    for v, c in zip(values, codes):
        expected = O.encode_code(v, fmt_o)
        if c != expected:
            bad.append((v, hex(c), hex(expected)))
    assert not bad, f"{len(bad)} of {len(values)} {fmt_o.name} encodes differ, (input, got, expected): {bad[:10]}"
    return len(values)


def _count_ties(x, fmt_o):
    mids = set(O.midpoints(fmt_o))
    return sum(Fraction(abs(v)) in mids for v in x.to(torch.float64).tolist() if math.isfinite(v))


# ------------------------------------------------------------------------------------------- oracle sanity


def test_oracle_self_check_against_torch_fp32_casts():
    """The oracle's fl32 equals torch's float64->float32 cast (a single correct rounding) on 20000 values,
    and its grids are the documented ones."""
    assert [float(v) for v in O.grid(O.E2M1)] == [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    g = O.grid(O.E4M3)
    assert len(g) == 127 and g[1] == Fraction(1, 512) and g[8] == Fraction(1, 64) and g[-1] == 448
    rng = random.Random(1)
    values = [rng.uniform(-1, 1) * 2.0 ** rng.randint(-160, 120) for _ in range(20000)]
    cast = torch.tensor(values, dtype=torch.float64).to(torch.float32).tolist()
    assert all(O.fl32(Fraction(v)) == Fraction(c) for v, c in zip(values, cast))


# --------------------------------------------------------------------------------------------- (0) decode


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_decode_every_code(name, dtype):
    fmt_g, fmt_o = FORMATS[name]
    n = 1 << fmt_o.code_bits
    got = golden.decode(torch.arange(n), fmt_g, dtype=dtype).tolist()
    for code, v in enumerate(got):
        expected = O.code_to_value(code, fmt_o)
        if expected == O.NAN:
            assert math.isnan(v), (name, hex(code), v)
        else:
            assert Fraction(abs(v)) == expected[0] and O.sign_of(v) == expected[1], (name, hex(code), v)
    assert len(got) == n


# -------------------------------------------------------------------------------------- (1) element encodes


@pytest.mark.parametrize("name", ["e2m1", "e4m3"])
def test_encode_signed_float32_vs_oracle(name):
    fmt_g, fmt_o = FORMATS[name]
    x = _element_inputs(fmt_o, seed=11 if name == "e2m1" else 12)
    ties = _count_ties(x, fmt_o)
    n = _compare_encode(x, fmt_g, fmt_o)
    assert n >= 20000 and ties >= (14 if name == "e2m1" else 252), (n, ties)


def test_encode_ue4m3_float32_vs_oracle():
    fmt_g, fmt_o = FORMATS["ue4m3"]
    x = _element_inputs(fmt_o, seed=13).abs()
    x = torch.cat([x, torch.tensor([-0.0])])
    ties = _count_ties(x, fmt_o)
    n = _compare_encode(x, fmt_g, fmt_o)
    assert n >= 23000 and ties >= 126, (n, ties)


@pytest.mark.parametrize("name", FORMATS)
def test_encode_float64_hair_off_ties(name):
    """float64 inputs one float64 ulp either side of each (scaled) midpoint: no FP32 detour may be taken."""
    fmt_g, fmt_o = FORMATS[name]
    ladder = torch.tensor([float(f) for f in _ladder(fmt_o, -12, 3)], dtype=torch.float64)
    up = torch.nextafter(ladder, torch.full_like(ladder, INF))
    down = torch.nextafter(ladder, torch.full_like(ladder, -INF))
    x = torch.cat([ladder, up, down, _next_up(up), _next_down(down)])
    if fmt_o.signed:
        x = torch.cat([x, -x])
    # float64 values far out of FP32 range saturate too
    x = torch.cat([x, torch.tensor([1e300, 2.0**-1074, 0.0, 5e-324 * 3])])
    n = _compare_encode(x, fmt_g, fmt_o)
    assert n >= {"e2m1": 560, "e4m3": 4700, "ue4m3": 2300}[name], n


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", FORMATS)
def test_encode_every_half_width_pattern(name, dtype):
    """All 65536 bf16 / fp16 bit patterns (NaNs dropped; negatives dropped for UE4M3)."""
    fmt_g, fmt_o = FORMATS[name]
    x = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    x = x[~torch.isnan(x)]
    if not fmt_o.signed:
        x = x[~torch.signbit(x)]
    n = _compare_encode(x, fmt_g, fmt_o)
    assert n >= (31700 if not fmt_o.signed else 63400), n


def test_encode_specials():
    nan = torch.tensor([float("nan"), -float("nan")])
    assert golden.encode(nan, golden.E4M3).tolist() == [0x7F, 0x7F]
    assert golden.encode(nan, golden.UE4M3).tolist() == [0x7F, 0x7F]
    with pytest.raises(ValueError):
        golden.encode(nan[:1], golden.E2M1)
    with pytest.raises(ValueError):
        golden.encode(torch.tensor([1.0, -1e-30]), golden.UE4M3)
    assert golden.encode(torch.tensor([-0.0, 0.0]), golden.UE4M3).tolist() == [0, 0]
    # negative values that round to zero keep the sign; +-Inf saturate
    assert golden.encode(torch.tensor([-0.25, -1e-30, -0.0, INF, -INF]), golden.E2M1).tolist() == [8, 8, 8, 7, 15]
    assert golden.encode(torch.tensor([-(2.0**-10), -1e-30, INF, -INF]), golden.E4M3).tolist() == [
        0x80,
        0x80,
        0x7E,
        0xFE,
    ]
    assert golden.encode(torch.tensor([INF]), golden.UE4M3).tolist() == [0x7E]


# ------------------------------------------------------------------------------------ (2) encode_ratio


def _compare_ratio(nums, dens, fmt_g, fmt_o):
    """golden.encode_ratio(nums, dens) vs the oracle's RNE(num/den) on exact rationals."""
    codes = golden.encode_ratio(nums, dens, fmt_g).tolist()
    bad = []
    for num, den, c in zip(nums.to(torch.float64).tolist(), dens.to(torch.float64).tolist(), codes):
        mag, sign = O.encode_value(Fraction(num) / Fraction(den), O.sign_of(num) == 1, fmt_o)
        expected = O.value_to_code(mag, sign, fmt_o)
        if c != expected:
            bad.append((num.hex(), den.hex(), hex(c), hex(expected)))
    assert not bad, f"{len(bad)}/{len(codes)} {fmt_o.name} ratio encodes differ (num, den, got, expected): {bad[:10]}"
    return len(codes)


def _naive_disagreements(nums, dens, fmt_o):
    """How many pairs a double-rounding implementation would get wrong: RNE of the FP32 quotient, or of
    num / fl32(den). A positive count shows the crafted pairs can tell exact from double rounding."""
    wrong = 0
    for num, den in zip(nums.to(torch.float64).tolist(), dens.to(torch.float64).tolist()):
        exact = O.encode_value(Fraction(num) / Fraction(den), num < 0, fmt_o)
        q32 = O.fl32(Fraction(num) / Fraction(den))
        d32 = O.fl32(Fraction(den))
        naive1 = O.encode_value(q32, num < 0, fmt_o)
        naive2 = O.encode_value(Fraction(num) / d32, num < 0, fmt_o)
        wrong += naive1 != exact or naive2 != exact
    return wrong


def _random_24bit_g(rng, lo=-30, hi=30):
    """A random FP32 value with a full 24-bit odd significand."""
    return Fraction(rng.randrange(1 << 23, 1 << 24) | 1) * Fraction(2) ** (rng.randint(lo, hi) - 23)


@pytest.mark.parametrize("name", FORMATS)
def test_encode_ratio_exact_ties_den_3_pow2(name):
    """num = mid * 3 * 2**k exactly: the quotient is a tie; hair-off nums (nextafter) are not."""
    fmt_g, fmt_o = FORMATS[name]
    nums, dens = [], []
    for k in range(-12, 12, 3):
        den = 3 * Fraction(2) ** k
        for m in O.midpoints(fmt_o) + O.grid(fmt_o)[1:]:
            nums.append(m * den)
            dens.append(den)
    num = _exact_f32(nums)
    den = torch.tensor([float(d) for d in dens], dtype=torch.float64)
    num = torch.cat([num, _next_up(num), _next_down(num)])
    den = torch.cat([den, den, den])
    if fmt_o.signed:
        num, den = torch.cat([num, -num]), torch.cat([den, den])
    n = _compare_ratio(num, den, fmt_g, fmt_o)
    assert n >= (8 * 13 * 3 if name == "e2m1" else 8 * 252 * 3), n


@pytest.mark.parametrize("name", FORMATS)
def test_encode_ratio_near_ties_den_g_times_s(name):
    """den = G * s with a 24-bit G and a UE4M3 s (up to 28 significant bits, not FP32-exact); num is the
    FP32 value nearest to mid * den and its neighbours. The FP32 quotient of such a pair lands on the tie
    although the exact quotient is not one, so any double rounding shows up."""
    fmt_g, fmt_o = FORMATS[name]
    rng = random.Random(21 + len(name))
    s_grid = [s for s in O.grid(O.UE4M3)[1:]]
    mids = O.midpoints(fmt_o)
    nums64, dens = [], []
    for _ in range(1500):
        den = _random_24bit_g(rng) * rng.choice(s_grid)
        nums64.append(float(rng.choice(mids) * den))  # <= 33 significant bits: exact in float64
        dens.append(float(den))
    target = torch.tensor(nums64, dtype=torch.float64)
    den = torch.tensor(dens, dtype=torch.float64)
    near = target.to(torch.float32)
    nums = [near, _next_up(near), _next_down(near), _next_up(_next_up(near)), _next_down(_next_down(near))]
    num = torch.cat(nums)
    den = torch.cat([den] * len(nums))
    if fmt_o.signed:
        num, den = torch.cat([num, -num]), torch.cat([den, den])
    n = _compare_ratio(num, den, fmt_g, fmt_o)
    assert n >= 7500
    # teeth: count on a slice (the naive check is slower)
    wrong = _naive_disagreements(num[:3000], den[:3000], fmt_o)
    assert wrong >= 100, wrong


@pytest.mark.parametrize("name", FORMATS)
def test_encode_ratio_exact_ties_den_g_times_s(name):
    """den = G * s where G has few enough bits that mid * G * s is an FP32 value: exact ties at every
    (G, s), plus the FP32 neighbours."""
    fmt_g, fmt_o = FORMATS[name]
    rng = random.Random(31 + len(name))
    s_grid = O.grid(O.UE4M3)[1:]
    mids = O.midpoints(fmt_o)
    nums, dens = [], []
    for _ in range(1500):
        g = Fraction(rng.randrange(1 << 14, 1 << 15) | 1) * Fraction(2) ** rng.randint(-40, 20)
        den = g * rng.choice(s_grid)
        nums.append(rng.choice(mids) * den)
        dens.append(den)
    num = _exact_f32(nums)
    den = torch.tensor([float(d) for d in dens], dtype=torch.float64)
    num = torch.cat([num, _next_up(num), _next_down(num)])
    den = torch.cat([den, den, den])
    if fmt_o.signed:
        num, den = torch.cat([num, -num]), torch.cat([den, den])
    n = _compare_ratio(num, den, fmt_g, fmt_o)
    assert n >= 4500


@pytest.mark.parametrize("name", FORMATS)
def test_encode_ratio_float64_numerators_one_ulp_off_ties(name):
    """float64 numerators (53 bits) one and two ulps off mid * den with 28-bit den: the float64 quotient
    sits within an ulp or two of the tie, so only the exact correction step gets these right."""
    fmt_g, fmt_o = FORMATS[name]
    rng = random.Random(41 + len(name))
    s_grid = O.grid(O.UE4M3)[1:]
    mids = O.midpoints(fmt_o)
    nums, dens = [], []
    for _ in range(800):
        den = _random_24bit_g(rng) * rng.choice(s_grid)
        nums.append(float(rng.choice(mids) * den))
        dens.append(float(den))
    target = torch.tensor(nums, dtype=torch.float64)
    den = torch.tensor(dens, dtype=torch.float64)
    up = torch.nextafter(target, torch.full_like(target, INF))
    down = torch.nextafter(target, torch.full_like(target, -INF))
    parts = [target, up, down, torch.nextafter(up, torch.full_like(up, INF)), torch.nextafter(down, torch.full_like(down, -INF))]
    num = torch.cat(parts)
    den = torch.cat([den] * len(parts))
    if fmt_o.signed:
        num, den = torch.cat([num, -num]), torch.cat([den, den])
    assert _compare_ratio(num, den, fmt_g, fmt_o) >= 4000


def test_encode_ratio_broadcast_and_bad_denominators():
    num = torch.tensor([[0.75], [2.5], [-5.0]], dtype=torch.float32)
    den = torch.tensor([1.0, 0.5, 3.0], dtype=torch.float64)
    got = golden.encode_ratio(num, den, golden.E2M1)
    assert got.shape == (3, 3)
    for i in range(3):
        for j in range(3):
            q = Fraction(num[i, 0].item()) / Fraction(den[j].item())
            assert got[i, j].item() == O.value_to_code(*O.encode_value(q, q < 0, O.E2M1), O.E2M1)
    for bad in (0.0, -1.0, INF, float("nan")):
        with pytest.raises(ValueError):
            golden.encode_ratio(torch.tensor([1.0]), torch.tensor([bad]), golden.E4M3)


# ----------------------------------------------------------------------------- (3) block quantization


def _check_block_tensor(x, precision, bt, G):
    """Compare a BlockTensor (and its dequantization) block by block with the oracle under global scale G.

    Returns (blocks compared, elements compared)."""
    assert bt.codes.dtype == torch.uint8 and bt.scales.dtype == torch.uint8
    assert bt.global_scale.dtype == torch.float32 and bt.global_scale.numel() == 1
    assert Fraction(bt.global_scale.item()) == G, (bt.global_scale.item(), G)
    size = bt.block_size
    values = x.to(torch.float64).reshape(-1, size).tolist()
    prec = torch.broadcast_to(precision, bt.precision.shape).reshape(-1).tolist()
    assert bt.precision.reshape(-1).tolist() == prec
    codes = bt.codes.reshape(-1, size).tolist()
    scales = bt.scales.reshape(-1).tolist()
    deq = golden.dequantize(bt)
    assert deq.dtype == torch.float32 and tuple(deq.shape) == tuple(x.shape)
    deq = deq.to(torch.float64).reshape(-1, size).tolist()
    bad = []
    for b, (vals, fp8) in enumerate(zip(values, prec)):
        s, elements, signs = O.oracle_quantize_block(vals, fp8, G)
        got_s = O.code_to_value(scales[b], O.UE4M3)
        if got_s != (s, 0) or scales[b] != O.value_to_code(s, 0, O.UE4M3):
            bad.append(("scale", b, vals, hex(scales[b]), s))
            continue
        fmt = O.E4M3 if fp8 else O.E2M1
        expected_deq = O.oracle_dequantize_block(G, s, elements, signs)
        for i, (c, e, sign, d, (de, dsign)) in enumerate(zip(codes[b], elements, signs, deq[b], expected_deq)):
            if not fp8 and c > 0xF:
                bad.append(("nibble", b, i, vals[i], hex(c)))
                continue
            got = O.code_to_value(c, fmt)
            if got == O.NAN or got[1] != sign or (-got[0] if got[1] else got[0]) != e:
                bad.append(("element", b, i, vals[i], hex(c), e, sign))
            elif Fraction(d) != de or O.sign_of(d) != dsign:
                bad.append(("dequantize", b, i, vals[i], d, de, dsign))
    assert not bad, f"{len(bad)} mismatches, first: {bad[:5]}"
    return len(values), len(values) * size


def _run_blocks(x, precision, **kw):
    bt = golden.quantize_blocks(x, precision, **kw)
    if "scale" in kw:
        scale = kw["scale"]
        G = Fraction(scale.item() if isinstance(scale, torch.Tensor) else scale)
    else:
        G = O.oracle_global_scale(x.to(torch.float64).reshape(-1).tolist())
    return _check_block_tensor(x, precision, bt, G)


def _mask(shape, gen, p=0.5):
    return torch.rand(shape, generator=gen) < p


def test_blocks_normal_data_1024_blocks():
    gen = _gen(101)
    x = torch.randn(32, 512, generator=gen)
    blocks, elements = _run_blocks(x, _mask((32, 32), gen))
    assert blocks == 1024 and elements == 16384


def test_blocks_heavy_tailed_data_1024_blocks():
    gen = _gen(102)
    u = torch.rand(16, 1024, generator=gen, dtype=torch.float64)
    cauchy = torch.tan(math.pi * (u - 0.5))
    row_scale = torch.exp2(torch.randn(16, 1, generator=gen, dtype=torch.float64) * 8)
    block_scale = torch.exp2(torch.randint(-24, 24, (16, 64, 1), generator=gen).double()).repeat(1, 1, 16)
    x = (cauchy * row_scale * block_scale.reshape(16, 1024)).to(torch.float32)
    x = torch.where(torch.isfinite(x), x, 0.0)
    blocks, _ = _run_blocks(x, _mask((16, 64), gen))
    assert blocks == 1024


def test_blocks_random_fp32_bit_patterns_1024_blocks():
    gen = _gen(103)
    x = _random_f32_bits(8 * 1024, gen)
    x = torch.where(torch.isfinite(x), x, -0.0).reshape(8, 1024)
    blocks, _ = _run_blocks(x, _mask((8, 64), gen))
    # small-magnitude bit patterns: G lands in the FP32 subnormal range
    y = torch.randint(-(1 << 26), 1 << 26, (4 * 1024,), dtype=torch.int64, generator=gen)
    y = (y.abs() | (y < 0).long() << 31).to(torch.int32).view(torch.float32).reshape(4, 1024)
    assert O.oracle_global_scale(y.double().reshape(-1).tolist()) < Fraction(2) ** -126
    blocks2, _ = _run_blocks(y, _mask((4, 64), gen))
    assert blocks + blocks2 == 768


def test_blocks_wide_block_dynamic_range_with_zero_scales_768_blocks():
    """Per-block magnitudes spread over 2**+-40: many blocks get a zero or subnormal UE4M3 scale."""
    gen = _gen(104)
    x = torch.randn(12, 64, 16, generator=gen, dtype=torch.float64)
    x = x * torch.exp2(torch.randint(-40, 12, (12, 64, 1), generator=gen).double())
    x[0, 0, 0] = 1000.0
    x[3, 5] = 0.0  # an all-zero block
    x = x.to(torch.float32).reshape(12, 1024)
    bt = golden.quantize_blocks(x, _mask((12, 64), gen))
    scale_values = golden.decode(bt.scales, golden.UE4M3)
    assert int((scale_values == 0).sum()) >= 50 and int(((scale_values > 0) & (scale_values < 2**-6)).sum()) >= 20
    blocks, _ = _run_blocks(x, bt.precision)
    assert blocks == 768


@pytest.mark.parametrize("fp8", [False, True])
def test_quantize_nvfp4_and_fp8_512_blocks(fp8):
    gen = _gen(105 + fp8)
    x = (torch.randn(4, 8, 256, generator=gen) * torch.exp2(torch.randn(4, 8, 1, generator=gen) * 4))
    bt = golden.quantize_fp8(x) if fp8 else golden.quantize_nvfp4(x)
    assert bool((bt.precision == fp8).all()) and bt.precision.shape == (4, 8, 16)
    G = O.oracle_global_scale(x.double().reshape(-1).tolist())
    blocks, _ = _check_block_tensor(x, torch.tensor(fp8), bt, G)
    assert blocks == 512


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_blocks_half_width_inputs_512_blocks(dtype):
    gen = _gen(107)
    x = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    x = x[torch.isfinite(x)]
    x = x[torch.randperm(x.numel(), generator=gen)][: 512 * 16].reshape(16, 512)
    G = O.oracle_global_scale(x.double().reshape(-1).tolist())
    assert Fraction(golden.global_scale(x).item()) == G
    blocks, _ = _run_blocks(x, _mask((16, 32), gen))
    assert blocks == 512


def _crafted_power_of_two_g(k, rng, n_blocks):
    """Blocks under G = 2**k exactly (tensor amax = 2688 * 2**k in block 0) whose elements are exact ties
    G * s * midpoint, grid values G * s * v, and blocks whose amax puts s itself on a UE4M3 tie."""
    G = Fraction(2) ** k
    ue_grid = O.grid(O.UE4M3)[1:]
    ue_mids = O.midpoints(O.UE4M3)
    blocks, precision = [], []
    for b in range(n_blocks):
        fp8 = rng.random() < 0.5
        fmt = O.E4M3 if fp8 else O.E2M1
        emax = fmt.max_value
        if b == 0:
            s = Fraction(2688) / emax
            first = Fraction(2688) * G
        elif rng.random() < 0.25:
            # amax / (emax * G) is a UE4M3 midpoint (a scale tie), not above 6 for FP8 blocks
            candidates = [m for m in ue_mids if m * emax <= 2688]
            first = emax * G * rng.choice(candidates)
            s = O.encode_value(first / (emax * G), False, O.UE4M3)[0]
        else:
            s = rng.choice([v for v in ue_grid if v * emax <= 2688])
            first = emax * G * s
        points = O.midpoints(fmt) + O.grid(fmt)
        vals = [first if rng.random() < 0.5 else -first]
        for _ in range(B - 1):
            v = G * s * rng.choice(points)
            if v > first:  # keep the block amax (and so s) as designed
                v = first
            vals.append(-v if rng.random() < 0.5 else v)
        rng.shuffle(vals)
        blocks.append(vals)
        precision.append(fp8)
    return blocks, precision


@pytest.mark.parametrize("k", [-24, -7, 0, 9, 30])
def test_blocks_crafted_ties_power_of_two_g_256_blocks(k):
    rng = random.Random(200 + k)
    blocks, precision = _crafted_power_of_two_g(k, rng, 256)
    x = _exact_f32([v for blk in blocks for v in blk]).reshape(4, 64 * B)
    prec = torch.tensor(precision).reshape(4, 64)
    G = O.oracle_global_scale(x.double().reshape(-1).tolist())
    assert G == Fraction(2) ** k
    bt = golden.quantize_blocks(x, prec)
    n_blocks, _ = _check_block_tensor(x, prec, bt, G)
    # non-vacuous: count elements that were exact ties of their block's element grid
    ties = 0
    for vals, fp8, sc in zip(x.double().reshape(-1, B).tolist(), precision, bt.scales.reshape(-1).tolist()):
        s = O.code_to_value(sc, O.UE4M3)[0]
        mids = set(O.midpoints(O.E4M3 if fp8 else O.E2M1))
        ties += sum(s != 0 and abs(Fraction(v)) / (G * s) in mids for v in vals)
    assert n_blocks == 256 and ties >= 1000, ties


def test_blocks_crafted_near_ties_24bit_g_512_blocks():
    """G with a full 24-bit significand; elements are the FP32 neighbours of G * s * midpoint (28+ bit
    products), so the element quotients sit a hair off exact ties."""
    rng = random.Random(300)
    amax = Fraction(rng.randrange(1 << 23, 1 << 24) | 1, 1 << 20)
    G = O.oracle_global_scale([amax])
    assert G.numerator.bit_length() >= 20
    values, precision = [], []
    for b in range(512):
        fp8 = rng.random() < 0.5
        fmt = O.E4M3 if fp8 else O.E2M1
        emax = fmt.max_value
        s = rng.choice([v for v in O.grid(O.UE4M3)[1:] if v * emax < 2688 * Fraction(7, 8)])
        first = O.fl32(emax * G * s)
        blk = [amax if b == 0 else first]
        for _ in range(B - 1):
            target = O.fl32(G * s * rng.choice(O.midpoints(fmt)))
            blk.append(-target if rng.random() < 0.5 else target)
        values.append(blk)
        precision.append(fp8)
    x = _exact_f32([v for blk in values for v in blk])
    # move the non-leading elements one or two ulps either way (the block amax stays put)
    gen = _gen(301)
    step = torch.randint(-2, 3, x.shape, generator=gen)
    step.view(-1, B)[:, 0] = 0
    for _ in range(2):
        x = torch.where(step > 0, _next_up(x), torch.where(step < 0, _next_down(x), x))
        step = step - step.sign()
    x = x.reshape(8, 64 * B)
    prec = torch.tensor(precision).reshape(8, 64)
    assert O.oracle_global_scale(x.double().reshape(-1).tolist()) == G
    blocks, _ = _check_block_tensor(x, prec, golden.quantize_blocks(x, prec), G)
    assert blocks == 512


def test_blocks_other_block_sizes():
    gen = _gen(400)
    total = 0
    for size in (1, 2, 8, 32):
        x = torch.randn(3, 4 * size * 4, generator=gen) * 3
        prec = _mask((3, 16), gen)
        bt = golden.quantize_blocks(x, prec, block_size=size)
        total += _check_block_tensor(x, prec, bt, O.oracle_global_scale(x.double().reshape(-1).tolist()))[0]
    assert total == 4 * 48


# -------------------------------------------------------------------------------------- (4) global scale


def test_global_scale_edge_cases():
    z = torch.zeros(4, 32)
    assert golden.global_scale(z).item() == 1.0 and golden.global_scale(-z).item() == 1.0
    assert golden.global_scale(torch.zeros(0)).item() == 1.0
    tiny = 2.0**-149
    cases = {
        tiny: tiny,  # amax / 2688 underflows to 0 -> clamped
        1343 * tiny: tiny,
        1344 * tiny: tiny,  # exact tie 2**-150 -> 0 -> clamped
        1345 * tiny: tiny,
        3 * 1344 * tiny: 2 * tiny,  # 1.5 * 2**-149: tie -> even (2)
        5 * 1344 * tiny: 2 * tiny,  # 2.5 * 2**-149 -> 2
        7 * 1344 * tiny: 4 * tiny,  # 3.5 -> 4
        2688.0: 1.0,
        2688.0 * 2**100: 2.0**100,
        -2688.0 * 2**-100: 2.0**-100,
    }
    for amax, expected in cases.items():
        x = torch.tensor([amax / 4, amax, -amax / 2], dtype=torch.float32)
        assert Fraction(x[1].item()) == Fraction(amax), amax
        g = golden.global_scale(x)
        assert g.dtype == torch.float32 and g.shape == () and g.item() == expected, (amax, g.item(), expected)
        assert O.oracle_global_scale(x.double().tolist()) == Fraction(expected)
    # FP32 max stays finite
    big = torch.tensor([3.4028234663852886e38])
    assert Fraction(golden.global_scale(big).item()) == O.oracle_global_scale(big.double().tolist())


def test_global_scale_random_amax_4000_values():
    gen = _gen(500)
    amax = _random_f32_bits(3000, gen).abs()
    sub = torch.randint(1, 1 << 26, (1000,), dtype=torch.int64, generator=gen).to(torch.int32).view(torch.float32)
    amax = torch.cat([_finite(amax), sub])
    n = 0
    for a in amax.tolist():
        x = torch.tensor([-a, a / 3], dtype=torch.float32)
        assert Fraction(golden.global_scale(x).item()) == O.oracle_global_scale(x.double().tolist()), a
        n += 1
    assert n >= 3900


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_global_scale_half_width_every_pattern(dtype):
    """amax = each finite bf16 / fp16 value (incl. subnormals), from a tensor of that dtype."""
    x = torch.arange(0, 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    x = x[torch.isfinite(x)]
    n = 0
    for i in range(0, x.numel(), 7):  # every 7th pattern keeps this fast and still spans all binades
        t = torch.stack([-x[i], x[i] / 2])
        assert t.dtype == dtype
        assert Fraction(golden.global_scale(t).item()) == O.oracle_global_scale([-float(x[i])]), float(x[i])
        n += 1
    assert n >= 4000


# ------------------------------------------------------------------------------------- (5) scale= override


@pytest.mark.parametrize("scale", [2.0**-3, 2.0**10, 2.0**-149, 2.0**100, "fp32(0.1)"])
def test_scale_override_matches_oracle(scale):
    gen = _gen(600)
    x = torch.randn(8, 512, generator=gen) * 5
    prec = _mask((8, 32), gen)
    if scale == "fp32(0.1)":
        scale = torch.tensor(0.1, dtype=torch.float32)  # FP32-exact, not a power of two
    blocks, _ = _run_blocks(x, prec, scale=scale)
    bt = golden.quantize_nvfp4(x, scale=scale)
    g = Fraction(scale.item() if isinstance(scale, torch.Tensor) else scale)
    assert Fraction(bt.global_scale.item()) == g
    blocks += _check_block_tensor(x, torch.tensor(False), bt, g)[0]
    blocks += _check_block_tensor(x, torch.tensor(True), golden.quantize_fp8(x, scale=scale), g)[0]
    assert blocks == 3 * 256


def test_scale_override_rejects_non_fp32_values():
    x = torch.randn(2, 32)
    prec = torch.tensor(False)
    for bad in (0.1, torch.tensor(0.1, dtype=torch.float64), 1.0 + 2.0**-30, 2.0**-150, 1e39):
        with pytest.raises(ValueError):
            golden.quantize_blocks(x, prec, scale=bad)
    for bad in (0.0, -1.0, INF, float("nan")):
        with pytest.raises(ValueError):
            golden.quantize_blocks(x, prec, scale=bad)
