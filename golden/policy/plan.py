"""Calibrate once, then build a quantization plan per policy and FP8 budget, and run the model under it
(docs/policy.md)."""

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..actq import ActivationConfig, quantize_activations
from ..blocks import DEFAULT_BLOCK_SIZE, BlockTensor, block_bits, dequantize
from .activations import ActivationRule, scale_exponent, sensitivity_codes, unit_threshold
from .fisher import estimate_fisher
from .weights import block_scores, quantize_weight, top_fraction

__all__ = ["POLICIES", "Calibration", "QuantizationPlan", "calibrate", "build_plan", "quantized"]

POLICIES = ("fgmp", "unweighted", "magnitude", "random", "layerwise", "fp8", "nvfp4")
_UNWEIGHTED_CODE = 0x38  # UE4M3 1.0
MAX_ACTIVATION_BLOCKS = 1 << 16  # calibration activation scores kept per layer (a seeded random subset)


@dataclass
class Calibration:
    """What every plan is built from: the layers, their Fisher information, each layer's activation
    scale exponent and sensitivity table, and the calibration activation blocks' scores in real units."""

    layers: dict
    fisher: dict
    block_size: int
    scale_exponents: dict
    sensitivities: dict  # name -> (UE4M3 codes, e)
    activation_scores: dict  # name -> {"fgmp" | "unweighted" | "magnitude": float64 tensor}
    weight_scores: dict = field(default_factory=dict)  # (name, kind) -> block scores, computed once

    def block_scores(self, name, kind):
        """The weight block scores of one layer; deterministic kinds are kept for the next plan."""
        if kind == "random":
            raise ValueError("random scores depend on the plan's seed and are not kept")
        key = (name, kind)
        if key not in self.weight_scores:
            self.weight_scores[key] = block_scores(self.layers[name].weight, self.fisher[name].weight, kind,
                                                   block_size=self.block_size)
        return self.weight_scores[key]


@dataclass
class QuantizationPlan:
    policy: str
    fp8_fraction: float  # requested, for weights and activations alike
    clipping: bool
    weights: dict  # name -> BlockTensor
    activations: dict  # name -> ActivationRule
    weight_threshold: float | None = None
    activation_threshold: float | None = None
    notes: list = field(default_factory=list)

    @property
    def weight_fp8_fraction(self):
        fp8 = sum(int(bt.precision.sum()) for bt in self.weights.values())
        return fp8 / sum(bt.precision.numel() for bt in self.weights.values())

    @property
    def bits_per_weight(self):
        """Memory bits per weight element: codes + 8-bit scale + precision bit per block (numerics §5)."""
        bits = sum(block_bits(bt.precision, block_size=bt.block_size) for bt in self.weights.values())
        return bits / sum(math.prod(bt.shape) for bt in self.weights.values())

    @property
    def activation_fp8_fraction(self):
        """FP8 fraction of the activation blocks seen since the plan was last applied (None before)."""
        blocks = sum(rule.blocks for rule in self.activations.values())
        return sum(rule.fp8_blocks for rule in self.activations.values()) / blocks if blocks else None


def _check_samples(samples):
    samples = list(samples)
    if not samples:
        raise ValueError("No calibration samples: the Fisher needs at least one")
    return samples


