"""Activation blocks at run time: the activation unit's rule calibrated offline, and the baselines'
rules emulated in software (docs/policy.md §6)."""

import math
from dataclasses import dataclass

import torch

from ..actq import SCALE_EXPONENT_RANGE, ActivationConfig, fake_quantize_activations, fake_quantize_blocks
from ..blocks import DEFAULT_BLOCK_SIZE, NVFP4_SCALE_DENOMINATOR, dequantize, quantize_blocks
from .. import kernels
from ..formats import UE4M3, encode_ratio

__all__ = ["scale_exponent", "sensitivity_codes", "unit_threshold", "ActivationRule", "UNIT_KINDS"]

UNIT_KINDS = ("fgmp", "unweighted")  # rules the activation unit itself runs (score > T)
_UNIT_SENSITIVITY = 0x38  # UE4M3 1.0: the unweighted rule is the unit with every f_i = 1


def _fast(config):
    low, high = kernels.ACTIVATION_FAST_EXPONENTS
    return low <= config.scale_exponent <= high


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
    fisher = fisher.detach().double()
    top = float(fisher.max()) if fisher.numel() else 0.0
    if not top > 0:
        return torch.zeros(fisher.shape, dtype=torch.uint8, device=fisher.device), 0
    e = math.floor(math.log2(UE4M3.max_value / top))
    scaled = torch.ldexp(fisher, torch.tensor(e, dtype=torch.float64, device=fisher.device))
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
    'fp8' / 'nvfp4' (every block). All use G = 2**k and the foundation's block quantizer. The block
    counters stay on the activations' device until read (no host round trip per layer call).
    """

    kind: str
    scale_exponent: int
    config: ActivationConfig | None = None
    threshold: float = math.inf
    probability: float = 0.0
    seed: int = 0
    block_size: int = DEFAULT_BLOCK_SIZE

    def __post_init__(self):
        self.reset()

    def reset(self):
        """Zero the block counters and restart the random rule's sequence (evaluations repeat exactly)."""
        self._fp8_count = self._block_count = 0
        self._generator = torch.Generator().manual_seed(self.seed)
        self._constants = None

    @property
    def fp8_blocks(self):
        return int(self._fp8_count)

    @property
    def blocks(self):
        return int(self._block_count)

    def precision(self, x):
        """FP8 decisions for finite BF16-valued blocks (..., K/B) under the software rules."""
        blocks = x.reshape(*x.shape[:-1], -1, self.block_size)
        shape = blocks.shape[:-1]
        if self.kind == "fp8":
            return torch.ones(shape, dtype=torch.bool, device=x.device)
        if self.kind == "nvfp4":
            return torch.zeros(shape, dtype=torch.bool, device=x.device)
        if self.kind == "magnitude":
            return blocks.abs().amax(dim=-1).double() > self.threshold
        if self.kind == "random":
            # Drawn on the CPU so a seed gives the same blocks on every device.
            return (torch.rand(shape, generator=self._generator) < self.probability).to(x.device)
        raise ValueError(f"Unknown activation rule {self.kind!r}")

    def quantize(self, x):
        """BF16 rounding (the hardware's input), then block quantization; returns fake-quantized values
        in x's dtype and device, and counts the FP8 blocks."""
        bf16 = x.detach().to(torch.bfloat16)
        config = self.config if self.kind in UNIT_KINDS else ActivationConfig(
            scale_exponent=self.scale_exponent, threshold=math.inf,
            sensitivities=torch.zeros(x.shape[-1], dtype=torch.uint8))
        if self._constants is None or self._constants[0] != bf16.device:
            self._constants = (bf16.device, kernels.UnitConstants(
                config.sensitivities, config.scale_exponent, config.threshold, self.block_size,
                bf16.device) if _fast(config) else None)
        if self.kind in UNIT_KINDS:
            values, precision = fake_quantize_activations(bf16, config, block_size=self.block_size,
                                                          constants=self._constants[1])
        elif self._constants[1] is not None:
            # The software rules' blocks are the unit's candidates under given decisions (numerics §9.1).
            precision = self.precision(bf16)
            values = fake_quantize_blocks(bf16, precision, config, block_size=self.block_size,
                                          constants=self._constants[1])
        else:
            bt = quantize_blocks(bf16, self.precision(bf16), block_size=self.block_size,
                                 scale=2.0 ** self.scale_exponent)
            values, precision = dequantize(bt, dtype=torch.float32), bt.precision
        self._fp8_count = self._fp8_count + precision.sum()
        self._block_count += precision.numel()
        return values.to(x.dtype)
