"""Usage accounting per role and hard budgets that stop a run *before* it would exceed them."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Any

KNOWN_ROLES = ("task", "optimizer", "judge")
_LIMIT_FIELDS = ("calls", "prompt_tokens", "completion_tokens", "total_tokens")


class BudgetExceeded(RuntimeError):
    """Raised before a call that could push usage past a budget limit; nothing was spent on it."""

    def __init__(self, message: str, role: str, limit: str) -> None:
        super().__init__(message)
        self.role = role
        self.limit = limit


@dataclass
class RoleUsage:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_calls: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "total_tokens": self.total_tokens}


@dataclass(frozen=True)
class Limits:
    """Upper bounds; ``None`` means unlimited. A backend call counts once per prompt/conversation/score."""

    calls: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None

    def __post_init__(self) -> None:
        for f in _LIMIT_FIELDS:
            v = getattr(self, f)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise ValueError(f"budget limit {f} must be a non-negative int or None, got {v!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Limits:
        d = dict(d or {})
        unknown = set(d) - set(_LIMIT_FIELDS)
        if unknown:
            raise ValueError(f"unknown budget limit(s) {sorted(unknown)}; allowed: {list(_LIMIT_FIELDS)}")
        return cls(**d)


@dataclass
class Budget:
    """Limits per role (``task`` / ``optimizer`` / ``judge`` / any name) and over all roles together.

    >>> b = Budget(per_role={"task": Limits(calls=100)}, total=Limits(total_tokens=10_000))
    """

    per_role: dict[str, Limits] = field(default_factory=dict)
    total: Limits = field(default_factory=Limits)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Budget:
        """``{"total": {...}, "task": {"calls": 165}, "optimizer": {...}}`` → Budget."""
        d = dict(d or {})
        total = Limits.from_dict(d.pop("total", None))
        return cls(per_role={role: Limits.from_dict(v) for role, v in d.items()}, total=total)


class UsageMeter:
    """Thread-safe usage counts per role, checked against an optional :class:`Budget`."""

    def __init__(self, budget: Budget | None = None) -> None:
        self.budget = budget or Budget()
        self._usage: dict[str, RoleUsage] = {}
        self._lock = threading.Lock()

    def usage(self, role: str | None = None) -> RoleUsage:
        """Usage of one role, or of all roles summed when ``role`` is None."""
        with self._lock:
            if role is not None:
                return RoleUsage(**asdict(self._usage.get(role, RoleUsage())))
            tot = RoleUsage()
            for u in self._usage.values():
                tot.calls += u.calls
                tot.prompt_tokens += u.prompt_tokens
                tot.completion_tokens += u.completion_tokens
                tot.cached_calls += u.cached_calls
            return tot

    def report(self) -> dict[str, dict[str, int]]:
        with self._lock:
            roles = sorted(self._usage)
        out = {r: self.usage(r).to_dict() for r in roles}
        out["total"] = self.usage().to_dict()
        return out

    def check(self, role: str, calls: int, prompt_tokens: int, completion_tokens: int) -> None:
        """Raise :class:`BudgetExceeded` if spending this (a worst-case estimate) could exceed a limit."""
        checks = [(role, self.budget.per_role.get(role), self.usage(role)), ("total", self.budget.total,
                                                                              self.usage())]
        for scope, limits, used in checks:
            if limits is None:
                continue
            after = {
                "calls": used.calls + calls,
                "prompt_tokens": used.prompt_tokens + prompt_tokens,
                "completion_tokens": used.completion_tokens + completion_tokens,
                "total_tokens": used.total_tokens + prompt_tokens + completion_tokens,
            }
            for f in _LIMIT_FIELDS:
                lim = getattr(limits, f)
                if lim is not None and after[f] > lim:
                    raise BudgetExceeded(
                        f"budget stop: {scope} {f} would reach {after[f]} (limit {lim}) with this request "
                        f"of {calls} call(s) for role {role!r}; usage so far: {getattr(used, f)}. "
                        "Raise the limit in the budget or shrink the run.",
                        role=scope, limit=f,
                    )

    def charge(self, role: str, calls: int, prompt_tokens: int, completion_tokens: int,
               cached_calls: int = 0) -> None:
        with self._lock:
            u = self._usage.setdefault(role, RoleUsage())
            u.calls += calls
            u.prompt_tokens += prompt_tokens
            u.completion_tokens += completion_tokens
            u.cached_calls += cached_calls

    def state_dict(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {r: asdict(u) for r, u in self._usage.items()}

    def load_state_dict(self, state: dict[str, dict[str, int]]) -> None:
        with self._lock:
            self._usage = {r: RoleUsage(**u) for r, u in state.items()}
