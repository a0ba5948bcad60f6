"""The tiny-GPT setup shared by the optimizer benchmarks (optim_quality, autolrs); the model, corpus and
training loop live in :mod:`lmopt.tinygpt`.

    from benchmarks._tinygpt import GPT, GPTConfig, load_shakespeare, get_batch, evaluate, tiny_setup
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from lmopt.tinygpt import GPT, Corpus, GPTConfig, evaluate, get_batch, load_shakespeare

__all__ = ["GPT", "Corpus", "GPTConfig", "evaluate", "get_batch", "load_shakespeare", "TinySetup", "tiny_setup"]


class TinySetup(NamedTuple):
    seeds: int
    steps: int
    corpus: Corpus
    cfg: GPTConfig
    batch: int
    eval_every: int
    eval_batches: int


MODEL_SIZES = {"small": (2, 64), "1m": (4, 144)}  # (layers, width): 106k and 1.02M parameters


def tiny_setup(args: Any, quick_steps: int, size: str = "small") -> TinySetup:
    """The training setup shared by the tiny-GPT benchmarks (optim_quality, autolrs): threads, seeds,
    steps, corpus and model size (``MODEL_SIZES``; ``--quick`` always uses the small model), full or
    ``--quick``."""
    torch.set_num_threads(args.threads)
    steps = args.steps or (quick_steps if args.quick else 300)
    corpus = load_shakespeare(max_train_chars=300_000 if args.quick else 1_000_000)
    n_layer, n_embd = MODEL_SIZES["small" if args.quick else size]
    cfg = GPTConfig(vocab_size=len(corpus.vocab), block_size=32, n_layer=n_layer, n_head=4, n_embd=n_embd)
    return TinySetup(args.seeds or (1 if args.quick else 3), steps, corpus, cfg, 16, max(5, steps // 10),
                     4 if args.quick else 8)
