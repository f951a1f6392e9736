"""The activation quantization unit in amaranth.sim against the golden model (docs/numerics.md §9): BF16
blocks across the whole exponent range, many k, threshold straddling, non-finite input, back-pressure,
the counters, the table and parameter validation."""

import math
import random

import pytest
import torch

from fgmp import golden
from fgmp.hw import ActivationQuantizer
from fgmp.sim.actq_stimuli import median_threshold, random_bf16
from rtl_ops import rtl_actq, rtl_actq_rounds

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


@pytest.mark.parametrize("pipeline_stages", [0, 1, 2, 3])
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


@pytest.mark.parametrize("kwargs,error,message", [
    ({"block_size": 0}, ValueError, "Block size must be at least 1, not 0"),
    ({"max_channels": 0}, ValueError, "Maximum channels must be at least 1, not 0"),
    ({"max_channels": 40}, ValueError, "Maximum channels (40) must be a multiple of the block size (16)"),
    ({"max_channels": 64.0}, TypeError, "Maximum channels must be an integer, not 64.0"),
    ({"pipeline_stages": 4}, ValueError, "Pipeline stages must be between 0 and 3, not 4"),
    ({"pipeline_stages": "1"}, TypeError, "Pipeline stages must be an integer, not '1'"),
])
def test_invalid_parameters(kwargs, error, message):
    with pytest.raises(error) as info:
        ActivationQuantizer(**kwargs)
    assert str(info.value) == message
