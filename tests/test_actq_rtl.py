"""The activation quantization unit in amaranth.sim against the golden model (docs/numerics.md §9): BF16
blocks across the whole exponent range, many k, threshold straddling, non-finite input, back-pressure,
the counters, the table and parameter validation."""

import math
import random
import struct
from fractions import Fraction

import pytest
import torch

from fgmp import golden
from fgmp.hw import ActivationQuantizer
from fgmp.hw.actq import MAX_PIPELINE_STAGES, align_score, score_above, score_width
from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from fgmp.sim.actq_stimuli import config_writes, median_threshold, random_bf16
from rtl_ops import rtl_actq, rtl_actq_rounds, rtl_readiness

B = 16


def _check(unit, x, config, **stalls):
    return _check_result(unit, x, config, rtl_actq(unit, x, config, **stalls))


def _check_result(unit, x, config, result):
    want = golden.quantize_activations(x, config, block_size=unit.block_size).blocks
    codes, scales, precision, markers, counters = result
    assert torch.equal(precision, want.precision)
    assert torch.equal(scales, want.scales)
    assert torch.equal(codes, want.codes)
    n = x.shape[1] // unit.block_size
    assert markers == [(int(b == 0), int(b == n - 1)) for _ in range(x.shape[0]) for b in range(n)]
    assert counters[:2] == [int(want.precision.sum()), int((~want.precision).sum())]
    assert counters[2] == int(x.shape[1] > unit.max_channels)
    return want


# 4, 8, 13 and 33: where the sensitivity table's late read moves to a later cut (``_table_join``).
@pytest.mark.parametrize("pipeline_stages", [0, 1, 2, 3, 4, 8, 13, 33, MAX_PIPELINE_STAGES])
def test_random_bf16_blocks_many_k_under_stalls(pipeline_stages):
    rng = random.Random(pipeline_stages)
    unit = ActivationQuantizer(max_channels=128, pipeline_stages=pipeline_stages)
    x = random_bf16(rng, (6, 64), nonfinite=0.01)
    f = torch.tensor([rng.randrange(0x7F) for _ in range(64)], dtype=torch.uint8)
    configs = [golden.ActivationConfig(scale_exponent=k, threshold=median_threshold(x, f, k), sensitivities=f)
               for k in (rng.randint(-128, 127), rng.randint(-10, 10))]
    for config, result in zip(configs, rtl_actq_rounds(unit, x, configs, idle=0.3, backpressure=0.3,
                                                       seed=pipeline_stages)):
        _check_result(unit, x, config, result)


@pytest.mark.parametrize("pipeline_stages", [0, 3, 8, 33, MAX_PIPELINE_STAGES])
def test_credit_flow_control_matches_golden_under_stalls(pipeline_stages):
    """Credit flow control: the registers run free and results queue; heavy back-pressure fills the queue,
    and no block is lost, reordered or counted twice."""
    rng = random.Random(40 + pipeline_stages)
    unit = ActivationQuantizer(max_channels=64, pipeline_stages=pipeline_stages, flow_control="credit")
    x = random_bf16(rng, (8, 64), nonfinite=0.01)
    f = torch.tensor([rng.randrange(0x7F) for _ in range(64)], dtype=torch.uint8)
    k = rng.randint(-10, 10)
    config = golden.ActivationConfig(scale_exponent=k, threshold=median_threshold(x, f, k), sensitivities=f)
    _check(unit, x, config, idle=0.2, backpressure=0.7, seed=pipeline_stages)


def test_credit_flow_control_ready_does_not_follow_the_sink():
    """``i.ready`` comes from the credit count: a sink that stops does not take it away in the same cycle
    (under the stall discipline it does, once a result waits), and once every queue entry is spoken for
    the unit stops taking blocks."""
    def readiness(flow_control):
        unit = ActivationQuantizer(block_size=2, max_channels=4, pipeline_stages=2, flow_control=flow_control)
        return unit, rtl_readiness(unit, cycles=unit.latency + 6)

    unit, seen = readiness("credit")
    assert all(with_sink == without for with_sink, without in seen)
    # Nothing leaves: the first edge and result_entries - 1 more take a block each, then none.
    taken = unit.result_entries - 1
    assert [ready for ready, _ in seen] == [1] * taken + [0] * (len(seen) - taken)
    _, seen = readiness("stall")
    assert any(with_sink != without for with_sink, without in seen)


def test_extreme_scale_exponents_saturate_and_underflow():
    rng = random.Random(5)
    unit = ActivationQuantizer(max_channels=32, pipeline_stages=1)
    x = random_bf16(rng, (4, 32))
    f = torch.full((32,), 0x38, dtype=torch.uint8)
    configs = [golden.ActivationConfig(scale_exponent=k, threshold=1.0, sensitivities=f) for k in (-128, -64, 64, 127)]
    for config, result in zip(configs, rtl_actq_rounds(unit, x, configs)):
        _check_result(unit, x, config, result)


