"""Feature maps for neural-bandit prompt optimisers: sentence embeddings, LM hidden states, hashing.

``resolve_embedder("minilm")`` loads the embedded all-MiniLM-L6-v2 (:class:`lmopt.lm.Embedder`);
``"hash"`` is a dependency-free hashed bag of words and character trigrams (deterministic, for tests and
quick runs); any callable ``list[str] -> array (n, d)`` is used as is.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

EmbedFn = Callable[[Sequence[str]], Any]


class HashingEmbedder:
    """Unit-norm hashed counts of words and character trigrams (``dim`` buckets, signed hashing)."""

    def __init__(self, dim: int = 256) -> None:
        if not isinstance(dim, int) or dim < 8:
            raise ValueError(f"dim must be an int >= 8, got {dim!r}")
        self.dim = dim
        self.name = f"hash{dim}"

    def _feats(self, text: str) -> list[str]:
        words = re.findall(r"\w+", text.lower())
        grams = [text[i: i + 3].lower() for i in range(max(0, len(text) - 2))]
        return [f"w:{w}" for w in words] + [f"c:{g}" for g in grams]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of strings")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for f in self._feats(t):
                h = int.from_bytes(hashlib.blake2b(f.encode(), digest_size=8).digest(), "little")
                out[i, h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
            n = np.linalg.norm(out[i])
            if n > 0:
                out[i] /= n
        return out

    __call__ = encode


def embedder_identity(spec: str | EmbedFn | Any | None) -> str:
    """What identifies an embedder in a run's fingerprint: its model name where it has one (``.name``), the
    hashing dimension, or the callable's qualified name (give a custom embedder a ``name`` to be exact)."""
    if spec is None or spec == "minilm":
        return "minilm:embedded:all-MiniLM-L6-v2"
    if isinstance(spec, str):
        return spec
    if isinstance(spec, HashingEmbedder):
        return f"hash:{spec.dim}"
    kind = f"{type(spec).__module__}.{type(spec).__qualname__}"
    if getattr(spec, "name", None):
        return f"{kind}:{spec.name}"
    if callable(spec) and hasattr(spec, "__qualname__"):
        return f"{getattr(spec, '__module__', '')}.{spec.__qualname__}"
    return kind


def resolve_embedder(spec: str | EmbedFn | Any | None) -> EmbedFn:
    """``"minilm"`` (default) | ``"hash"`` | an object with ``encode`` | a callable."""
    if spec is None or spec == "minilm":
        from ..lm.embed import Embedder

        return Embedder().encode
    if spec == "hash":
        return HashingEmbedder().encode
    if hasattr(spec, "encode"):
        return spec.encode
    if callable(spec):
        return spec
    raise ValueError(f"embedder must be 'minilm', 'hash', an object with encode() or a callable, got {spec!r}")


def as_matrix(x: Any, n: int) -> np.ndarray:
    """Convert embedder / hidden-state output to a finite float32 (n, d) array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy()
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] != n:
        raise ValueError(f"features must have shape ({n}, d), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("features contain NaN or inf")
    return arr
