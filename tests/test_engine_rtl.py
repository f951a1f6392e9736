"""The engine (activation quantization unit -> dot unit) in amaranth.sim against the golden engine: BF16
activations and pre-quantized weights in, FP32 results out, bit for bit, under stalls."""

import random

import pytest
import torch

from fgmp import golden
from fgmp.hw import Engine
from rtl_ops import rtl_engine


@pytest.mark.parametrize("quantizer_stages,dot_stages", [(0, 0), (1, 1), (3, 2)])
def test_engine_matches_golden_on_a_random_layer(quantizer_stages, dot_stages):
    torch.manual_seed(quantizer_stages)
    rng = random.Random(dot_stages)
    lanes, channels, tokens = 3, 64, 5
    unit = Engine(lanes=lanes, max_channels=64, quantizer_stages=quantizer_stages, dot_stages=dot_stages)
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
    assert unit.latency == (quantizer_stages + 1) + (dot_stages + 2)


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
    with pytest.raises(ValueError, match="Pipeline stages must be between 0 and 3, not 7"):
        Engine(lanes=1, dot_stages=7)
