"""A text calculator tool: ``<calc>expression</calc>`` calls evaluated by a restricted arithmetic evaluator.

The embedded tool task of :mod:`lmopt.rl.otc`: a model writes ``<calc>17*23+5</calc>``, the environment
answers ``<result>396</result>``. Expressions are parsed with :mod:`ast` and only numbers, ``+ - * / // %
**``, unary signs and parentheses are evaluated — never ``eval`` — with limits on length, exponents and
magnitudes, so model output cannot run code or exhaust memory.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Sequence
from typing import Any

MAX_CHARS = 200
MAX_EXPONENT = 64
MAX_MAGNITUDE = 1e15
CALL_PATTERN = re.compile(r"<calc>(.*?)</calc>", re.DOTALL)

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class CalcError(ValueError):
    """An expression the calculator refuses or cannot evaluate (the message says why)."""


def _check(v: Any) -> float | int:
    if not isinstance(v, (int, float)):  # e.g. a complex number from (-8) ** 0.5
        raise CalcError("the result is not a real number")
    if isinstance(v, float) and not math.isfinite(v) or abs(v) > MAX_MAGNITUDE:
        raise CalcError(f"result magnitude exceeds {MAX_MAGNITUDE:g}")
    return v


def _eval(node: ast.AST) -> float | int:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _check(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise CalcError(f"exponent {right} exceeds {MAX_EXPONENT}")
        try:
            return _check(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise CalcError("division by zero") from None
        except OverflowError:
            raise CalcError(f"result magnitude exceeds {MAX_MAGNITUDE:g}") from None
    raise CalcError(f"unsupported syntax: {type(node).__name__} (numbers, + - * / // % ** and parentheses only)")


def safe_eval(expression: str) -> float | int:
    """Value of an arithmetic ``expression``; raises :class:`CalcError` for anything else."""
    if not isinstance(expression, str):
        raise CalcError(f"expression must be a string, got {type(expression).__name__}")
    text = expression.strip().replace("×", "*").replace("÷", "/")
    if not text:
        raise CalcError("empty expression")
    if len(text) > MAX_CHARS:
        raise CalcError(f"expression longer than {MAX_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise CalcError(f"not an arithmetic expression: {text[:40]!r}") from None
    return _eval(tree)


def format_number(v: float | int) -> str:
    """Integers as integers; other values rounded to 6 significant decimals (no exponent notation)."""
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v) if isinstance(v, int) else f"{v:.6f}".rstrip("0").rstrip(".")


def tool_result(expression: str) -> str:
    """What the environment answers to one call: ``<result>VALUE</result>`` or ``<result>error: ...</result>``."""
    try:
        return f"<result>{format_number(safe_eval(expression))}</result>"
    except CalcError as exc:
        return f"<result>error: {exc}</result>"


def joined_text(completion: Any) -> str:
    """The whole text of a TRL completion: a string, or the contents of all its chat messages joined (tool
    calls may sit in any assistant turn)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence):
        return "".join(str(m.get("content", "")) if isinstance(m, dict) else str(m) for m in completion)
    raise TypeError(f"a completion is a string or a list of messages, got {type(completion).__name__}")


TOOL_INSTRUCTION = ("You may use a calculator: write <calc>EXPRESSION</calc> and the result appears as "
                    "<result>VALUE</result>. Use it only when you need it. End with 'Answer: NUMBER'.")


# Few-shot demonstrations for models that do not follow the chat instruction (SmolLM2-135M never calls the
# tool from it): one call where mental arithmetic fails, none where it suffices.
FEWSHOT_PREFIX = ("You may use a calculator: <calc>EXPRESSION</calc> gives <result>VALUE</result>.\n\n"
                  "Q: What is 12 * 34 + 56?\nA: <calc>12 * 34 + 56</calc><result>464</result> Answer: 464\n"
                  "Q: What is 3 + 4?\nA: Answer: 7\n"
                  "Q: What is 251 * 17 + 300?\nA: <calc>251 * 17 + 300</calc><result>4567</result> Answer: 4567\n"
                  "Q: What is 5 + 2?\nA: Answer: 7\n")
FEWSHOT_STOP = "\nQ:"  # where a few-shot completion starts the next question


def calc_task(n: int, seed: int = 0, hard_fraction: float = 0.5, style: str = "chat") -> list[dict[str, Any]]:
    """``n`` arithmetic questions as TRL prompt rows (``prompt``, ``answer``, ``hard``).

    Easy ones (one-digit sums) need no tool; hard ones (three-digit × two-digit plus three-digit) are beyond
    a small model's mental arithmetic, so the fewest calls that solve them is one: the optimal number of
    calls differs per question, which is what OTC's reward is built around.

    ``style="chat"``: the prompt is one user message with :data:`TOOL_INSTRUCTION`; ``"completion"``: a plain
    string, :data:`FEWSHOT_PREFIX` then ``"Q: What is ...?\nA:"`` — generate with ``stop=(FEWSHOT_STOP,)``.
    """
    import random

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not 0.0 <= hard_fraction <= 1.0:
        raise ValueError(f"hard_fraction must lie in [0, 1], got {hard_fraction!r}")
    if style not in ("chat", "completion"):
        raise ValueError(f"style must be 'chat' or 'completion', got {style!r}")
    rng = random.Random(f"calc:{seed}")
    rows = []
    for _ in range(n):
        hard = rng.random() < hard_fraction
        if hard:
            a, b, c = rng.randint(100, 999), rng.randint(11, 99), rng.randint(100, 999)
            expr = f"{a} * {b} + {c}"
        else:
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            expr = f"{a} + {b}"
        prompt: Any = ([{"role": "user", "content": f"{TOOL_INSTRUCTION}\nWhat is {expr}?"}] if style == "chat"
                       else f"{FEWSHOT_PREFIX}Q: What is {expr}?\nA:")
        rows.append({"prompt": prompt, "answer": format_number(safe_eval(expr)), "hard": hard})
    return rows


def calc_correct(prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[str],
                 **kwargs: Any) -> list[float]:
    """A TRL reward function: 1.0 where the completion's final answer (after the last tool result) equals
    ``answer``. Numbers inside ``<result>`` tags do not count as the model's answer."""
    from .answers import final_answer

    out = []
    for c, a in zip(completions, answer):
        text = joined_text(c)
        tail = text.rsplit("</result>", 1)[-1]
        out.append(1.0 if final_answer(tail) == str(a) else 0.0)
    return out


def count_calls(completion: Any, pattern: re.Pattern[str] = CALL_PATTERN) -> int:
    """Number of complete tool calls (``<calc>...</calc>``) in a completion."""
    return len(pattern.findall(joined_text(completion)))


__all__ = ["CALL_PATTERN", "FEWSHOT_PREFIX", "FEWSHOT_STOP", "CalcError", "calc_task", "calc_correct", "count_calls",
           "format_number", "joined_text", "safe_eval", "tool_result"]
