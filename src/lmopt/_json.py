"""Finding a JSON object in a model's reply (shared by the modelling pipeline and OptoPrime)."""

from __future__ import annotations

import json
import re
from typing import Any


def find_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in ``text``: a ```json fence first, else the first ``{`` that starts one."""
    decoder = json.JSONDecoder()
    fenced = [m.start(1) for m in re.finditer(r"```(?:json)?\s*(\{)", text)]
    for pos in fenced + [m.start() for m in re.finditer(r"\{", text)]:
        try:
            obj, _ = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    return None
