"""The FGMP policy on a model (docs/policy.md): Fisher information, block assignment under one global
FP8 budget, sensitivity-weighted clipping, activation-unit calibration, baselines, export."""

from .activations import ActivationRule, scale_exponent, sensitivity_codes, unit_threshold
from .export import LAYER_FORMAT, ExportedLayer, export_layer, load_layer
from .fisher import LayerFisher, estimate_fisher
from .layers import select_linear_layers
from .plan import POLICIES, Calibration, QuantizationPlan, build_plan, calibrate, quantized
from .weights import SCORE_KINDS, block_scores, clip_nvfp4_scales, quantize_weight, top_fraction, weighted_error

__all__ = [
    "ActivationRule", "scale_exponent", "sensitivity_codes", "unit_threshold", "LAYER_FORMAT",
    "ExportedLayer", "export_layer", "load_layer", "LayerFisher", "estimate_fisher", "select_linear_layers",
    "POLICIES", "Calibration", "QuantizationPlan", "build_plan", "calibrate", "quantized", "SCORE_KINDS",
    "block_scores", "clip_nvfp4_scales", "quantize_weight", "top_fraction", "weighted_error",
]