def test_threshold_straddling_decides_like_golden():
    """T just below, equal to (where FP32 can hold the score) and just above each block's score."""
    rng = random.Random(2)
    unit = ActivationQuantizer(max_channels=64, pipeline_stages=0)
    x = random_bf16(rng, (2, 64))
    f = torch.tensor([rng.randrange(0x20, 0x60) for _ in range(64)], dtype=torch.uint8)
    scores = golden.quantize_activations(x, golden.ActivationConfig(scale_exponent=0, threshold=0.0,
                                                                    sensitivities=f)).scores
    configs = []
    for score in scores.flatten().tolist()[:4]:
        nearest = torch.tensor(score, dtype=torch.float32)
        for t in (torch.nextafter(nearest, torch.tensor(0.0)), nearest, torch.nextafter(nearest, torch.tensor(math.inf))):
            configs.append(golden.ActivationConfig(scale_exponent=0, threshold=float(t), sensitivities=f))
    # One simulation, the configuration rewritten through the port between rounds.
    decided = {int(_check_result(unit, x, config, result).precision.sum())
               for config, result in zip(configs, rtl_actq_rounds(unit, x, configs))}
    assert len(decided) > 1


def test_non_finite_zero_and_tiny_blocks():
    unit = ActivationQuantizer(max_channels=64, pipeline_stages=1)
    nan, inf = float("nan"), float("inf")
    x = torch.tensor([[1.0, nan] + [0.5] * 14 + [2.0, -inf] + [0.25] * 14 + [0.0] * 8 + [-0.0] * 8 + [1e-38] * 16,
                      [inf, nan] + [0.0] * 14 + [-inf] * 16 + [3.0] * 16 + [-1e-3] * 16], dtype=torch.bfloat16)
    f = torch.full((64,), 0x38, dtype=torch.uint8)
    want = _check(unit, x, golden.ActivationConfig(scale_exponent=0, threshold=0.0, sensitivities=f))
    assert want.precision[0, :2].all() and want.precision[1, :2].all()


def test_reduction_longer_than_the_table_reuses_the_last_row_and_sets_the_sticky_flag():
    rng = random.Random(9)
    unit = ActivationQuantizer(max_channels=32, pipeline_stages=0)
    assert unit.max_channels == 32 and unit.latency == 1
    x = random_bf16(rng, (2, 48))
    f = torch.tensor([rng.randrange(0x7F) for _ in range(32)], dtype=torch.uint8)
    as_seen = torch.cat([f, f[16:]])  # the third block reads the last row again
    _check(unit, x, golden.ActivationConfig(scale_exponent=0, threshold=median_threshold(x, as_seen, 0),
                                            sensitivities=as_seen))


def test_one_row_table_serves_every_block_of_a_reduction():
    rng = random.Random(10)
    unit = ActivationQuantizer(max_channels=16, pipeline_stages=1)
    x = random_bf16(rng, (2, 48))
    f = torch.tensor([rng.randrange(0x7F) for _ in range(16)], dtype=torch.uint8)
    as_seen = f.repeat(3)  # every block reads the only row
    _check(unit, x, golden.ActivationConfig(scale_exponent=0, threshold=median_threshold(x, as_seen, 0),
                                            sensitivities=as_seen))


@pytest.mark.parametrize("flow_control", ["stall", "credit"])
@pytest.mark.parametrize("pipeline_stages", range(MAX_PIPELINE_STAGES + 1))
def test_full_rate_latency_at_every_depth(pipeline_stages, flow_control):
    """Blocks offered every cycle with the sink always ready: one is taken every cycle (II = 1), each
    result leaves ``latency`` = P + 1 cycles after its block was taken, bit-exact, under either flow
    control (B = 2 keeps the depths cheap)."""
    rng = random.Random(pipeline_stages)
    unit = ActivationQuantizer(block_size=2, max_channels=4, pipeline_stages=pipeline_stages,
                               flow_control=flow_control)
    assert unit.latency == pipeline_stages + 1
    assert unit.result_entries == (unit.latency + 1 if flow_control == "credit" else 0)
    x = random_bf16(rng, (12, 4), nonfinite=0.02)
    f = torch.tensor([rng.randrange(0x7F) for _ in range(4)], dtype=torch.uint8)
    config = golden.ActivationConfig(scale_exponent=rng.randint(-4, 4),
                                     threshold=median_threshold(x, f, 0, block_size=2), sensitivities=f)
    want = golden.quantize_activations(x, config, block_size=2).blocks
    bits = (x.view(torch.int16).to(torch.int32) & 0xFFFF).tolist()
    layout, config_layout = unit.i.payload.shape(), unit.config.shape()
    words = [layout.const({"values": bits[t][2 * b:2 * b + 2], "first": int(b == 0), "last": int(b == 1)})
             for t in range(12) for b in range(2)]
    taken, delivered = [], []

    async def bench(ctx):
        for write in config_writes(config, 2):
            ctx.set(unit.config, config_layout.const(write))
            await ctx.tick()
        ctx.set(unit.o.ready, 1)
        for cycle in range(len(words) + unit.latency + 4):
            if cycle < len(words):
                ctx.set(unit.i.valid, 1)
                ctx.set(unit.i.payload, words[cycle])
            else:
                ctx.set(unit.i.valid, 0)
            if ctx.get(unit.i.valid) and ctx.get(unit.i.ready):
                taken.append(cycle)
            if ctx.get(unit.o.valid):
                block = ctx.get(unit.o.payload.block)
                delivered.append((cycle, [int(c) for c in block.codes], int(block.scale), int(block.fp8)))
            await ctx.tick()

    sim = Simulator(unit)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert taken == list(range(len(words)))
    assert [d[0] for d in delivered] == [c + unit.latency for c in taken]
    assert [d[1] for d in delivered] == want.codes.reshape(-1, 2).tolist()
    assert [d[2] for d in delivered] == want.scales.reshape(-1).tolist()
    assert [d[3] for d in delivered] == want.precision.reshape(-1).int().tolist()


