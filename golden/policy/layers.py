"""Which ``nn.Linear`` layers of a model the policy quantizes (docs/policy.md §1)."""

from fnmatch import fnmatchcase

from torch import nn

__all__ = ["select_linear_layers"]


def _patterns(value, name):
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    patterns = tuple(value)
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"{name} must be a string or a sequence of strings (fnmatch patterns)")
    return patterns


def select_linear_layers(model, *, include=None, exclude=None, block_size=16):
    """``{qualified name: nn.Linear}`` of the layers whose names match an ``include`` pattern (default:
    every Linear) and no ``exclude`` pattern, in module order. Each included pattern must match a
    Linear, and every selected layer's in_features must be a multiple of ``block_size`` (blocks run
    along the reduction), so a typo or an untileable layer is an error, not a silently skipped layer."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"Model must be a torch.nn.Module, not {type(model).__name__}")
    include, exclude = _patterns(include, "include"), _patterns(exclude, "exclude")
    linears = {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    if not linears:
        raise ValueError("The model has no nn.Linear layers to quantize")
    for pattern in include:
        if not any(fnmatchcase(name, pattern) for name in linears):
            raise ValueError(f"Pattern {pattern!r} matches no nn.Linear layer; layers are named like "
                             f"{', '.join(list(linears)[:4])}")
    selected = {name: module for name, module in linears.items()
                if (not include or any(fnmatchcase(name, p) for p in include))
                and not any(fnmatchcase(name, p) for p in exclude)}
    if not selected:
        raise ValueError("The include/exclude patterns leave no layer to quantize")
    for name, module in selected.items():
        if module.in_features % block_size:
            raise ValueError(f"Layer {name!r} has {module.in_features} input features, not a multiple of "
                             f"the block size {block_size}; exclude it or pick another block size")
    return selected
