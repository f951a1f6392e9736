"""Deterministic training of the shipped tiny LM on the stdlib corpus.

    python -m fgmp.golden.models.train --out golden/models/data [--steps N ...]

Seeded data order and init, deterministic algorithms, a fixed thread count: the same command on the
same machine and corpus gives the same weights. Writes tiny_lm.safetensors (BF16) and tiny_lm.json
(config, corpus sha256, training record, held-out perplexity measured on the BF16 weights, and a small
stdlib-independent check slice with its perplexity, for the tests).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .corpus import METADATA_FILE, default_corpus
from .evaluate import perplexity, token_sequences, unigram_perplexity
from .lm import DEFAULT_NAME, WEIGHTS_FILE, CausalLM
from .tiny_lm import TinyLM, TinyLMConfig

CHECK_WINDOWS = 8  # the check slice: the first windows of the eval selection, shipped as bytes


def _lr(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))  # cosine down to 10%


def _batch(data: torch.Tensor, batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, data.numel() - length - 1, (batch, 1), generator=generator)
    return data[starts + torch.arange(length + 1)].long()


def _as_causal_lm(model: TinyLM) -> CausalLM:
    return CausalLM(model=model, name=DEFAULT_NAME, context=model.config.context, device=torch.device("cpu"))


def train(cfg: TinyLMConfig, *, steps: int, batch_size: int = 8, lr: float = 3e-3, warmup: int = 50,
          weight_decay: float = 0.1, seed: int = 0, threads: int = 1, eval_windows: int = 128,
          progress: bool = True) -> tuple[TinyLM, dict]:
    """Train on the default corpus; returns the model with BF16-rounded weights and the metadata."""
    if steps < 1 or batch_size < 1 or threads < 1 or eval_windows < CHECK_WINDOWS:
        raise ValueError(f"need steps, batch_size, threads >= 1 and eval_windows >= {CHECK_WINDOWS}")
    # Process-wide settings are restored afterwards: train() also runs inside the test process.
    saved = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return _train(cfg, steps, batch_size, lr, warmup, weight_decay, seed, threads, eval_windows, progress)
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])


def _train(cfg, steps, batch_size, lr, warmup, weight_decay, seed, threads, eval_windows, progress):
    start_time = time.perf_counter()
    corpus = default_corpus(check=False)
    train_ids = torch.frombuffer(bytearray(corpus.train.encode("utf-8")), dtype=torch.uint8)
    model = TinyLM(cfg)
    decay = [p for p in model.parameters() if p.dim() == 2 and p is not model.embed.weight]
    rest = [p for p in model.parameters() if p.dim() != 2 or p is model.embed.weight]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95), foreach=False)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    bar = tqdm(range(steps), desc="train tiny LM", disable=not progress)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr, warmup)
        x = _batch(train_ids, batch_size, cfg.context, generator)
        loss = F.cross_entropy(model(x[:, :-1]).reshape(-1, cfg.vocab_size), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    train_seconds = time.perf_counter() - start_time

    # Measure what is shipped: weights rounded to BF16, computed in float32.
    model.eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.bfloat16().float())
    lm = _as_causal_lm(model)
    eval_ids = lm.encode(corpus.eval)
    eval_seq = token_sequences(eval_ids, cfg.context, count=eval_windows, seed=0)
    train_seq = token_sequences(train_ids, cfg.context, count=eval_windows, seed=0)
    check_seq = eval_seq[:CHECK_WINDOWS]
    tail = losses[-min(50, steps):]
    meta = {
        "format": 1,
        "model": DEFAULT_NAME,
        "config": cfg.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "weights_file": WEIGHTS_FILE.name,
        "corpus": {
            "source": "python stdlib *.py, rule in fgmp.golden.models.corpus",
            "python": platform.python_version(),
            "sha256": corpus.sha256,
            "train_files": len(corpus.train_files), "eval_files": len(corpus.eval_files),
            "train_bytes": train_ids.numel(), "eval_bytes": eval_ids.numel(),
        },
        "training": {
            "steps": steps, "batch_size": batch_size, "context": cfg.context, "tokens_seen": steps * batch_size * cfg.context,
            "lr": lr, "warmup": warmup, "schedule": "linear warmup, cosine to 10%", "weight_decay": weight_decay,
            "optimizer": "AdamW(0.9, 0.95), grad clip 1.0", "seed": seed, "threads": threads,
            "first_train_loss": losses[0], "final_train_loss": sum(tail) / len(tail), "final_train_loss_steps": len(tail),
            "wall_time_s": round(train_seconds, 1), "torch": torch.__version__,
        },
        "eval": {
            "selection": "token_sequences(lm.encode(corpus.eval), context, count=windows, seed=0)",
            "windows": eval_windows, "length": cfg.context, "tokens": eval_windows * cfg.context,
            "perplexity": perplexity(lm, eval_seq, progress=progress),
            "train_perplexity": perplexity(lm, train_seq, progress=progress),
            "unigram_perplexity": unigram_perplexity(train_ids, eval_seq, cfg.vocab_size),
        },
        "check": {
            "windows": CHECK_WINDOWS, "length": cfg.context,
            "ids_base64": base64.b64encode(bytes(check_seq.flatten().to(torch.uint8).tolist())).decode("ascii"),
            "perplexity": perplexity(lm, check_seq, progress=False),
        },
    }
    meta["eval"]["bits_per_byte"] = math.log2(meta["eval"]["perplexity"])
    return model, meta


def save(model: TinyLM, meta: dict, out: str | Path) -> None:
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS_FILE.name
    save_file({k: v.detach().bfloat16().contiguous() for k, v in model.state_dict().items()}, str(weights))
    meta = dict(meta, weights_sha256=hashlib.sha256(weights.read_bytes()).hexdigest(),
                weights_bytes=weights.stat().st_size)
    (out / METADATA_FILE.name).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> dict:
    defaults = TinyLMConfig()
    p = argparse.ArgumentParser(prog="python -m fgmp.golden.models.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="directory for tiny_lm.safetensors and tiny_lm.json")
    p.add_argument("--steps", type=int, default=1600)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="fixed torch thread count: results depend on it, and one thread does not stall when the CPU is shared")
    p.add_argument("--eval-windows", type=int, default=128)
    for field in ("d_model", "n_layers", "n_heads", "d_ff", "context"):
        p.add_argument("--" + field.replace("_", "-"), type=int, default=getattr(defaults, field))
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    cfg = TinyLMConfig(d_model=args.d_model, n_layers=args.n_layers, n_heads=args.n_heads, d_ff=args.d_ff,
                       context=args.context)
    model, meta = train(cfg, steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
                        seed=args.seed, threads=args.threads, eval_windows=args.eval_windows, progress=not args.quiet)
    argv = sys.argv[1:] if argv is None else list(argv)
    meta["training"]["command"] = " ".join(["python -m fgmp.golden.models.train", *argv])
    save(model, meta, args.out)
    t, e = meta["training"], meta["eval"]
    print(f"{meta['parameters']} parameters, {t['steps']} steps in {t['wall_time_s']} s: train loss "
          f"{t['final_train_loss']:.4f}, held-out perplexity {e['perplexity']:.4f} ({e['bits_per_byte']:.3f} bits/byte; "
          f"unigram {e['unigram_perplexity']:.3f}) -> {args.out}")
    return meta


if __name__ == "__main__":
    main()
