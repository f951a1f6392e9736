"""A quantized layer as the hardware consumes it: $readmemh images of the weight blocks and of the
activation unit's sensitivity table, plus the registers (docs/policy.md §8)."""

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from ..actq import ActivationConfig
from ..blocks import BlockTensor

__all__ = ["LAYER_FORMAT", "ExportedLayer", "export_layer", "load_layer"]

LAYER_FORMAT = "fgmp-layer/1"
_WEIGHTS, _TABLE, _MANIFEST = "weights.hex", "sensitivities.hex", "layer.json"


@dataclass(frozen=True)
class ExportedLayer:
    weights: BlockTensor
    activation: ActivationConfig
    manifest: dict


def _fp32_bits(value):
    return struct.unpack("<I", struct.pack("<f", value))[0]


def _block_words(bt):
    """Each block as the FGMP dot unit's block payload (interfaces.md): codes[i] at [8i+7:8i], the
    UE4M3 scale above them, the precision bit on top."""
    b = bt.block_size
    codes = bt.codes.reshape(-1, b).tolist()
    scales = bt.scales.reshape(-1).tolist()
    fp8 = bt.precision.reshape(-1).tolist()
    for row, scale, wide in zip(codes, scales, fp8):
        word = sum(code << (8 * i) for i, code in enumerate(row)) | (scale << (8 * b)) | (int(wide) << (8 * b + 8))
        yield word


def _write_hex(path, words, bits, header):
    digits = -(-bits // 4)
    lines = [f"// {line}" for line in header] + [f"{word:0{digits}x}" for word in words]
    path.write_text("\n".join(lines) + "\n")


def _read_hex(path, bits, count):
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the exported layer")
    words = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("//")[0].strip()
        if not line:
            continue
        try:
            word = int(line, 16)
        except ValueError:
            raise ValueError(f"{path}:{number}: {line!r} is not a hexadecimal word") from None
        if word >> bits:
            raise ValueError(f"{path}:{number}: word is wider than {bits} bits")
        words.append(word)
    if len(words) != count:
        raise ValueError(f"{path} holds {len(words)} words, the manifest calls for {count}")
    return words


def export_layer(weights, activation, directory, *, name="layer"):
    """Write ``weights`` (a 2-D BlockTensor, out x in) and ``activation`` (the unit's ActivationConfig)
    into ``directory``; returns the manifest path."""
    if not isinstance(weights, BlockTensor) or len(weights.shape) != 2:
        raise TypeError("Weights must be a 2-D BlockTensor (output channels x input channels)")
    if not isinstance(activation, ActivationConfig):
        raise TypeError("Activation must be the unit's ActivationConfig (the hardware runs only score > T)")
    out_features, in_features = weights.shape
    b = weights.block_size
    if activation.sensitivities.numel() != in_features:
        raise ValueError(f"The sensitivity table has {activation.sensitivities.numel()} channels, the weights "
                         f"{in_features} input channels")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    word_bits = 8 * b + 9
    _write_hex(directory / _WEIGHTS, _block_words(weights), word_bits,
               [f"{name}: {out_features} x {in_features // b} weight blocks, row-major (output channel, block)",
                f"{word_bits}-bit words: codes[i] at [8i+7:8i] (E2M1 in the low nibble), UE4M3 scale at "
                f"[{8 * b + 7}:{8 * b}], FP8 bit at [{8 * b + 8}]"])
    rows = activation.sensitivities.reshape(-1, b).tolist()
    _write_hex(directory / _TABLE, (sum(c << (8 * i) for i, c in enumerate(row)) for row in rows), 8 * b,
               [f"{name}: sensitivity table, {len(rows)} rows of {b} UE4M3 codes, channel r*{b}+i at [8i+7:8i]"])
    threshold = activation.threshold
    manifest = {
        "format": LAYER_FORMAT, "name": name, "out_features": out_features, "in_features": in_features,
        "block_size": b, "weight_global_scale": float(weights.global_scale),
        "weight_global_scale_bits": f"{_fp32_bits(float(weights.global_scale)):08x}",
        "weight_fp8_blocks": int(weights.precision.sum()), "weight_blocks": weights.precision.numel(),
        "activation": {"scale_exponent": activation.scale_exponent,
                       "threshold": threshold if math.isfinite(threshold) else "inf",
                       "threshold_bits": f"{_fp32_bits(threshold):08x}"},
        "files": {"weights": _WEIGHTS, "sensitivities": _TABLE},
        "output_scale": "lane result * weight_global_scale * 2**scale_exponent",
    }
    path = directory / _MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def load_layer(directory):
    """Read an exported layer back (checks every field against the manifest)."""
    directory = Path(directory)
    path = directory / _MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not an exported layer directory")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != LAYER_FORMAT:
        raise ValueError(f"{path} is format {manifest.get('format')!r}, expected {LAYER_FORMAT!r}")
    out_features, in_features, b = manifest["out_features"], manifest["in_features"], manifest["block_size"]
    n_rows, n_blocks = in_features // b, out_features * (in_features // b)
    words = _read_hex(directory / _WEIGHTS, 8 * b + 9, n_blocks)
    codes = torch.tensor([[(w >> (8 * i)) & 0xFF for i in range(b)] for w in words], dtype=torch.uint8)
    scales = torch.tensor([(w >> (8 * b)) & 0xFF for w in words], dtype=torch.uint8)
    precision = torch.tensor([bool(w >> (8 * b + 8)) for w in words], dtype=torch.bool)
    global_scale = torch.tensor(manifest["weight_global_scale"], dtype=torch.float32)
    if f"{_fp32_bits(float(global_scale)):08x}" != manifest["weight_global_scale_bits"]:
        raise ValueError(f"{path}: weight_global_scale does not match its FP32 bits")
    weights = BlockTensor(codes=codes.reshape(out_features, n_rows, b), scales=scales.reshape(out_features, n_rows),
                          precision=precision.reshape(out_features, n_rows), global_scale=global_scale)
    table = _read_hex(directory / _TABLE, 8 * b, n_rows)
    sensitivities = torch.tensor([(row >> (8 * i)) & 0xFF for row in table for i in range(b)], dtype=torch.uint8)
    registers = manifest["activation"]
    threshold_bits = int(registers["threshold_bits"], 16)
    threshold = struct.unpack("<f", struct.pack("<I", threshold_bits))[0]
    activation = ActivationConfig(scale_exponent=registers["scale_exponent"], threshold=threshold,
                                  sensitivities=sensitivities)
    return ExportedLayer(weights=weights, activation=activation, manifest=manifest)
