"""Sentence embeddings (sentence-transformers); the default is the embedded all-MiniLM-L6-v2."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._deps import require


class Embedder:
    """Encode texts into L2-normalised vectors.

    Args:
        model: a sentence-transformers model id or folder; None = the embedded MiniLM (384-d, offline).
        device: torch device. batch_size: texts per forward pass.
    """

    def __init__(self, model: str | Path | None = None, *, device: str = "cpu", batch_size: int = 64) -> None:
        st = require("sentence_transformers", "hf")
        if model is None:
            from ..assets import minilm_dir

            path, self.name = str(minilm_dir()), "embedded:all-MiniLM-L6-v2"
        else:
            path = self.name = str(model)
        # A local folder must never reach for the hub; the variable is restored after loading.
        old = os.environ.get("HF_HUB_OFFLINE")
        if Path(path).is_dir():
            os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            self.model = st.SentenceTransformer(path, device=device)
        except (OSError, ValueError) as exc:
            raise OSError(f"could not load embedder {self.name!r} (not a local folder and the hub is not "
                          f"reachable?); use Embedder() for the embedded MiniLM. Cause: {exc}") from exc
        finally:
            if old is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = old
        self.batch_size = batch_size
        getdim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(getdim())

    def encode(self, texts: Sequence[str]) -> Any:
        """(len(texts), dim) float32 numpy array of unit-norm embeddings."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of strings; wrap a single text in a list")
        return self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False)
