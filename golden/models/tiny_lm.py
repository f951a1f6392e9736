"""The embedded default model: a small byte-level decoder-only transformer.

Every matmul is an `nn.Linear` without bias (q/k/v/o, MLP up/down, lm_head), so the quantization policy
finds all of them with `module.modules()`; every in_features is a multiple of 16 so 16-element blocks
tile each row. Rotary positions keep the position code out of the weights (no table to quantize or
ship). The lm_head is not tied to the embedding: quantizing it must not change the embedding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

BLOCK_MULTIPLE = 16


@dataclass(frozen=True)
class TinyLMConfig:
    vocab_size: int = 256
    d_model: int = 192
    n_layers: int = 4
    n_heads: int = 6
    d_ff: int = 768
    context: int = 256
    rope_base: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "context"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TinyLMConfig.{name} must be a positive int, got {value!r}")
        for name in ("d_model", "d_ff"):
            if getattr(self, name) % BLOCK_MULTIPLE:
                raise ValueError(f"TinyLMConfig.{name} must be a multiple of {BLOCK_MULTIPLE} "
                                 f"(16-element quantization blocks), got {getattr(self, name)}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"TinyLMConfig.d_model ({self.d_model}) must split into n_heads "
                             f"({self.n_heads}) heads of even size (rotary positions rotate pairs)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TinyLMConfig":
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown TinyLMConfig fields: {sorted(unknown)}")
        return cls(**data)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: TinyLMConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.o_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        heads = lambda y: y.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)  # noqa: E731
        q = _rotate(heads(self.q_proj(x)), cos, sin)
        k = _rotate(heads(self.k_proj(x)), cos, sin)
        y = F.scaled_dot_product_attention(q, k, heads(self.v_proj(x)), is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, cfg: TinyLMConfig):
        super().__init__()
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.up_proj(x)))


class Block(nn.Module):
    def __init__(self, cfg: TinyLMConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class TinyLM(nn.Module):
    """forward(input_ids LongTensor[B, T]) -> logits FloatTensor[B, T, vocab_size], T <= context."""

    def __init__(self, cfg: TinyLMConfig | None = None):
        super().__init__()
        self.config = cfg = cfg or TinyLMConfig()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        head_dim = cfg.d_model // cfg.n_heads
        inv_freq = cfg.rope_base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles = torch.outer(torch.arange(cfg.context, dtype=torch.float64), inv_freq)
        # Not persistent: derived from the config, so the weight file holds only trained tensors.
        self.register_buffer("rope_cos", angles.cos().float(), persistent=False)
        self.register_buffer("rope_sin", angles.sin().float(), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # GPT-2 style: small normal init, residual output projections scaled down with depth.
        std = 0.02
        for name, p in self.named_parameters():
            if p.dim() == 2:
                scale = (2 * self.config.n_layers) ** -0.5 if name.endswith(("o_proj.weight", "down_proj.weight")) else 1.0
                nn.init.normal_(p, mean=0.0, std=std * scale)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype != torch.long or input_ids.dim() != 2:
            raise TypeError("TinyLM expects input_ids as a LongTensor of shape [B, T]")
        t = input_ids.shape[1]
        if not 1 <= t <= self.config.context:
            raise ValueError(f"sequence length {t} outside 1..{self.config.context} (the model's context)")
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.lm_head(self.norm(x))
