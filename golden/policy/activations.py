"""Activation blocks at run time: the activation unit's rule calibrated offline, and the baselines'
rules emulated in software (docs/policy.md §6)."""

import math
from dataclasses import dataclass

import torch

from ..actq import SCALE_EXPONENT_RANGE, ActivationConfig, quantize_activations
from ..blocks import DEFAULT_BLOCK_SIZE, NVFP4_SCALE_DENOMINATOR, dequantize, quantize_blocks
from ..formats import UE4M3, encode_ratio

__all__ = ["scale_exponent", "sensitivity_codes", "unit_threshold", "ActivationRule", "UNIT_KINDS"]

UNIT_KINDS = ("fgmp", "unweighted")  # rules the activation unit itself runs (score > T)
_UNIT_SENSITIVITY = 0x38  # UE4M3 1.0: the unweighted rule is the unit with every f_i = 1


def scale_exponent(amax):
    """k = ceil(log2(amax / 2688)): the calibrated largest |x| lands at amax' in (1344, 2688], so the
    NVFP4 scale just fits UE4M3 and smaller blocks keep the most scale range below it. Larger run-time
    values saturate the NVFP4 candidate, which makes its perturbation, hence its score, large."""
    if not amax > 0 or not math.isfinite(amax):
        return 0
    k = math.ceil(math.log2(amax / NVFP4_SCALE_DENOMINATOR))
    low, high = SCALE_EXPONENT_RANGE
    return min(max(k, low), high)


def sensitivity_codes(fisher):
    """(UE4M3 codes, e): the per-channel activation Fisher times 2**e, rounded to UE4M3, with e the
    power of two that puts the largest value in (224, 448]. A power of two keeps the global threshold
    exact per layer (T_l = tau * 2**(e - 2k)); channels below 2**-9 of the top after scaling become 0."""
    fisher = fisher.detach().double().cpu()
    top = float(fisher.max()) if fisher.numel() else 0.0
    if not top > 0:
        return torch.zeros(fisher.shape, dtype=torch.uint8), 0
    e = math.floor(math.log2(UE4M3.max_value / top))
    scaled = torch.ldexp(fisher, torch.tensor(e, dtype=torch.float64))
    return encode_ratio(scaled, torch.ones((), dtype=torch.float64), UE4M3), e


def unit_threshold(tau, k, e):
    """The layer's FP32 T register for a global threshold tau in real units (score > T <=> real > tau,
    up to the FP32 rounding of T)."""
    if tau == math.inf:
        return math.inf
    value = float(torch.tensor(math.ldexp(max(tau, 0.0), e - 2 * k), dtype=torch.float64).float())
    return value


@dataclass
class ActivationRule:
    """How one layer's input blocks are quantized at run time.

    kind: 'fgmp' / 'unweighted' (the activation unit: ``config`` holds k, T and f), 'magnitude' (FP8 when
    the block's largest |x| exceeds ``threshold``), 'random' (FP8 with probability ``probability``),
    'fp8' / 'nvfp4' (every block). All use G = 2**k and the foundation's block quantizer.
    """

    kind: str
    scale_exponent: int
    config: ActivationConfig | None = None
    threshold: float = math.inf
    probability: float = 0.0
    seed: int = 0
    block_size: int = DEFAULT_BLOCK_SIZE
    fp8_blocks: int = 0
    blocks: int = 0

    def __post_init__(self):
        self.reset()

    def reset(self):
        """Zero the block counters and restart the random rule's sequence (evaluations repeat exactly)."""
        self.fp8_blocks = self.blocks = 0
        self._generator = torch.Generator().manual_seed(self.seed)

    def precision(self, x):
        """FP8 decisions for finite BF16-valued blocks (..., K/B) under the software rules."""
        blocks = x.reshape(*x.shape[:-1], -1, self.block_size)
        shape = blocks.shape[:-1]
        if self.kind == "fp8":
            return torch.ones(shape, dtype=torch.bool)
        if self.kind == "nvfp4":
            return torch.zeros(shape, dtype=torch.bool)
        if self.kind == "magnitude":
            return blocks.abs().amax(dim=-1).double() > self.threshold
        if self.kind == "random":
            return torch.rand(shape, generator=self._generator) < self.probability
        raise ValueError(f"Unknown activation rule {self.kind!r}")

    def quantize(self, x):
        """BF16 rounding (the hardware's input), then block quantization; returns fake-quantized values
        in x's dtype and counts the FP8 blocks."""
        source_dtype, device = x.dtype, x.device
        bf16 = x.detach().to(torch.bfloat16).cpu()
        if self.kind in UNIT_KINDS:
            bt = quantize_activations(bf16, self.config, block_size=self.block_size).blocks
        else:
            bt = quantize_blocks(bf16, self.precision(bf16), block_size=self.block_size,
                                 scale=2.0 ** self.scale_exponent)
        self.fp8_blocks += int(bt.precision.sum())
        self.blocks += bt.precision.numel()
        return dequantize(bt, dtype=torch.float32).to(device=device, dtype=source_dtype)