@pytest.mark.parametrize("kwargs,error,message", [
    ({"block_size": 0}, ValueError, "Block size must be at least 1, not 0"),
    ({"max_channels": 0}, ValueError, "Maximum channels must be at least 1, not 0"),
    ({"max_channels": 40}, ValueError, "Maximum channels (40) must be a multiple of the block size (16)"),
    ({"max_channels": 64.0}, TypeError, "Maximum channels must be an integer, not 64.0"),
    ({"pipeline_stages": MAX_PIPELINE_STAGES + 1}, ValueError,
     f"Pipeline stages must be between 0 and {MAX_PIPELINE_STAGES}, not {MAX_PIPELINE_STAGES + 1}"),
    ({"pipeline_stages": "1"}, TypeError, "Pipeline stages must be an integer, not '1'"),
    ({"flow_control": "skid"}, ValueError, "Unknown flow control 'skid'; choose from 'stall', 'credit'"),
    ({"flow_control": None}, TypeError, "Flow control must be one of 'stall', 'credit', not None"),
])
def test_invalid_parameters(kwargs, error, message):
    with pytest.raises(error) as info:
        ActivationQuantizer(**kwargs)
    assert str(info.value) == message


class _Decision(wiring.Component):
    """hw/actq.py's threshold compare alone: score = total * 2**(top - 85) > T."""

    def __init__(self):
        super().__init__({"total": In(score_width(B)), "top": In(range(94)), "threshold": In(32), "greater": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.greater.eq(score_above(m, align_score(m, self.total, self.top, self.threshold)))
        return m


def _exact_greater(total, top, threshold_bits):
    field, mantissa = (threshold_bits >> 23) & 0xFF, threshold_bits & 0x7FFFFF
    if field == 0xFF:  # Inf and NaN: never above
        return False
    t = Fraction(mantissa | (field > 0) << 23) * Fraction(2) ** (max(field, 1) - 150)
    return Fraction(total) * Fraction(2) ** (top - 85) > t


def test_score_against_threshold_is_exact():
    """The compare in T's integer frame against exact rationals: T at one FP32 step either side of the
    score and on it, T at the frame's edges (floor 0 / below 2**45 / past it), zero, subnormal, Inf, NaN."""
    rng = random.Random(11)
    width = score_width(B)
    cases = []
    for _ in range(3000):
        top = rng.choice([0, 1, 93, rng.randrange(94)])
        total = rng.choice([0, 1, (1 << width) - 1, rng.getrandbits(rng.randrange(1, width + 1))])
        score = float(total) * 2.0 ** (top - 85)
        nearest = struct.unpack("<I", struct.pack("<f", score))[0] if score < 3e38 else 0x7F7FFFFF
        edge = top + 65 + rng.choice([-25, -24, -23, -22, 20, 21, 22, 23])  # offset of T's frame
        cases.append((total, top, rng.choice([
            nearest, nearest + 1, max(nearest - 1, 0), rng.getrandbits(32) & 0x7FFFFFFF,
            rng.getrandbits(31) | 1 << 31,  # the sign is ignored
            (min(max(edge, 1), 254) << 23) | rng.getrandbits(23),
            0, rng.getrandbits(23), 0x7F800000, 0x7FC00000, 0x7F7FFFFF, 0x00800000])))
    dut = _Decision()
    got = []

    async def testbench(ctx):
        for total, top, threshold in cases:
            ctx.set(dut.total, total)
            ctx.set(dut.top, top)
            ctx.set(dut.threshold, threshold)
            got.append(bool(ctx.get(dut.greater)))

    sim = Simulator(dut)
    sim.add_testbench(testbench)
    sim.run()
    want = [_exact_greater(total, top, t & 0x7FFFFFFF) for total, top, t in cases]
    assert got == want
    assert 0.2 < sum(want) / len(want) < 0.8  # both outcomes, often
