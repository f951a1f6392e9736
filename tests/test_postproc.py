"""The tile's post-processing (numerics §10.1 steps 2 and 3): the golden RNE_FP32(u * G) against numpy's
float32 multiply, then the Amaranth unit against the golden at every depth, and the parameter checks."""

import random

import numpy as np
import pytest
import torch
from amaranth import Shape
from amaranth.lib import data
from amaranth.sim import Simulator

from fgmp.golden.bfloat16 import fp32_to_bf16_bits
from fgmp.golden.dot import CANONICAL_NAN_BITS
from fgmp.golden.postproc import postprocess, scale_fp32_bits
from fgmp.hw.postproc import CUTS, MAX_PIPELINE_STAGES, PostProcessor

SPECIALS = [
    0x00000000, 0x80000000,  # ±0
    0x00000001, 0x80000001, 0x007FFFFF, 0x807FFFFF, 0x00400000, 0x00000003,  # subnormals
    0x00800000, 0x80800000, 0x7F7FFFFF, 0xFF7FFFFF,  # smallest and largest normals
    0x3F800000, 0xBF800000, 0x3FC00000, 0x3F800001, 0x3FFFFFFF, 0x4B000001, 0x34000000, 0x5F000000,
    0x7F800000, 0xFF800000,  # ±Inf
    0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFFFFFFF, 0x7FBFFFFF,  # quiet and signalling NaNs
]


def numpy_scale(values, scale):
    """The reference: numpy's float32 multiply (IEEE, RNE, subnormals kept), any NaN made canonical."""
    u = np.asarray(values, dtype=np.uint32).view(np.float32)
    g = np.array([scale], dtype=np.uint32).view(np.float32)[0]
    with np.errstate(all="ignore"):
        product = u * g
    return np.where(np.isnan(product), CANONICAL_NAN_BITS, product.view(np.uint32).astype(np.int64)).tolist()


def golden_scale(values, scale):
    return scale_fp32_bits(torch.tensor(values, dtype=torch.int64), scale).tolist()


def golden_postprocess(values, scale):
    """[(fp32, bf16) per value] from the golden model."""
    fp32, bf16 = postprocess(torch.tensor(values, dtype=torch.int64), scale)
    return list(zip(fp32.tolist(), bf16.tolist()))


def with_exponents(rng, count, exponents):
    """Random FP32 words whose exponent field is drawn from ``exponents``."""
    sign_and_mantissa = rng.integers(0, 1 << 32, size=count, dtype=np.int64) & ~(0xFF << 23)
    return (sign_and_mantissa | (rng.choice(exponents, size=count).astype(np.int64) << 23)).tolist()


def boundary_pairs(rng, count, result_exponents):
    """(values, scale) with random significands whose exponent fields sum to a result exponent field
    e_u + e_g - 127 drawn from ``result_exponents`` (before the carry of the significand product)."""
    pairs = []
    for _ in range(count):
        e_g = int(rng.integers(1, 255))
        targets = [e + 127 - e_g for e in result_exponents]
        targets = [e for e in targets if 0 <= e <= 254]
        if not targets:
            continue
        scale = with_exponents(rng, 1, [e_g])[0]
        pairs.append((with_exponents(rng, 64, targets), scale))
    return pairs


