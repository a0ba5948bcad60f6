"""Search spaces as a language model reads and writes them: optuna distributions ↔ compact text.

A configuration is written ``name: value, name: value`` (LLAMBO, arXiv 2402.03921, Sec. 3: the natural
serialisation of a hyperparameter configuration). Floats carry the decimals of the space's lower bound, as
the released LLAMBO code does, but at least two: the released rule prints every value of a ``[0, 0.5]``
range as ``0``. Integers are whole numbers, categorical values their ``str``.

Parsing is tolerant of the model's formatting (``##`` fences, JSON-style quotes and braces, ``=`` for
``:``, any order of names) but never of its values: a value outside the space is rejected with a reason,
never clipped into it. The only repairs are ones that cannot change which point is meant: an integer written
``5.0``, a categorical value in another letter case or written as a number, a stepped float off its grid by
rounding noise (within 1e-6 of a step).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._deps import require

optuna = require("optuna", "tune")
from optuna.distributions import (  # noqa: E402
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

Space = Mapping[str, BaseDistribution]

_PAIR = re.compile(r"""["']?([A-Za-z_][\w.\-]*)["']?\s*[:=]\s*("[^"]*"|'[^']*'|[^,\n#{}]+)""")


def check_space(space: Space) -> dict[str, BaseDistribution]:
    """The space as a dict, or a ValueError that names what is not supported."""
    if not isinstance(space, Mapping) or not space:
        raise ValueError("the search space must be a non-empty mapping of parameter name -> optuna distribution")
    out = {}
    for name, dist in space.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][\w.\-]*", name):
            raise ValueError(f"parameter name {name!r} cannot be written in a prompt; use letters, digits, '_', "
                             f"'.' or '-', starting with a letter")
        if not isinstance(dist, (FloatDistribution, IntDistribution, CategoricalDistribution)):
            raise ValueError(f"parameter {name!r}: unsupported distribution {type(dist).__name__}; use "
                             f"FloatDistribution, IntDistribution or CategoricalDistribution")
        out[name] = dist
    return out


def _decimals_of(x: float) -> int:
    s = format(float(x), ".10f").rstrip("0")
    return len(s.split(".")[1]) if "." in s else 0


def decimals(dist: BaseDistribution) -> int:
    """Decimals a float of this distribution is written with (see the module docstring)."""
    if isinstance(dist, IntDistribution):
        return 0
    if isinstance(dist, FloatDistribution):
        if dist.step is not None:
            return max(_decimals_of(dist.low), _decimals_of(dist.step))
        return max(_decimals_of(dist.low), 2)
    raise TypeError(f"no decimals for {type(dist).__name__}")


def format_value(dist: BaseDistribution, value: Any) -> str:
    if isinstance(dist, IntDistribution):
        return str(int(value))
    if isinstance(dist, FloatDistribution):
        return f"{float(value):.{decimals(dist)}f}"
    return str(value)


def format_config(params: Mapping[str, Any], space: Space, *, sep: str = ": ") -> str:
    """``name: value, ...`` in the space's order (``sep=" is "`` gives the surrogate's ``name is value``)."""
    return ", ".join(f"{name}{sep}{format_value(dist, params[name])}" for name, dist in space.items())


def describe_space(space: Space) -> str:
    """One line per parameter: its range or choices and how precisely to write it."""
    lines = []
    for name, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            lines.append(f"- {name}: one of [{', '.join(str(c) for c in dist.choices)}] (categorical)")
            continue
        lo, hi = format_value(dist, dist.low), format_value(dist, dist.high)
        kind = "int" if isinstance(dist, IntDistribution) else f"float, precise to {decimals(dist)} decimals"
        extras = []
        if dist.log:
            extras.append("log scale")
        step = getattr(dist, "step", None)
        if step is not None and not (isinstance(dist, IntDistribution) and step == 1):
            extras.append(f"multiple of {format_value(dist, step)} from {lo}")
        lines.append(f"- {name}: [{lo}, {hi}] ({', '.join([kind, *extras])})")
    return "\n".join(lines)


@dataclass
class Parsed:
    """A configuration read from model text: ``params`` (None if rejected), why not, and what was repaired."""

    params: dict[str, Any] | None
    reason: str = ""
    repaired: tuple[str, ...] = ()


def coerce(dist: BaseDistribution, raw: Any) -> tuple[Any, bool]:
    """A value of ``dist`` from the model's text and whether it needed a repair; ValueError if it is not one."""
    text = raw.strip().strip("\"'").strip() if isinstance(raw, str) else raw
    if isinstance(dist, CategoricalDistribution):
        for choice in dist.choices:
            if text == choice or str(choice) == str(text):
                return choice, False
        for choice in dist.choices:
            if str(choice).lower() == str(text).lower():
                return choice, True
        num = _number(text)
        for choice in dist.choices:
            if num is not None and isinstance(choice, (int, float)) and not isinstance(choice, bool) \
                    and math.isclose(num, choice, rel_tol=1e-9, abs_tol=1e-12):
                return choice, True
        raise ValueError(f"{text!r} is not one of the choices")
    num = _number(text)
    if num is None:
        raise ValueError(f"{text!r} is not a number")
    if not (dist.low <= num <= dist.high):
        raise ValueError(f"{num:g} is outside [{dist.low:g}, {dist.high:g}]")
    if isinstance(dist, IntDistribution):
        if num != int(num):
            raise ValueError(f"{num:g} is not an integer")
        value, repaired = int(num), not _is_int_text(text)
        if (value - dist.low) % dist.step:
            raise ValueError(f"{value} is not on the step-{dist.step} grid from {dist.low}")
        return value, repaired
    if dist.step is not None:
        k = (num - dist.low) / dist.step
        if abs(k - round(k)) > 1e-6:
            raise ValueError(f"{num:g} is not a multiple of {dist.step:g} from {dist.low:g}")
        snapped = min(dist.high, dist.low + round(k) * dist.step)
        return snapped, snapped != num
    return num, False


def _number(text: Any) -> float | None:
    if isinstance(text, bool):
        return None
    if isinstance(text, (int, float)):
        return float(text) if math.isfinite(text) else None
    try:
        v = float(str(text).replace("_", ""))
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _is_int_text(text: Any) -> bool:
    return isinstance(text, int) or bool(re.fullmatch(r"[+-]?\d+", str(text)))


def parse_config(text: str, space: Space) -> Parsed:
    """Read one configuration from model text (see the module docstring for what is tolerated)."""
    body = _fenced(text)
    pairs = _PAIR.findall(body)
    if not pairs:
        return Parsed(None, "unparseable")
    return from_pairs(pairs, space)


def from_pairs(pairs: Sequence[tuple[str, Any]] | Mapping[str, Any], space: Space) -> Parsed:
    """Check a name → raw value list against the space: every name once, nothing unknown, values in range."""
    items = list(pairs.items()) if isinstance(pairs, Mapping) else list(pairs)
    lower = {n.lower(): n for n in space}
    params: dict[str, Any] = {}
    repaired: list[str] = []
    for key, raw in items:
        name = key if key in space else lower.get(str(key).lower())
        if name is None:
            return Parsed(None, f"unknown parameter {key!r}")
        if name != key:
            repaired.append(f"{key}->{name}")
        if name in params:
            return Parsed(None, f"parameter {name!r} given twice")
        try:
            value, fixed = coerce(space[name], raw)
        except ValueError as exc:
            return Parsed(None, f"out of space: {name} {exc}")
        params[name] = value
        if fixed:
            repaired.append(name)
    missing = [n for n in space if n not in params]
    if missing:
        return Parsed(None, f"missing {', '.join(missing)}")
    return Parsed(params, "", tuple(repaired))


def _fenced(text: str) -> str:
    """The text between the first two ``##`` marks, or all of it when there are none (models drop them)."""
    parts = text.split("##")
    return parts[1] if len(parts) >= 3 else text.replace("##", " ")


def config_key(params: Mapping[str, Any], space: Space) -> tuple[Any, ...]:
    """A hashable identity of a configuration: floats rounded to 8 decimals as the released duplicate filter."""
    return tuple(round(float(params[n]), 8) if isinstance(d, FloatDistribution) else params[n]
                 for n, d in space.items())
