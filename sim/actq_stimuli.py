"""Stimuli for the activation quantization unit and engine benches: BF16 blocks across the whole
exponent range, configurations, and the packing of inputs and configuration writes."""

import math

import torch

from fgmp.golden import ActivationConfig, quantize_activations

__all__ = ["random_bf16", "median_threshold", "straddling_thresholds", "random_configs", "config_writes"]


def random_bf16(rng, shape, *, nonfinite=0.0):
    """BF16 tensor: random bit patterns (every exponent, subnormals, +-0), typical heavy-tailed values and,
    with probability ``nonfinite`` per element, NaN or +-Inf."""
    n = math.prod(shape)
    values = []
    for _ in range(n):
        r = rng.random()
        if r < nonfinite:
            values.append(rng.choice([0x7FC0, 0xFFC1, 0x7F80, 0xFF80]))  # NaN, -NaN, +Inf, -Inf
        elif r < 0.4:
            bits = rng.getrandbits(16)
            values.append(bits & ~(1 << 14) if (bits >> 7) & 0xFF == 0xFF else bits)
        elif r < 0.45:
            values.append(rng.choice([0x0000, 0x8000, 0x0001, 0x8001, 0x007F]))  # +-0, subnormals
        else:
            v = rng.gauss(0, 1) * math.exp(rng.gauss(0, 2))
            values.append(int(torch.tensor(v, dtype=torch.bfloat16).view(torch.int16)) & 0xFFFF)
    return torch.tensor(values, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).reshape(shape)


def median_threshold(x, sensitivities, k, *, block_size=16, quantile=0.5):
    """An FP32 threshold at a quantile of the blocks' positive scores (0 if none)."""
    probe = ActivationConfig(scale_exponent=k, threshold=0.0, sensitivities=sensitivities)
    scores = quantize_activations(x, probe, block_size=block_size).scores
    positive = scores[scores > 0]
    return float(positive.quantile(quantile).float()) if positive.numel() else 0.0


def _fp32_neighbours(value):
    """The FP32 values just below and just above ``value`` (a positive float64)."""
    t = torch.tensor(value, dtype=torch.float32)
    below = t if float(t) < value else torch.nextafter(t, torch.tensor(0.0))
    above = t if float(t) > value else torch.nextafter(t, torch.tensor(math.inf))
    return float(below), float(above)


def straddling_thresholds(x, sensitivities, k, *, block_size=16):
    """Three thresholds around one block's score: just below it (the block goes FP8), equal to it (it
    stays NVFP4: the rule is score > T) and just above it. The block is one whose score is exactly an
    FP32 value when there is one, so the equal case really is equal (None when no score is positive)."""
    probe = ActivationConfig(scale_exponent=k, threshold=0.0, sensitivities=sensitivities)
    scores = quantize_activations(x, probe, block_size=block_size).scores.reshape(-1)
    positive = scores[scores > 0]
    if not positive.numel():
        return None
    exact = positive[positive.float().double() == positive]
    score = float((exact if exact.numel() else positive)[0])
    below, above = _fp32_neighbours(score)
    equal = float(torch.tensor(score, dtype=torch.float32))
    return [below, equal, above] if equal == score else [below, above, above]


def random_configs(rng, x, *, count, block_size=16):
    """``count`` configurations: k over the whole range (extremes included), random sensitivities, and T
    at random quantiles of the scores; with six or more, the last three share one k and a sparse f and put
    T just below, at and just above one block's score, so the compare is exercised at its edge."""
    channels = x.shape[-1]
    ks = [-128, 127, 0] + [rng.randint(-128, 127) for _ in range(max(0, count - 3))]
    configs = []
    for k in ks[:count - 3 if count >= 6 else count]:
        f = torch.tensor([rng.randrange(0x7F) for _ in range(channels)], dtype=torch.uint8)
        t = median_threshold(x, f, k, block_size=block_size, quantile=rng.choice((0.2, 0.5, 0.8)))
        configs.append(ActivationConfig(scale_exponent=k, threshold=t, sensitivities=f))
    if count >= 6:
        # One power-of-two sensitivity per block: a score is then one 24-bit square times a power of two,
        # exactly an FP32 value, so "T equal to a score" really happens.
        k, f = ks[count - 3], torch.zeros(channels, dtype=torch.uint8)
        for start in range(0, channels, block_size):
            f[start + rng.randrange(block_size)] = rng.randrange(1, 0xF) << 3
        straddle = straddling_thresholds(x, f, k, block_size=block_size) or [0.0] * 3
        configs += [ActivationConfig(scale_exponent=k, threshold=t, sensitivities=f) for t in straddle]
    return configs


def config_writes(config, block_size):
    """The configuration port values that load ``config``: one table row write per block position, then
    the registers (which also clear the counters). Dicts for the ``config`` layout."""
    rows = config.sensitivities.reshape(-1, block_size).tolist()
    idle = {"table_write": 0, "table_row": 0, "table_data": [0] * block_size, "set_registers": 0,
            "scale_exponent": 0, "threshold": 0, "clear_counters": 0}
    writes = [{**idle, "table_write": 1, "table_row": row, "table_data": codes} for row, codes in enumerate(rows)]
    writes.append({**idle, "set_registers": 1, "clear_counters": 1, "scale_exponent": config.scale_exponent,
                   "threshold": config.threshold_bits})
    return writes + [idle]