class _ActivationSampler:
    """Keeps a seeded random subset of each layer's input rows (BF16, on their device) as the Fisher
    pass sees them, so the activation blocks are scored without a second pass over the model."""

    def __init__(self, layers, samples, block_size):
        self.per_call = max(1, math.ceil(MAX_ACTIVATION_BLOCKS / samples))
        self.block_size = block_size
        self.generator = torch.Generator().manual_seed(0)
        self.rows = {name: [] for name in layers}
        self.observers = {name: self._observer(name, layer.in_features) for name, layer in layers.items()}

    def _observer(self, name, in_features):
        def observe(x):
            x = x.to(torch.bfloat16).reshape(-1, in_features)
            keep = torch.randperm(x.shape[0], generator=self.generator)[
                :max(1, self.per_call // (in_features // self.block_size))]
            self.rows[name].append(x[keep.to(x.device)])
        return observe


def _activation_scores(rows, scale_exponents, sensitivities, block_size):
    """Scores of the calibration activation blocks under the unit's rule (Fisher and unweighted) and their
    magnitudes, in real units so one threshold serves every layer."""
    collected = {}
    for name, parts in rows.items():
        x = torch.cat(parts)
        k = scale_exponents[name]
        codes, e = sensitivities[name]
        fisher_config = ActivationConfig(scale_exponent=k, threshold=math.inf, sensitivities=codes)
        unit_config = ActivationConfig(scale_exponent=k, threshold=math.inf,
                                       sensitivities=torch.full_like(codes, _UNWEIGHTED_CODE))
        collected[name] = {}
        for kind, config, shift in (("fgmp", fisher_config, 2 * k - e), ("unweighted", unit_config, 2 * k)):
            result = quantize_activations(x, config, block_size=block_size)
            scores = torch.ldexp(result.scores, torch.tensor(shift, dtype=torch.float64, device=x.device))
            collected[name][kind] = torch.where(result.forced_fp8, math.inf, scores).reshape(-1)
        blocks = x.float().reshape(x.shape[0], -1, block_size)
        collected[name]["magnitude"] = blocks.abs().amax(dim=-1).double().reshape(-1)
    return collected


def calibrate(model, samples, loss_fn, layers, *, block_size=DEFAULT_BLOCK_SIZE, progress=True):
    """Fisher information (one forward and backward pass per sample); the same pass keeps a seeded
    subset of every layer's input rows, whose blocks are then scored under the unit's rule.
    ``layers``: {name: nn.Linear}, e.g. from select_linear_layers."""
    samples = _check_samples(samples)
    sampler = _ActivationSampler(layers, len(samples), block_size)
    fisher = estimate_fisher(model, samples, loss_fn, layers, progress=progress, observers=sampler.observers)
    scale_exponents = {name: scale_exponent(f.input_amax) for name, f in fisher.items()}
    sensitivities = {name: sensitivity_codes(f.activation) for name, f in fisher.items()}
    scores = _activation_scores(sampler.rows, scale_exponents, sensitivities, block_size)
    return Calibration(layers=dict(layers), fisher=fisher, block_size=block_size,
                       scale_exponents=scale_exponents, sensitivities=sensitivities, activation_scores=scores)


def _threshold_for(scores, fraction):
    """tau with about ``fraction`` of ``scores`` strictly above it (-inf: all of them)."""
    ranked = torch.sort(scores, descending=True).values
    keep = math.floor(fraction * ranked.numel() + 0.5)
    return -math.inf if keep >= ranked.numel() else float(ranked[keep])


def _layerwise(sizes, sensitivity, fraction):
    """Whole layers in FP8, most sensitive per block first, while the FP8 blocks fit the budget."""
    budget = fraction * sum(sizes.values())
    chosen, used = set(), 0
    for name in sorted(sizes, key=lambda n: -sensitivity[n]):
        if used + sizes[name] <= budget + 1e-9:
            chosen.add(name)
            used += sizes[name]
    return chosen


def _weight_precision(cal, policy, fraction, generator):
    shapes = {name: (layer.out_features, layer.in_features // cal.block_size) for name, layer in cal.layers.items()}
    if policy in ("fp8", "nvfp4"):
        return {name: torch.full(s, policy == "fp8", device=cal.layers[name].weight.device)
                for name, s in shapes.items()}, None
    if policy == "layerwise":
        scores = {name: cal.block_scores(name, "fgmp") for name in cal.layers}
        chosen = _layerwise({n: s.numel() for n, s in scores.items()},
                            {n: float(s.mean()) for n, s in scores.items()}, fraction)
        return {name: torch.full(shapes[name], name in chosen, device=cal.layers[name].weight.device)
                for name in shapes}, None
    if policy == "random":
        scores = {name: block_scores(layer.weight, cal.fisher[name].weight, policy, block_size=cal.block_size,
                                     generator=generator)
                  for name, layer in cal.layers.items()}
    else:
        scores = {name: cal.block_scores(name, policy) for name in cal.layers}
    return top_fraction(scores, fraction)


def _activation_rules(cal, policy, fraction, seed):
    k = cal.scale_exponents
    common = {"block_size": cal.block_size}
    if policy in ("fp8", "nvfp4"):
        return {name: ActivationRule(policy, k[name], **common) for name in cal.layers}, None
    if policy == "random":
        return {name: ActivationRule("random", k[name], probability=fraction, seed=seed + i, **common)
                for i, name in enumerate(cal.layers)}, None
    if policy == "layerwise":
        sizes = {name: layer.in_features // cal.block_size for name, layer in cal.layers.items()}
        sensitivity = {name: float(s["fgmp"].mean()) for name, s in cal.activation_scores.items()}
        chosen = _layerwise(sizes, sensitivity, fraction)
        return {name: ActivationRule("fp8" if name in chosen else "nvfp4", k[name], **common)
                for name in cal.layers}, None
    tau = _threshold_for(torch.cat([s[policy] for s in cal.activation_scores.values()]), fraction)
    if policy == "magnitude":
        return {name: ActivationRule("magnitude", k[name], threshold=tau, **common) for name in cal.layers}, tau
    rules = {}
    for name in cal.layers:
        codes, e = cal.sensitivities[name]
        if policy == "unweighted":
            codes, e = torch.full_like(codes, _UNWEIGHTED_CODE), 0
        config = ActivationConfig(scale_exponent=k[name], threshold=unit_threshold(tau, k[name], e),
                                  sensitivities=codes)
        rules[name] = ActivationRule(policy, k[name], config=config, **common)
    return rules, tau


def build_plan(cal, *, policy="fgmp", fp8_fraction=0.3, clipping=True, seed=0):
    """Weights (stored blocks) and activation rules of every calibrated layer under ``policy`` with about
    ``fp8_fraction`` of the blocks in FP8 (weights: exactly, to one block; activations: on the
    calibration data). ``clipping``: Fisher-weighted scale clipping of the NVFP4 weight blocks."""
    if not isinstance(cal, Calibration):
        raise TypeError(f"Expected a Calibration, not {type(cal).__name__}")
    if policy not in POLICIES:
        raise ValueError(f"Policy must be one of {', '.join(POLICIES)}, not {policy!r}")
    if not isinstance(fp8_fraction, (int, float)) or isinstance(fp8_fraction, bool) or not 0 <= fp8_fraction <= 1:
        raise ValueError(f"FP8 fraction must be a number in [0, 1], not {fp8_fraction!r}")
    fraction = {"fp8": 1.0, "nvfp4": 0.0}.get(policy, float(fp8_fraction))
    generator = torch.Generator().manual_seed(seed)
    precision, weight_threshold = _weight_precision(cal, policy, fraction, generator)
    weights = {name: quantize_weight(layer.weight, precision[name], cal.fisher[name].weight,
                                     clipping=clipping, block_size=cal.block_size)
               for name, layer in cal.layers.items()}
    rules, activation_threshold = _activation_rules(cal, policy, fraction, seed)
    return QuantizationPlan(policy=policy, fp8_fraction=fraction, clipping=clipping, weights=weights,
                            activations=rules, weight_threshold=weight_threshold,
                            activation_threshold=activation_threshold)


@contextmanager
def quantized(model, plan, *, activations=True):
    """Run ``model`` with every planned layer's weight replaced by its dequantized blocks and (unless
    ``activations`` is False) its input fake-quantized by the layer's activation rule. Restores the
    model on exit; the rules count the activation blocks they see."""
    if not isinstance(plan, QuantizationPlan):
        raise TypeError(f"Expected a QuantizationPlan, not {type(plan).__name__}")
    layers = dict(model.named_modules())
    missing = [name for name in plan.weights if name not in layers]
    if missing:
        raise ValueError(f"The plan quantizes layers the model does not have: {', '.join(missing[:4])}")
    saved, handles = {}, []
    try:
        for name, bt in plan.weights.items():
            layer = layers[name]
            if tuple(layer.weight.shape) != tuple(bt.shape):
                raise ValueError(f"Layer {name!r} has weight shape {tuple(layer.weight.shape)}, the plan "
                                 f"{tuple(bt.shape)}")
            saved[name] = layer.weight.data
            layer.weight.data = dequantize(bt).to(device=saved[name].device, dtype=saved[name].dtype)
            if activations:
                rule = plan.activations[name]
                rule.reset()
                handles.append(layer.register_forward_pre_hook(
                    lambda module, args, rule=rule: (rule.quantize(args[0]), *args[1:])))
        yield model
    finally:
        for handle in handles:
            handle.remove()
        for name, data in saved.items():
            layers[name].weight.data = data
