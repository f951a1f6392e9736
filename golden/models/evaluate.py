"""Token windows, next-token loss and perplexity, the same for every `CausalLM`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .lm import CausalLM


def token_sequences(ids: torch.Tensor, length: int, *, count: int | None = None, seed: int = 0) -> torch.LongTensor:
    """[N, length + 1] non-overlapping windows of ``ids`` (1-D), in text order.

    Window i is ids[i*(length+1) : (i+1)*(length+1)]; the tail shorter than a window is dropped. With
    ``count``, a subset of ``count`` windows drawn without replacement by a generator seeded with
    ``seed``, still in text order.
    """
    if not isinstance(ids, torch.Tensor) or ids.dim() != 1 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise TypeError("token_sequences expects a 1-D integer tensor of token ids")
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise ValueError(f"length must be a positive int, got {length!r}")
    n = ids.numel() // (length + 1)
    if n == 0:
        raise ValueError(f"{ids.numel()} tokens are too few for one window of length {length} + 1")
    windows = ids[: n * (length + 1)].long().view(n, length + 1)
    if count is None:
        return windows
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= n:
        raise ValueError(f"count must be an int in 1..{n} (the number of windows), got {count!r}")
    generator = torch.Generator().manual_seed(seed)
    picked = torch.randperm(n, generator=generator)[:count].sort().values
    return windows[picked]


def _check_sequences(lm: CausalLM, sequences: torch.Tensor) -> None:
    if not isinstance(sequences, torch.Tensor) or sequences.dtype != torch.long or sequences.dim() != 2:
        raise TypeError("sequences must be a LongTensor of shape [N, length + 1]")
    if sequences.shape[0] == 0 or sequences.shape[1] < 2:
        raise ValueError(f"sequences of shape {tuple(sequences.shape)}: need N >= 1 and length + 1 >= 2")
    if sequences.shape[1] - 1 > lm.context:
        raise ValueError(f"windows of length {sequences.shape[1] - 1} exceed {lm.name}'s context {lm.context}")


def _nll_sum(lm: CausalLM, batch: torch.Tensor) -> torch.Tensor:
    logits = lm.logits(batch[:, :-1])
    targets = batch[:, 1:].to(logits.device)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")


def sequence_loss(lm: CausalLM, sequences: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (nats) over a batch [N, length + 1]; differentiable (Fisher estimates)."""
    _check_sequences(lm, sequences)
    return _nll_sum(lm, sequences) / sequences[:, 1:].numel()


def perplexity(lm: CausalLM, sequences: torch.Tensor, *, batch_size: int = 8, progress: bool = True) -> float:
    """exp(mean next-token NLL) over all windows, every window weighted by its tokens."""
    _check_sequences(lm, sequences)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    total = 0.0
    with torch.no_grad():
        for start in tqdm(range(0, sequences.shape[0], batch_size), desc=f"perplexity {lm.name}",
                          unit="batch", disable=not progress, leave=False):
            # float64 accumulation: the sum over ~10^5 tokens must not depend on the batch split.
            total += _nll_sum(lm, sequences[start:start + batch_size]).double().item()
    return math.exp(total / sequences[:, 1:].numel())


def unigram_perplexity(train_ids: torch.Tensor, sequences: torch.Tensor, vocab_size: int) -> float:
    """Baseline: perplexity of add-one-smoothed token frequencies of ``train_ids`` on the windows' targets."""
    counts = torch.bincount(train_ids.long(), minlength=vocab_size).double() + 1.0
    logp = (counts / counts.sum()).log()
    return math.exp(-logp[sequences[:, 1:].reshape(-1)].mean().item())
