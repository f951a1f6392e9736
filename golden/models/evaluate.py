"""Token windows, token losses and perplexity for every `LanguageModel`: next-token for causal LMs,
seeded masked-token for masked LMs."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .lm import LanguageModel


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


def _check_sequences(lm: LanguageModel, sequences: torch.Tensor) -> None:
    if not isinstance(sequences, torch.Tensor) or sequences.dtype != torch.long or sequences.dim() != 2:
        raise TypeError("sequences must be a LongTensor of shape [N, length + 1]")
    if sequences.shape[0] == 0 or sequences.shape[1] < 2:
        raise ValueError(f"sequences of shape {tuple(sequences.shape)}: need N >= 1 and length + 1 >= 2")
    if sequences.shape[1] - 1 > lm.context:
        raise ValueError(f"windows of length {sequences.shape[1] - 1} exceed {lm.name}'s context {lm.context}")


MASK_RATE = 0.15  # the share of a window's tokens a masked LM is asked to predict


def masked_positions(lm: LanguageModel, sequences: torch.Tensor, *, seed: int = 0, rate: float = MASK_RATE) -> torch.Tensor:
    """The seeded masking of a masked LM's windows: bool [N, length] over the first ``length`` tokens of
    each [N, length + 1] window (the same inputs a causal LM sees), about ``rate`` of the tokens that
    are not special tokens, at least one per window. Drawn for all windows at once by a generator seeded
    with ``seed``, so it does not depend on how the windows are batched."""
    _check_sequences(lm, sequences)
    inputs = sequences[:, :-1]
    draw = torch.rand(inputs.shape, generator=torch.Generator().manual_seed(seed))
    candidates = ~torch.isin(inputs, torch.tensor(lm.special_ids, dtype=torch.long))
    if not bool(candidates.any(dim=1).all()):
        raise ValueError("a window holds only special tokens: nothing to mask")
    chosen = (draw < rate) & candidates
    first = torch.where(candidates, draw, 2.0).argmin(dim=1)  # each window's lowest draw among candidates
    chosen[torch.arange(inputs.shape[0]), first] |= ~chosen.any(dim=1)
    return chosen


def _nll_sum(lm: LanguageModel, batch: torch.Tensor, mask: torch.Tensor | None = None):
    """(summed negative log-likelihood, predicted tokens) of a batch of windows."""
    if lm.task == "masked":
        inputs = batch[:, :-1].masked_fill(mask, lm.mask_token_id)
        logits = lm.logits(inputs)
        targets = batch[:, :-1].to(logits.device)[mask.to(logits.device)]
        loss = F.cross_entropy(logits[mask.to(logits.device)], targets, reduction="sum")
        return loss, int(mask.sum())
    logits = lm.logits(batch[:, :-1])
    targets = batch[:, 1:].to(logits.device)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
    return loss, targets.numel()


def sequence_loss(lm: LanguageModel, sequences: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean token cross-entropy (nats) over a batch [N, length + 1]; differentiable (Fisher estimates).
    Causal LMs: every next token. Masked LMs: the tokens of ``mask`` ([N, length], default the seeded
    `masked_positions`), replaced by the mask token in the input."""
    _check_sequences(lm, sequences)
    if lm.task == "masked" and mask is None:
        mask = masked_positions(lm, sequences)
    total, count = _nll_sum(lm, sequences, mask)
    return total / count


def window_losses(lm: LanguageModel, sequences: torch.Tensor, *, batch_size: int = 8, progress: bool = True,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed NLL, predicted tokens) of every window, float64 and int64 [N] on the CPU: next tokens for a
    causal LM, the seeded masked positions (``seed``) for a masked LM. Per window, so comparisons can
    be paired window by window."""
    _check_sequences(lm, sequences)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    masks = masked_positions(lm, sequences, seed=seed) if lm.task == "masked" else None
    losses, counts = [], []
    with torch.no_grad():
        for start in tqdm(range(0, sequences.shape[0], batch_size), desc=f"perplexity {lm.name}",
                          unit="batch", disable=not progress, leave=False):
            batch = slice(start, start + batch_size)
            windows = sequences[batch]
            mask = None if masks is None else masks[batch]
            nll, count = _window_nll(lm, windows, mask)
            losses.append(nll)
            counts.append(count)
    return torch.cat(losses), torch.cat(counts)


def _window_nll(lm, batch, mask):
    if lm.task == "masked":
        inputs = batch[:, :-1].masked_fill(mask, lm.mask_token_id)
        logits = lm.logits(inputs)
        targets = batch[:, :-1].to(logits.device)
        nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none") * mask.to(logits.device)
        return nll.double().sum(dim=1).cpu(), mask.sum(dim=1).cpu()
    logits = lm.logits(batch[:, :-1])
    targets = batch[:, 1:].to(logits.device)
    nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    return nll.double().sum(dim=1).cpu(), torch.full((batch.shape[0],), targets.shape[1], dtype=torch.long)


def perplexity(lm: LanguageModel, sequences: torch.Tensor, *, batch_size: int = 8, progress: bool = True,
               seed: int = 0) -> float:
    """exp(mean token NLL) over all windows, every predicted token weighted equally: next tokens for a
    causal LM, the seeded masked positions (``seed``) for a masked LM (its masked-token perplexity)."""
    losses, counts = window_losses(lm, sequences, batch_size=batch_size, progress=progress, seed=seed)
    # float64 accumulation: the sum over ~10^5 tokens must not depend on the batch split.
    return math.exp(float(losses.sum()) / int(counts.sum()))


def unigram_perplexity(train_ids: torch.Tensor, sequences: torch.Tensor, vocab_size: int) -> float:
    """Baseline: perplexity of add-one-smoothed token frequencies of ``train_ids`` on the windows' targets."""
    counts = torch.bincount(train_ids.long(), minlength=vocab_size).double() + 1.0
    logp = (counts / counts.sum()).log()
    return math.exp(-logp[sequences[:, 1:].reshape(-1)].mean().item())
