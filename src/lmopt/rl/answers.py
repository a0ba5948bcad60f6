"""Final-answer extraction for consistency measures over a group of completions (COPO's answer entropy).

Chain-of-thought completions that agree on the answer differ in their reasoning text, so comparing whole
completions makes every group look maximally inconsistent. :func:`final_answer` reduces a completion to
its final answer: the content of the last ``\\boxed{...}``, else the text after the last ``####`` or
"answer is" / "Answer:" marker, else the whole text; then the last number in that part when there is one
(thousands separators removed, trailing zeros of decimals dropped), else its first line, stripped and
lower-cased. Pass a task's own parser (``answer_fn=task.parser``) when the task defines one.
"""

from __future__ import annotations

import re
from typing import Any

from lmopt.data.loaders import parse_last_number

_MARKERS = re.compile(r"(?i)####|the (?:final )?answer is|answer\s*:")


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a string, or the content of the last message of a conversation."""
    if isinstance(completion, list):
        return str(completion[-1].get("content", "")) if completion else ""
    return str(completion)


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j]
    return None  # unbalanced: the completion was cut off inside the box


def final_answer(completion: Any) -> str:
    """The final answer of a completion (see the module docstring); ``""`` for an empty completion.

    >>> final_answer("3 + 4 = 7, so the answer is 7.")
    '7'
    >>> final_answer([{"role": "assistant", "content": "We get \\\\boxed{\\\\frac{1}{2}}"}])
    '\\\\frac{1}{2}'
    """
    text = completion_text(completion)
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    parts = _MARKERS.split(text)
    tail = parts[-1] if len(parts) > 1 else text
    number = parse_last_number(tail)
    if number:
        return number
    for line in tail.strip().splitlines():
        if line.strip():
            return line.strip().rstrip(".").lower()
    return ""
