"""Empirical diagonal Fisher information of Linear weights and inputs (docs/policy.md §2)."""

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .. import kernels

__all__ = ["LayerFisher", "estimate_fisher"]


@dataclass(frozen=True)
class LayerFisher:
    """``weight``: (out, in) mean over samples of the squared loss gradient of each weight element;
    ``activation``: (in,) mean over samples and tokens of the squared gradient w.r.t. the layer input,
    per input channel; ``input_amax``: the largest |input| seen (for the activation scale exponent)."""

    weight: torch.Tensor
    activation: torch.Tensor
    input_amax: float
    samples: int
    tokens: int


class _Collector:
    """Hooks on one Linear that add its squared input gradients per channel and track its input range."""

    def __init__(self, layer):
        self.layer = layer
        self.activation = torch.zeros(layer.in_features, dtype=torch.float64, device=layer.weight.device)
        self.weight = torch.zeros(layer.weight.shape, dtype=torch.float32, device=layer.weight.device)
        self.tokens = 0
        self.amax = torch.zeros((), dtype=torch.float32, device=layer.weight.device)
        self.observers = []  # callables given each input (detached) as the forward pass sees it
        self.handle = layer.register_forward_pre_hook(self._pre_forward)

    def _pre_forward(self, module, args):
        x = args[0]
        self.amax = torch.maximum(self.amax, x.detach().abs().amax().float())
        for observe in self.observers:
            observe(x.detach())
        # A node of this layer's own, so the hook sees dL/dx through this layer only, not through the
        # input's other consumers (a residual branch, sibling q/k/v projections). Without a gradient
        # upstream nothing needs one, so a fresh leaf loses nothing.
        x = x.view_as(x) if x.requires_grad else x.detach().requires_grad_(True)
        x.register_hook(self._on_input_grad)
        return (x, *args[1:])

    def _on_input_grad(self, grad):
        grad = grad.detach().reshape(-1, grad.shape[-1])
        self.activation += grad.double().pow(2).sum(dim=0).to(self.activation.device)
        self.tokens += grad.shape[0]

    def add_weight_grad(self):
        grad = self.layer.weight.grad
        if grad is None:
            return
        # Square and add in cache-sized pieces through one small scratch buffer: no weight-sized
        # temporary (a 7B layer's gradient square is 0.75 GiB) and no page faults from fresh ones. The
        # arithmetic is unchanged: each element's FP32 square (x * x, what pow(2) computes), then the add.
        flat_grad, flat_weight = grad.detach().reshape(-1, grad.shape[-1]), self.weight.view(-1, grad.shape[-1])
        scratch = None
        for start, stop in kernels.chunk_rows(flat_grad.shape[0], flat_grad.shape[1], self.weight.device):
            g = flat_grad[start:stop].float().to(self.weight.device)
            if scratch is None or scratch.shape[0] < g.shape[0]:
                scratch = torch.empty_like(g)
            square = scratch[:g.shape[0]]
            torch.mul(g, g, out=square)
            flat_weight[start:stop] += square

    def finish(self, samples):
        self.handle.remove()
        return LayerFisher(weight=self.weight.div_(samples),
                           activation=(self.activation / max(self.tokens, 1)).float(),
                           input_amax=float(self.amax), samples=samples, tokens=self.tokens)


def _add_and_free(param, collectors):
    for collector in collectors:
        collector.add_weight_grad()
    param.grad = None


@contextmanager
def _only_weights_require_grad(model, layers):
    saved = {p: p.requires_grad for p in model.parameters()}
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for layer in layers.values():
            layer.weight.requires_grad_(True)
        yield
    finally:
        for p, flag in saved.items():
            p.requires_grad_(flag)
            p.grad = None


def estimate_fisher(model, samples, loss_fn, layers, *, progress=True, observers=None):
    """Diagonal empirical Fisher of every layer in ``layers`` ({name: nn.Linear}).

    ``samples`` is an iterable of calibration samples and ``loss_fn(model, sample)`` returns the scalar
    loss of one sample: the Fisher is the mean over samples of the squared gradient of that loss, so
    each sample gets its own backward pass (squaring a batch-mean gradient would not be the Fisher).
    ``observers``: {name: callable}, called with each input of that layer (detached) during the pass.
    """
    if not layers:
        raise ValueError("No layers to estimate the Fisher information of")
    was_training = model.training
    model.eval()  # no dropout: the Fisher of the model as it will be deployed
    collectors = {name: _Collector(layer) for name, layer in layers.items()}
    for name, observe in (observers or {}).items():
        collectors[name].observers.append(observe)
    count = 0
    handles = []
    try:
        with _only_weights_require_grad(model, layers):
            # Each weight's squared gradient is added as soon as backward has it, and the gradient freed:
            # only the layers backward is working on hold a gradient, not every layer at once (a 7B layer's
            # gradients are its weights' size again). One hook per parameter, for all the layers sharing it.
            shared = {}
            for collector in collectors.values():
                shared.setdefault(id(collector.layer.weight), (collector.layer.weight, []))[1].append(collector)
            for weight, owners in shared.values():
                handles.append(weight.register_post_accumulate_grad_hook(
                    lambda param, owners=owners: _add_and_free(param, owners)))
            for sample in tqdm(samples, desc="Fisher", unit="sample", disable=not progress):
                for layer in layers.values():
                    layer.weight.grad = None
                loss = loss_fn(model, sample)
                if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
                    raise ValueError("loss_fn must return a scalar tensor (the loss of one sample)")
                if not bool(torch.isfinite(loss)):
                    raise ValueError(f"loss_fn returned a non-finite loss ({float(loss.detach())}) on sample {count}")
                loss.backward()
                for collector in collectors.values():
                    collector.add_weight_grad()  # any gradient the hooks did not take (none in practice)
                count += 1
    finally:
        for handle in handles:
            handle.remove()
        results = {name: c.finish(max(count, 1)) for name, c in collectors.items()}
        model.train(was_training)
    if count == 0:
        raise ValueError("No calibration samples: the Fisher needs at least one")
    return results
