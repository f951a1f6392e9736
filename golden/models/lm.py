"""One wrapper, `LanguageModel`, over the shipped tiny LM and any local Hugging Face causal or masked LM.

Nothing here reaches for the network: Hugging Face models load from a local directory with
``local_files_only=True``, and a missing model or file is a FileNotFoundError naming it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .corpus import DATA_DIR, METADATA_FILE
from .tiny_lm import TinyLM, TinyLMConfig

WEIGHTS_FILE = DATA_DIR / "tiny_lm.safetensors"
DEFAULT_NAME = "tiny-lm"
TASKS = ("causal", "masked")  # next-token prediction, masked-token prediction


@dataclass
class LanguageModel:
    model: nn.Module  # the module whose nn.Linear layers get quantized
    name: str
    context: int  # max sequence length
    device: torch.device  # where input ids go (the embedding's device under a device map)
    tokenizer: Any = None  # a transformers tokenizer; None means UTF-8 bytes (the tiny LM)
    vocab_size: int = 256
    task: str = "causal"  # "causal": next-token loss; "masked": loss on seeded masked positions
    mask_token_id: int | None = None  # masked LMs: the id that replaces a masked token
    special_ids: tuple = ()  # token ids never masked (CLS, SEP, PAD, ...)

    def encode(self, text: str) -> torch.LongTensor:
        """1-D token ids of ``text`` on the CPU (windows are cut before they move to the device)."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        if self.tokenizer is None:
            return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()
        # The tokenizer's own document encoding (Llama: one BOS at the start), as the usual WikiText-2
        # perplexity protocol does; verbose=False because a corpus is longer than the context on purpose.
        ids = self.tokenizer(text, verbose=False)["input_ids"]
        return torch.tensor(ids, dtype=torch.long)

    def logits(self, ids: torch.LongTensor) -> torch.Tensor:
        """[B, T] token ids -> [B, T, V] float32 logits."""
        if not isinstance(ids, torch.Tensor) or ids.dtype != torch.long or ids.dim() != 2:
            raise TypeError("logits expects a LongTensor of shape [B, T]")
        out = self.model(ids.to(self.device))
        if not isinstance(out, torch.Tensor):
            out = out.logits
        return out.float()


CausalLM = LanguageModel  # the name before masked LMs joined


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when present, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a str, a torch.device or None, got {type(device).__name__}")
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"invalid device {device!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available")
    return device


def load_metadata(data_dir: str | Path = DATA_DIR) -> dict:
    path = Path(data_dir) / METADATA_FILE.name
    if not path.is_file():
        raise FileNotFoundError(f"tiny LM metadata {path} is missing; train it with "
                                f"`python -m fgmp.golden.models.train --out {Path(data_dir)}`")
    return json.loads(path.read_text(encoding="utf-8"))


def load_default_model(device: str | torch.device | None = None, *, data_dir: str | Path = DATA_DIR) -> LanguageModel:
    """The shipped tiny LM: BF16 weights, float32 compute."""
    from safetensors.torch import load_file

    meta = load_metadata(data_dir)
    weights = Path(data_dir) / WEIGHTS_FILE.name
    if not weights.is_file():
        raise FileNotFoundError(f"tiny LM weights {weights} are missing; train them with "
                                f"`python -m fgmp.golden.models.train --out {Path(data_dir)}`")
    device = pick_device(device)
    model = TinyLM(TinyLMConfig.from_dict(meta["config"]))
    state = {k: v.float() for k, v in load_file(str(weights)).items()}
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    return LanguageModel(model=model, name=DEFAULT_NAME, context=model.config.context, device=device)


def _check_model_dir(path: str | Path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"model path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model directory {str(path)!r} does not exist (only local Hugging Face "
                                "directories are loaded; nothing is downloaded)")
    if not path.is_dir():
        raise FileNotFoundError(f"model path {str(path)!r} is not a directory (expected a local Hugging "
                                "Face model directory)")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model directory {str(path)!r} has no config.json (expected a Hugging Face "
                                "model directory saved with save_pretrained)")
    return path


def linearize(model: nn.Module) -> int:
    """Replace transformers' ``Conv1D`` (GPT-2 and its relatives: a Linear stored transposed) by an
    equivalent ``nn.Linear`` sharing nothing, so the policy finds every matmul; returns how many."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers always has it
        return 0
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                in_features, out_features = child.weight.shape
                linear = nn.Linear(in_features, out_features, bias=child.bias is not None,
                                   device=child.weight.device, dtype=child.weight.dtype)
                with torch.no_grad():
                    linear.weight.copy_(child.weight.t())
                    if child.bias is not None:
                        linear.bias.copy_(child.bias)
                setattr(parent, name, linear)
                replaced += 1
    return replaced


def default_task(config) -> str:
    """The task a Hugging Face config names: its architectures first (``*ForMaskedLM`` -> masked), then
    what the model type supports (causal before masked)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    causal = config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    masked = config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    architectures = getattr(config, "architectures", None) or []
    if masked and any(a.endswith("ForMaskedLM") for a in architectures):
        return "masked"
    if causal and not any(a.endswith("ForMaskedLM") for a in architectures):
        return "causal"
    if masked:
        return "masked"
    return "causal" if causal else None


