"""The engine (activation quantization unit -> skid buffer -> dot unit) in amaranth.sim against the golden
engine: BF16 activations and pre-quantized weights in, FP32 results out, bit for bit, under stalls; the
skid buffer and the weights' side queue on their own."""

import random

import pytest
import torch
from amaranth.lib import data
from amaranth.sim import Simulator

from fgmp import golden
from fgmp.hw import DotUnit, Engine
from fgmp.hw.actq import MAX_PIPELINE_STAGES
from fgmp.hw.dot import MAX_PIPELINE_STAGES as DOT_MAX_PIPELINE_STAGES
from fgmp.hw.sidequeue import SideQueue
from fgmp.hw.skid import SkidBuffer
from rtl_ops import rtl_engine


@pytest.mark.parametrize("quantizer_stages,dot_stages,flow_control", [
    (0, 0, "stall"), (1, 1, "stall"), (3, 2, "stall"), (MAX_PIPELINE_STAGES, 1, "stall"), (0, 0, "credit"),
    (1, 0, "credit"), (MAX_PIPELINE_STAGES, DOT_MAX_PIPELINE_STAGES, "credit")])
def test_engine_matches_golden_on_a_random_layer(quantizer_stages, dot_stages, flow_control):
    torch.manual_seed(quantizer_stages)
    rng = random.Random(dot_stages)
    lanes, channels, tokens = 3, 64, 5
    unit = Engine(lanes=lanes, max_channels=64, quantizer_stages=quantizer_stages, dot_stages=dot_stages,
                  flow_control=flow_control)
    assert unit.flow_control == flow_control
    w = torch.randn(lanes, channels) * torch.exp(torch.randn(lanes, channels))
    weights = golden.quantize_blocks(w, torch.rand(lanes, channels // 16) < 0.3)
    x = (torch.randn(tokens, channels) * torch.exp(torch.randn(tokens, 1) * 2)).bfloat16()
    x[1, 5] = float("nan") if quantizer_stages == 3 else x[1, 5]
    f = torch.tensor([rng.randrange(0x20, 0x60) for _ in range(channels)], dtype=torch.uint8)
    probe = golden.ActivationConfig(scale_exponent=-2, threshold=0.0, sensitivities=f)
    scores = golden.quantize_activations(x, probe).scores
    threshold = float(scores[scores > 0].quantile(0.6).float())
    config = golden.ActivationConfig(scale_exponent=-2, threshold=threshold, sensitivities=f)
    want, blocks = golden.engine_dot(weights, x, config)
    got, counters = rtl_engine(unit, weights, x, config, idle=0.2, backpressure=0.3, seed=quantizer_stages)
    assert torch.equal(got, want)
    assert counters == [int(blocks.precision.sum()), int((~blocks.precision).sum())]
    assert 0 < counters[0] < tokens * channels // 16
    dot_latency = DotUnit(lanes=lanes, max_blocks=channels // 16, pipeline_stages=dot_stages).latency
    assert unit.latency == (quantizer_stages + 1) + 1 + dot_latency


def test_engine_layer_output_applies_both_global_scales():
    weights = golden.quantize_blocks(torch.randn(2, 32), torch.zeros(2, 2, dtype=torch.bool))
    x = torch.randn(3, 32).bfloat16()
    config = golden.ActivationConfig(scale_exponent=3, threshold=0.0, sensitivities=torch.full((32,), 0x38,
                                                                                                dtype=torch.uint8))
    bits, blocks = golden.engine_dot(weights, x, config)
    assert float(blocks.global_scale) == 8.0
    expected = golden.bits_to_float32(bits) * (weights.global_scale * 8.0)
    assert torch.equal(golden.engine_layer_output(weights, x, config), expected)


def test_engine_validates_its_parameters():
    with pytest.raises(ValueError, match="Lanes must be at least 1, not 0"):
        Engine(lanes=0)
    with pytest.raises(ValueError, match=r"Maximum channels \(40\) must be a multiple of the block size \(16\)"):
        Engine(lanes=1, max_channels=40)
    with pytest.raises(ValueError, match=f"Pipeline stages must be between 0 and {DOT_MAX_PIPELINE_STAGES}, not "
                                         f"{DOT_MAX_PIPELINE_STAGES + 1}"):
        Engine(lanes=1, dot_stages=DOT_MAX_PIPELINE_STAGES + 1)
    with pytest.raises(ValueError, match=f"Pipeline stages must be between 0 and {MAX_PIPELINE_STAGES}, not "
                                         f"{MAX_PIPELINE_STAGES + 1}"):
        Engine(lanes=1, quantizer_stages=MAX_PIPELINE_STAGES + 1)
    with pytest.raises(ValueError, match="Unknown flow control 'skid'; choose from 'stall', 'credit'"):
        Engine(lanes=1, flow_control="skid")


@pytest.mark.parametrize("slices", [1, 3, 16])
def test_skid_buffer_passes_every_transfer_once_in_order_with_a_registered_ready(slices):
    """Random valid and ready: every word comes out once, in order, the stream protocol holds on both
    sides, ``i.ready`` never follows ``o.ready`` within a cycle, and with both sides always ready one word
    passes per cycle, one cycle after it was taken; with the payload in parts (each its own control
    copy) down to one bit each."""
    dut = SkidBuffer(shape=16, slices=slices)
    assert dut.slices == slices
    assert dut.latency == 1
    rng = random.Random(3)
    received, taken_at, delivered_at = [], [], []

    async def bench(ctx):
        sent, held, offered = 0, None, False
        for cycle in range(1200):
            full_rate = cycle >= 1000
            if not offered and cycle < 1190 and (full_rate or rng.random() < 0.7):
                offered = True
            ctx.set(dut.i.valid, offered)
            ctx.set(dut.i.payload, sent)
            ready = full_rate or cycle >= 900 or rng.random() < 0.6
            ctx.set(dut.o.ready, not ready)
            before = ctx.get(dut.i.ready)
            ctx.set(dut.o.ready, ready)
            assert ctx.get(dut.i.ready) == before, "i.ready follows o.ready combinationally"
            i_ready, o_valid, payload = ctx.get(dut.i.ready), ctx.get(dut.o.valid), ctx.get(dut.o.payload)
            if held is not None:
                assert o_valid and payload == held, "o dropped valid or changed its payload while stalled"
            held = payload if o_valid and not ready else None
            await ctx.tick()
            if offered and i_ready:
                taken_at.append(cycle)
                sent, offered = sent + 1, False
            if o_valid and ready:
                received.append(payload)
                delivered_at.append(cycle)
        assert not ctx.get(dut.o.valid)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert received == list(range(len(taken_at)))
    assert len(received) > 600
    full_rate = [c for c in taken_at if c >= 1010]
    assert full_rate == list(range(1010, 1010 + len(full_rate))) and len(full_rate) > 150
    assert all(delivered_at[taken_at.index(c)] == c + dut.latency for c in full_rate)


@pytest.mark.parametrize("shape,error,message", [
    (0, ValueError, "Payload shape must be at least 1 bit wide, not 0"),
    (data.StructLayout({}), ValueError, "Payload shape must be at least 1 bit wide, not 0"),
    ("8", TypeError, "Payload shape must be a shape-like object, not '8'"),
    (1.5, TypeError, "Payload shape must be a shape-like object, not 1.5"),
])
def test_skid_buffer_validates_its_shape(shape, error, message):
    with pytest.raises(error) as info:
        SkidBuffer(shape=shape)
    assert str(info.value) == message


@pytest.mark.parametrize("slices,error,message", [
    (0, ValueError, "Slices must be at least 1, not 0"),
    (2.0, TypeError, "Slices must be an integer, not 2.0"),
    (True, TypeError, "Slices must be an integer, not True"),
    (9, ValueError, "Slices (9) must not exceed the payload's width (8)"),
])
def test_skid_buffer_validates_its_slices(slices, error, message):
    with pytest.raises(error) as info:
        SkidBuffer(shape=8, slices=slices)
    assert str(info.value) == message


@pytest.mark.parametrize("registered_read", [True, False])
def test_side_queue_shows_each_entry_in_order_once_it_is_old_enough(registered_read):
    """Random pushes (while fewer than ``depth`` are in flight) and pops (of a head old enough to show):
    the head is every entry in push order, from the edge after its push with a registered read and
    from its push edge with an asynchronous one, through full queues, wrap-arounds and pops on the same
    edge as a push; the last stretch pushes and pops every cycle with the queue full (the push going to
    the slot the pop frees)."""
    dut = SideQueue(shape=12, depth=5, registered_read=registered_read)
    delay = 1 if registered_read else 0
    rng = random.Random(int(registered_read))
    checked, steady_pushes = [], []

    async def bench(ctx):
        queue, sent = [], 0  # (value, edge it was pushed on)
        for cycle in range(1500):
            steady = cycle >= 1300
            showing = bool(queue) and cycle - queue[0][1] > delay
            if showing:
                assert ctx.get(dut.r_data) == queue[0][0], f"wrong head in cycle {cycle}"
                checked.append(queue[0][0])
            pop = showing and ((steady and len(queue) == dut.depth) or (not steady and rng.random() < 0.5))
            push = len(queue) - pop < dut.depth and (steady or rng.random() < 0.5)
            value = rng.randrange(1 << 12)
            ctx.set(dut.w_en, push)
            ctx.set(dut.w_data, value)
            ctx.set(dut.r_en, pop)
            await ctx.tick()
            if pop:
                queue.pop(0)
            if push:
                queue.append((value, cycle))
                sent += 1
                if cycle >= 1350:
                    steady_pushes.append(cycle)
        assert sent > 600

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert len(checked) > 600
    assert steady_pushes == list(range(1350, 1500)), "a full queue did not push and pop every cycle"


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(shape=0, depth=4), ValueError, "Entry shape must be at least 1 bit wide, not 0"),
    (dict(shape="8", depth=4), TypeError, "Entry shape must be a shape-like object, not '8'"),
    (dict(shape=8, depth=1), ValueError, "Queue depth must be at least 2, not 1"),
    (dict(shape=8, depth=4.0), TypeError, "Queue depth must be an integer, not 4.0"),
    (dict(shape=8, depth=True), TypeError, "Queue depth must be an integer, not True"),
    (dict(shape=8, depth=4, registered_read=1), TypeError, "Registered read must be a bool, not 1"),
])
def test_side_queue_validates_its_parameters(kwargs, error, message):
    with pytest.raises(error) as info:
        SideQueue(**kwargs)
    assert str(info.value) == message
