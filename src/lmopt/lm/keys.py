"""Content-addressed keys for LM calls (shared by the call cache and record/replay)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

KEY_VERSION = 1


def request_key(kind: str, model: str, payload: dict[str, Any], sample_index: int = 0) -> str:
    """SHA-256 over a canonical JSON of everything that determines one result.

    ``payload`` holds the prompt / messages / continuation and the generation fields that change the
    output; ``sample_index`` keeps the n samples of one request distinct.
    """
    doc = {"v": KEY_VERSION, "kind": kind, "model": model, "payload": payload, "sample": sample_index}
    blob = json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()