def _check_task(task):
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)} (or None: from the model's config), not {task!r}")


def load_hf_model(path: str | Path, *, task: str | None = None, device: str | torch.device | None = None,
                  dtype: torch.dtype | str | None = None, device_map: str | dict | None = None) -> LanguageModel:
    """A local Hugging Face causal or masked LM and its tokenizer.

    ``task``: "causal" (AutoModelForCausalLM, next-token loss) or "masked" (AutoModelForMaskedLM, loss on
    seeded masked positions); None takes it from the config (`default_task`). ``device_map`` goes to
    transformers/accelerate as given; it defaults to "auto" when several GPUs are present and no
    ``device`` is asked for. ``dtype`` defaults to the checkpoint's own on CUDA and float32 on CPU (CPUs
    are slow or inexact at half precision).
    """
    _check_task(task)
    path = _check_model_dir(path)
    if device is not None and device_map is not None:
        raise ValueError("pass either device or device_map, not both")
    # Belt and braces next to local_files_only: huggingface_hub reads this once, at its import.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{path / 'config.json'} is not a usable Hugging Face config: {e}") from e
    model_type = config.model_type
    supported = {"causal": model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                 "masked": model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES}
    if task is None:
        task = default_task(config)
        if task is None:
            raise ValueError(f"model {str(path)!r} has model_type {model_type!r}, which is neither a causal nor a "
                             "masked language model (the command line runs AutoModelForCausalLM and "
                             "AutoModelForMaskedLM families); quantize it through the Python API with your own "
                             "loss (docs/policy.md §11)")
    if not supported[task]:
        other = next((t for t in TASKS if t != task and supported[t]), None)
        loader = "AutoModelForCausalLM" if task == "causal" else "AutoModelForMaskedLM"
        raise ValueError(f"model {str(path)!r} has model_type {model_type!r}, which is not a {task} language model "
                         f"({loader} cannot load it)" + (f"; --task {other} loads it" if other else ""))
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise FileNotFoundError(f"model directory {str(path)!r} has no tokenizer that loads offline "
                                f"(tokenizer.json, tokenizer.model or vocabulary files): {e}") from e
    if tokenizer is None or isinstance(tokenizer, bool):
        raise FileNotFoundError(f"model directory {str(path)!r} has no tokenizer that loads offline "
                                "(tokenizer.json, tokenizer.model or vocabulary files)")
    if task == "masked" and tokenizer.mask_token_id is None:
        raise ValueError(f"model {str(path)!r}: its tokenizer has no mask token, so masked-token loss is undefined")

    if device_map is None and device is None and torch.cuda.device_count() > 1:
        device_map = "auto"
    target = None if device_map is not None else pick_device(device)
    if dtype is None:
        dtype = "auto" if target is None or target.type == "cuda" else torch.float32
    if target is not None:
        # A one-device map loads the weights straight onto that device (no full copy in host memory).
        device_map = {"": str(target)}
    auto = AutoModelForCausalLM if task == "causal" else AutoModelForMaskedLM
    model = auto.from_pretrained(path, local_files_only=True, dtype=dtype, device_map=device_map)
    linearize(model)
    model.eval()
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not context:
        raise ValueError(f"model {str(path)!r}: config has no max_position_embeddings; cannot tell its context")
    for name, module in model.named_modules():
        # RoBERTa-style position ids start after the padding index: fewer usable positions than the table.
        if name.endswith("position_embeddings") and isinstance(module, nn.Embedding) and module.padding_idx is not None:
            context = min(int(context), module.num_embeddings - module.padding_idx - 1)
    return LanguageModel(model=model, name=path.name, context=int(context),
                         device=model.get_input_embeddings().weight.device, tokenizer=tokenizer,
                         vocab_size=int(model.get_output_embeddings().weight.shape[0]), task=task,
                         mask_token_id=tokenizer.mask_token_id,
                         special_ids=tuple(sorted(set(tokenizer.all_special_ids))))


def load_hf_causal_lm(path: str | Path, *, device: str | torch.device | None = None,
                      dtype: torch.dtype | str | None = None, device_map: str | dict | None = None) -> LanguageModel:
    """A local Hugging Face causal LM and its tokenizer (`load_hf_model` with task="causal")."""
    return load_hf_model(path, task="causal", device=device, dtype=dtype, device_map=device_map)


def load_model(spec: str | os.PathLike | None = None, *, device: str | torch.device | None = None,
               task: str | None = None, dtype: torch.dtype | str | None = None) -> LanguageModel:
    """``None`` or ``"default"``: the shipped tiny LM (causal); anything else: a local Hugging Face
    directory, as ``task`` says or its config suggests."""
    _check_task(task)
    if spec is None or spec == "default":
        if task not in (None, "causal"):
            raise ValueError(f"the embedded model is a causal LM; task {task!r} needs a Hugging Face model directory")
        return load_default_model(device)
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"model spec must be None, 'default' or a path, got {type(spec).__name__}")
    return load_hf_model(spec, task=task, device=device, dtype=dtype)


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 text file for calibration or evaluation."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"text path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a directory, not a text file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"text file {str(path)!r} {what}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UnicodeDecodeError(e.encoding, e.object, e.start, e.end,
                                 f"{e.reason}; text file {str(path)!r} is not UTF-8") from None
    if not text:
        raise ValueError(f"text file {str(path)!r} is empty")
    return text
