"""Tolerant parsing of optimiser-LLM output: tags, then JSON, then (optionally) plain text.

Small local models often ignore formatting instructions. Proposals are therefore parsed in a fixed order:

1. a tag pair ``<tag>…</tag>`` (case-insensitive; the last complete pair wins; an opening tag without its
   closing tag takes the rest of the text);
2. a JSON object with one of the keys ``tag``, ``prompt``, ``instruction`` (a fenced ```json block or the
   first ``{…}`` in the text);
3. only when ``plain=True``: the first non-empty line, stripped of quotes and list markers and of a
   leading "The instruction was (to)" echo of the question; a line with fewer than two words of letters
   (e.g. a copied ``@handle`` or a label) is no instruction and is rejected (``how="not_instruction"``).

The result is cleaned (whitespace collapsed at the ends, surrounding quotes removed) and rejected when it
is empty, shorter than ``min_chars`` or longer than ``max_chars``: callers then retry, and after the last
retry log a *scored* failure (see :class:`lmopt.prompt.base.RunContext.propose`) — a proposal is never an
empty prompt, unlike implementations that silently turn a missing tag into ``""`` (as the released SPO code
does; see docs/prompt.md).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

_QUOTES = "\"'`“”‘’"
_ECHO = re.compile(r"^(?:the\s+)?instruction\s+(?:was|is)(?:\s+to)?\s*:?\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Parsed:
    """A parsed proposal: ``text`` is None when nothing usable was found; ``how`` says which rule matched."""

    text: str | None
    how: str  # "tag" | "json" | "plain" | "none" | "empty" | "too_long" | "not_instruction"


def _clean(s: str) -> str:
    s = s.strip()
    for _ in range(2):
        if len(s) >= 2 and s[0] in _QUOTES and s[-1] in _QUOTES:
            s = s[1:-1].strip()
    return s


def extract_tag(text: str, tag: str) -> str | None:
    """Content of the last complete ``<tag>…</tag>`` pair, else of an unclosed ``<tag>`` to the end."""
    t = re.escape(tag)
    pairs = re.findall(rf"<\s*{t}\s*>(.*?)<\s*/\s*{t}\s*>", text, flags=re.IGNORECASE | re.DOTALL)
    if pairs:
        full = [p for p in pairs if p.strip()]
        return full[-1] if full else ""  # only empty pairs: an (empty) answer, rejected by the caller
    m = re.search(rf"<\s*{t}\s*>(.*)$", text, flags=re.IGNORECASE | re.DOTALL)
    if m:
        return re.sub(rf"<\s*/?\s*{t}\s*>", " ", m.group(1))
    return None


def extract_json_field(text: str, keys: tuple[str, ...]) -> str | None:
    """The first string value under one of ``keys`` in a JSON object found in ``text``."""
    candidates = re.findall(r"```(?:json)?\s*(\{.*?\})\s*```", text, flags=re.DOTALL)
    candidates += re.findall(r"\{[^{}]*\}", text, flags=re.DOTALL)
    for c in candidates:
        try:
            obj = json.loads(c)
        except (json.JSONDecodeError, ValueError):
            continue
        if isinstance(obj, dict):
            lower = {str(k).lower(): v for k, v in obj.items()}
            for k in keys:
                v = lower.get(k.lower())
                if isinstance(v, str) and v.strip():
                    return v
    return None


def first_plain_line(text: str) -> str | None:
    for line in text.strip().splitlines():
        line = re.sub(r"^\s*(?:[-*•]|\d+[.)])\s+", "", line).strip()
        if line:
            return line
    return None


def parse_proposal(text: str, tag: str = "prompt", *, plain: bool = False, min_chars: int = 3,
                   max_chars: int = 2000) -> Parsed:
    """Parse an optimiser's proposal (see the module docstring for the rules)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    found, how = extract_tag(text, tag), "tag"
    if not (found or "").strip():
        found, how = extract_json_field(text, (tag, "prompt", "instruction")), "json"
    if found is None and plain:
        found, how = first_plain_line(text), "plain"
        if found is not None:
            found = _ECHO.sub("", found).strip()
            if len(re.findall(r"[A-Za-z]{2,}", found)) < 2:
                return Parsed(None, "not_instruction")
    if found is None:
        return Parsed(None, "none")
    found = _clean(found)
    if len(found) < min_chars:
        return Parsed(None, "empty")
    if len(found) > max_chars:
        return Parsed(None, "too_long")
    return Parsed(found, how)
