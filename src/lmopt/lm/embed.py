"""Sentence embeddings (sentence-transformers); the default is the embedded all-MiniLM-L6-v2."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._deps import require
from .._hub import hub_access, quiet_loading


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
        with hub_access(path) as offline, quiet_loading():
            try:
                self.model = st.SentenceTransformer(path, device=device)
            except (OSError, ValueError) as exc:
                where = f"the hub was not tried ({offline})" if offline else "not a local folder nor on the hub"
                raise OSError(f"could not load embedder {self.name!r} ({where}); use Embedder() for the "
                              f"embedded MiniLM. Cause: {str(exc).splitlines()[0][:200]}") from exc
        self.batch_size = batch_size
        getdim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(getdim())

    def encode(self, texts: Sequence[str]) -> Any:
        """(len(texts), dim) float32 numpy array of unit-norm embeddings."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of strings; wrap a single text in a list")
        return self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False)