def tie_pairs(rng):
    """(values, scale) whose exact products lie halfway between two FP32 neighbours.

    Normal results: G's significand 1.5 (3 * 2**22) and u's significand odd and below 2**25 / 3, so the
    product 3 * m_u * 2**22 < 2**47 drops exactly 23 bits, the top one set and the rest zero. Subnormal
    results: G a power of two and u's significand ending in a one followed by s - 1 zeros, shifted right
    by s into the subnormal range."""
    pairs = []
    for _ in range(8):
        e_g = int(rng.integers(1, 255))
        scale = (int(rng.integers(0, 2)) << 31) | (e_g << 23) | (1 << 22)
        significands = rng.integers(1 << 22, ((1 << 25) // 3 - 1) // 2, size=64) * 2 + 1
        # The result's exponent field e_u + e_g - 127 in 1..253: normal, and finite after a carry.
        e_u = rng.integers(max(1, 128 - e_g), min(254, 380 - e_g) + 1, size=64)
        signs = rng.integers(0, 2, size=64) << 31
        pairs.append(((signs | (e_u << 23) | (significands - (1 << 23))).tolist(), scale))
    for s in range(1, 25):
        # u = m * 2**(e_u - 150) times G = 2**(e_g - 127) lands its LSB s bits below 2**-149.
        e_g = int(rng.integers(1, 127))  # G < 1 and normal
        e_u = 150 - 149 - s - (e_g - 127)  # e_u - 150 + e_g - 127 = -149 - s
        if not 1 <= e_u <= 254:
            continue
        significands = (rng.integers(1 << 23, 1 << 24, size=16) >> s << s) | (1 << (s - 1))
        significands = significands | (1 << 23)
        signs = rng.integers(0, 2, size=16) << 31
        pairs.append(((signs | (e_u << 23) | (significands - (1 << 23))).tolist(), (e_g << 23)))
    return pairs


def is_tie(value, scale):
    """The exact product (a float64 holds it) lies halfway between its FP32 rounding and the neighbour
    on the other side."""
    u = np.array([value], dtype=np.uint32).view(np.float32).astype(np.float64)[0]
    g = np.array([scale], dtype=np.uint32).view(np.float32).astype(np.float64)[0]
    exact = u * g
    nearest = np.float32(exact)
    other = np.nextafter(nearest, np.float32(np.inf) if exact > nearest else np.float32(-np.inf))
    return exact != nearest and abs(exact - float(nearest)) == abs(float(other) - exact)


# --- golden against numpy -------------------------------------------------------------------------------


def test_every_special_class_crossed_matches_numpy():
    for scale in SPECIALS:
        assert golden_scale(SPECIALS, scale) == numpy_scale(SPECIALS, scale), hex(scale)


def test_special_results():
    assert golden_scale([0x7F800000, 0x00000000, 0x7FBFFFFF, 0x3F800000], 0x00000000) == \
        [CANONICAL_NAN_BITS, 0x00000000, CANONICAL_NAN_BITS, 0x00000000]
    assert golden_scale([0x80000000, 0x00000001, 0x7F7FFFFF], 0xBF000000) == [0x00000000, 0x80000000, 0xFEFFFFFF]
    assert golden_scale([0x00000003], 0x3F000000) == [0x00000002]  # 1.5 ulp of 2**-149: tie to even
    assert golden_scale([0x00FFFFFF], 0x3F000000) == [0x00800000]  # a subnormal rounding up to the smallest normal
    assert golden_scale([0x7F7FFFFF], 0x3F800001) == [0x7F800000]  # rounds past the largest finite value
    assert golden_scale([0x00000001], 0x7F000000) == [0x34800000]  # 2**-149 * 2**127 = 2**-22
    assert golden_postprocess([0x7F7FFFFF, 0xFFC00001, 0x3F808000, 0x3F818000], 0x3F800000) == [
        (0x7F7FFFFF, 0x7F80), (CANONICAL_NAN_BITS, 0x7FC0), (0x3F808000, 0x3F80), (0x3F818000, 0x3F82)]


def test_random_bit_patterns_match_numpy():
    rng = np.random.default_rng(1)
    for _ in range(100):
        values = rng.integers(0, 1 << 32, size=1000, dtype=np.int64).tolist()
        scale = int(rng.integers(0, 1 << 32))
        assert golden_scale(values, scale) == numpy_scale(values, scale)


@pytest.mark.parametrize("result_exponents", [range(-30, 4), range(250, 258)], ids=["subnormal", "overflow"])
def test_products_at_the_range_boundaries_match_numpy(result_exponents):
    rng = np.random.default_rng(2)
    results = []
    for values, scale in boundary_pairs(rng, 300, list(result_exponents)):
        got = golden_scale(values, scale)
        assert got == numpy_scale(values, scale)
        results += got
    exponents = {(word >> 23) & 0xFF for word in results}
    if result_exponents.start < 0:
        assert 0 in exponents and 1 in exponents  # subnormal results, and normal ones next to them
    else:
        assert 0xFF in exponents and 0xFE in exponents  # Inf, and the largest finite binade


def test_exact_ties_round_to_even_like_numpy():
    pairs = tie_pairs(np.random.default_rng(3))
    directions = set()
    for values, scale in pairs:
        assert all(is_tie(value, scale) for value in values)
        got = golden_scale(values, scale)
        assert got == numpy_scale(values, scale)
        assert all(word & 1 == 0 for word in got)  # even (a carry into the next binade leaves a zero field)
        exact = np.array(values, dtype=np.uint32).view(np.float32).astype(np.float64) * \
            np.array([scale], dtype=np.uint32).view(np.float32).astype(np.float64)[0]
        magnitudes = np.abs(np.array(got, dtype=np.uint32).view(np.float32).astype(np.float64))
        directions |= set((magnitudes > np.abs(exact)).tolist())
    assert directions == {False, True}  # ties rounded down and up
    assert len(pairs) > 20
    assert any(((values[0] >> 23) & 0xFF) < 127 for values, _ in pairs)  # subnormal ties present


def test_golden_ignores_the_flush_to_zero_setting():
    rng = np.random.default_rng(4)
    values = SPECIALS + rng.integers(0, 1 << 32, size=2000, dtype=np.int64).tolist()
    scales = [0x00000001, 0x00800000, 0x3F000000, 0x34000000]
    expected = [golden_postprocess(values, scale) for scale in scales]
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormals")
    try:
        assert [golden_postprocess(values, scale) for scale in scales] == expected
    finally:
        torch.set_flush_denormal(False)


def test_bf16_is_the_golden_rounding_of_the_fp32_result():
    rng = np.random.default_rng(5)
    values = rng.integers(0, 1 << 32, size=5000, dtype=np.int64).tolist()
    fp32, bf16 = postprocess(torch.tensor(values), 0x3FC00000)
    assert torch.equal(bf16, fp32_to_bf16_bits(fp32.to(torch.int32).view(torch.float32)))
    assert fp32.dtype == torch.int64 and bf16.dtype == torch.int32


def test_golden_keeps_the_shape():
    fp32, bf16 = postprocess(torch.zeros(2, 3, dtype=torch.int32), 0x3F800000)
    assert fp32.shape == bf16.shape == (2, 3)
    assert postprocess(torch.zeros(0, dtype=torch.int64), 0)[0].shape == (0,)


@pytest.mark.parametrize("bits, scale, error, message", [
    (torch.zeros(2), 0, TypeError, r"^FP32 bit patterns must be an integer tensor$"),
    (torch.zeros(2, dtype=torch.bool), 0, TypeError, r"^FP32 bit patterns must be an integer tensor$"),
    ([0, 1], 0, TypeError, r"^FP32 bit patterns must be an integer tensor$"),
    (torch.tensor([-1]), 0, ValueError, r"^FP32 bit patterns must lie in \[0, 0xFFFFFFFF\]$"),
    (torch.tensor([1 << 32]), 0, ValueError, r"^FP32 bit patterns must lie in \[0, 0xFFFFFFFF\]$"),
    (torch.tensor([0]), 1.0, TypeError, r"^The scale must be an int FP32 bit pattern, not 1\.0$"),
    (torch.tensor([0]), True, TypeError, r"^The scale must be an int FP32 bit pattern, not True$"),
    (torch.tensor([0]), -1, ValueError, r"^The scale must lie in \[0, 0xFFFFFFFF\], not -0x1$"),
    (torch.tensor([0]), 1 << 32, ValueError, r"^The scale must lie in \[0, 0xFFFFFFFF\], not 0x100000000$"),
])
def test_golden_validation(bits, scale, error, message):
    with pytest.raises(error, match=message):
        scale_fp32_bits(bits, scale)
    with pytest.raises(error, match=message):
        postprocess(bits, scale)


# --- the Amaranth unit against the golden ---------------------------------------------------------------


def rtl_postprocess(unit, groups, *, idle=0.0, backpressure=0.0, seed=0):
    """Stream each (values, scale) group through ``unit`` in amaranth.sim with random idle input cycles and
    output back-pressure; the scale changes only between groups, once the unit has emptied. Each beat's
    index (modulo the passthrough's range) rides along as its passthrough and is checked. Returns
    [(fp32, bf16) per value] of every group, in order; fails if ``o`` drops valid or changes its payload
    while stalled, if a result is missing or extra, or if a result comes sooner than ``unit.latency``."""
    W = unit.width
    tag_mask = 0 if unit.passthrough is None else (1 << Shape.cast(unit.passthrough).width) - 1
    tag_offset = 0 if unit.passthrough is None else dict(unit.o.payload.shape())["passthrough"].offset
    beats = []
    for group, (values, scale) in enumerate(groups):
        padded = list(values) + [0] * (-len(values) % W)
        beats += [(group, scale, padded[k:k + W]) for k in range(0, len(padded), W)]
    rng_source, rng_sink = random.Random(seed), random.Random(seed + 1)
    results, accepted, delivered = [], [], []
    cycle_limit = 20 * len(beats) + 10 * unit.latency + 100

    async def source(ctx):
        cycle = 0
        for index, (group, scale, words) in enumerate(beats):
            if index and group != beats[index - 1][0]:
                ctx.set(unit.i.valid, 0)
                while len(results) < index:  # the unit empties before G changes
                    await ctx.tick()
                    cycle += 1
            ctx.set(unit.scale, scale)
            while rng_source.random() < idle:
                ctx.set(unit.i.valid, 0)
                await ctx.tick()
                cycle += 1
            word = sum(value << (32 * e) for e, value in enumerate(words)) | ((index & tag_mask) << (32 * W))
            ctx.set(unit.i.valid, 1)
            ctx.set(unit.i.payload.as_value(), word)
            while True:
                _, _, ready = await ctx.tick().sample(unit.i.ready)
                cycle += 1
                if ready:
                    accepted.append(cycle)
                    break
        ctx.set(unit.i.valid, 0)

    async def sink(ctx):
        cycle, held, idle_after_last = 0, None, 0
        while idle_after_last < unit.latency + 4:
            done = len(results) == len(beats)
            ready = 1 if done else int(rng_sink.random() >= backpressure)
            ctx.set(unit.o.ready, ready)
            _, _, valid, bits, payload = await ctx.tick().sample(unit.o.valid, unit.o.payload.as_value(),
                                                                 unit.o.payload)
            cycle += 1
            assert cycle <= cycle_limit, f"{len(results)} of {len(beats)} results after {cycle} cycles"
            if held is not None:
                assert valid and bits == held, "o dropped valid or changed its payload while stalled"
            held = bits if valid and not ready else None
            if done:
                assert not valid, "the unit produced more results than it was given"
                idle_after_last += 1
            elif ready and valid:
                index = len(results)
                if unit.passthrough is not None:
                    assert (bits >> tag_offset) & tag_mask == index & tag_mask, "passthrough out of step"
                results.append([(int(payload.fp32[e]), int(payload.bf16[e])) for e in range(W)])
                delivered.append(cycle)

    sim = Simulator(unit)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()
    assert all(out - taken >= unit.latency for taken, out in zip(accepted, delivered))
    flat = [pair for beat in results for pair in beat]
    out, start = [], 0
    for values, _ in groups:
        out += flat[start:start + len(values)]
        start += len(values) + (-len(values) % W)
    return out


def golden_groups(groups):
    return [pair for values, scale in groups for pair in golden_postprocess(values, scale)]


def rtl_stimuli(seed, count):
    """About ``count`` values in groups of one scale each: the special classes crossed, ties, products at
    the subnormal and overflow boundaries, and random words under random and special scales."""
    rng = np.random.default_rng(seed)
    groups = [(SPECIALS, scale) for scale in SPECIALS]
    groups += tie_pairs(rng)[::3]
    groups += boundary_pairs(rng, 8, list(range(-30, 4))) + boundary_pairs(rng, 4, list(range(250, 258)))
    total = sum(len(values) for values, _ in groups)
    while total < count:
        scale = int(rng.integers(0, 1 << 32)) if rng.random() < 0.7 else int(rng.choice(SPECIALS))
        values = rng.integers(0, 1 << 32, size=128, dtype=np.int64).tolist()
        groups.append((values, scale))
        total += len(values)
    return groups


@pytest.mark.parametrize("width", [1, 3])
@pytest.mark.parametrize("stages", range(MAX_PIPELINE_STAGES + 1))
def test_rtl_matches_golden_at_every_depth(stages, width):
    groups = rtl_stimuli(10 * stages + width, 3000)
    unit = PostProcessor(width=width, pipeline_stages=stages, passthrough=5)
    assert rtl_postprocess(unit, groups, idle=0.3, backpressure=0.3, seed=stages) == golden_groups(groups)


def test_rtl_streams_one_beat_per_cycle_without_backpressure():
    unit = PostProcessor(width=2, pipeline_stages=MAX_PIPELINE_STAGES)
    values = np.random.default_rng(6).integers(0, 1 << 32, size=400, dtype=np.int64).tolist()
    groups = [(values, 0x3E800001)]
    assert rtl_postprocess(unit, groups) == golden_groups(groups)


def test_unit_properties_and_ports():
    unit = PostProcessor(width=4, pipeline_stages=2, passthrough=data.StructLayout({"token": 3, "last": 1}))
    assert (unit.width, unit.pipeline_stages, unit.latency) == (4, 2, 3)
    assert unit.passthrough == data.StructLayout({"token": 3, "last": 1})
    assert unit.i.payload.shape() == data.StructLayout({
        "values": data.ArrayLayout(32, 4), "passthrough": data.StructLayout({"token": 3, "last": 1})})
    assert unit.o.payload.shape() == data.StructLayout({
        "fp32": data.ArrayLayout(32, 4), "bf16": data.ArrayLayout(16, 4),
        "passthrough": data.StructLayout({"token": 3, "last": 1})})
    assert len(unit.scale) == 32
    plain = PostProcessor()
    assert (plain.width, plain.pipeline_stages, plain.passthrough, plain.latency) == (1, 1, None, 2)
    assert plain.i.payload.shape() == data.StructLayout({"values": data.ArrayLayout(32, 1)})
    assert CUTS[0] == "product" and len(set(CUTS)) == MAX_PIPELINE_STAGES == len(CUTS)


def test_rtl_carries_a_struct_passthrough():
    layout = data.StructLayout({"token": 3, "last": 1})
    unit = PostProcessor(width=1, pipeline_stages=3, passthrough=layout)
    groups = [(list(range(0x3F800000, 0x3F800000 + 40)), 0x40400000)]
    assert rtl_postprocess(unit, groups, idle=0.2, backpressure=0.5) == golden_groups(groups)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(width=0), ValueError, r"^Width must be at least 1, not 0$"),
    (dict(width=2.0), TypeError, r"^Width must be an integer, not 2\.0$"),
    (dict(width=True), TypeError, r"^Width must be an integer, not True$"),
    (dict(pipeline_stages=-1), ValueError, rf"^Pipeline stages must be between 0 and {MAX_PIPELINE_STAGES}, not -1$"),
    (dict(pipeline_stages=MAX_PIPELINE_STAGES + 1), ValueError,
     rf"^Pipeline stages must be between 0 and {MAX_PIPELINE_STAGES}, not {MAX_PIPELINE_STAGES + 1}$"),
    (dict(pipeline_stages="1"), TypeError, r"^Pipeline stages must be an integer, not '1'$"),
    (dict(passthrough="token"), TypeError, r"^Passthrough shape must be a shape-like object, not 'token'$"),
    (dict(passthrough=0), ValueError, r"^Passthrough shape must be at least 1 bit wide, not 0$"),
])
def test_parameter_validation(kwargs, error, message):
    with pytest.raises(error, match=message):
        PostProcessor(**kwargs)


def test_parameters_are_keyword_only():
    with pytest.raises(TypeError):
        PostProcessor(1)
