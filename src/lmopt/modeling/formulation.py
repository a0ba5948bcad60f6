"""A structured optimisation model: LLMOPT's five elements (arXiv 2410.13213, §3.1) as validated data.

Sets, parameters, variables, objective and constraints; the objective and constraints are linear expressions
written in Python syntax (``"sum(cost[i] * x[i] for i in ITEMS)"``, ``"x[i] <= cap[i]"`` for all ``i`` in a
set) that are parsed with :mod:`ast` and never evaluated. :func:`linearize` turns a formulation into rows of
coefficients that any LP/MILP solver takes (:mod:`lmopt.modeling.solvers`). A model that is not linear (a
product of variables, a division by a variable) is rejected with the expression and the reason.
"""

from __future__ import annotations

import ast
import itertools
import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Element = str | int
_OPS = {ast.LtE: "<=", ast.GtE: ">=", ast.Eq: "=="}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SetDef(_Strict):
    name: str
    elements: list[Element] = Field(min_length=1)

    @field_validator("elements")
    @classmethod
    def _distinct(cls, v: list[Element]) -> list[Element]:
        if len(set(v)) != len(v):
            raise ValueError(f"set elements must be distinct, got {v}")
        return v


class Parameter(_Strict):
    """A number, or a table over sets: ``values`` keyed by element (one set) or by ``"a,b"`` (several)."""

    name: str
    indices: list[str] = Field(default_factory=list)
    values: float | dict[str, float]


class Variable(_Strict):
    name: str
    indices: list[str] = Field(default_factory=list)
    type: Literal["continuous", "integer", "binary"] = "continuous"
    lower: float | None = 0.0
    upper: float | None = None


class Objective(_Strict):
    sense: Literal["min", "max"]
    expression: str


class Constraint(_Strict):
    """``expression`` is ``lhs <= rhs``, ``lhs >= rhs`` or ``lhs == rhs``; ``for_all`` maps index names to
    sets (one constraint per combination), e.g. ``{"i": "ITEMS"}``."""

    name: str
    expression: str
    for_all: dict[str, str] = Field(default_factory=dict)


class Formulation(_Strict):
    """The five elements; validated so that every name used is defined and every table is complete."""

    sets: list[SetDef] = Field(default_factory=list)
    parameters: list[Parameter] = Field(default_factory=list)
    variables: list[Variable] = Field(min_length=1)
    objective: Objective
    constraints: list[Constraint] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Formulation:
        names = [s.name for s in self.sets] + [p.name for p in self.parameters] + [v.name for v in self.variables]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"names must be unique across sets, parameters and variables: {dup}")
        sets = {s.name: s for s in self.sets}
        for thing in (*self.parameters, *self.variables):
            unknown = [i for i in thing.indices if i not in sets]
            if unknown:
                raise ValueError(f"{thing.name} is indexed by undefined set(s) {unknown}")
        for p in self.parameters:
            _check_table(p, sets)
        for v in self.variables:
            if v.lower is not None and v.upper is not None and v.lower > v.upper:
                raise ValueError(f"variable {v.name}: lower bound {v.lower} exceeds upper bound {v.upper}")
        for c in self.constraints:
            unknown = [s for s in c.for_all.values() if s not in sets]
            if unknown:
                raise ValueError(f"constraint {c.name} ranges over undefined set(s) {unknown}")
        linearize(self)  # every expression parses and is linear, or this raises with the reason
        return self


def _check_table(p: Parameter, sets: dict[str, SetDef]) -> None:
    if not p.indices:
        if isinstance(p.values, dict):
            raise ValueError(f"parameter {p.name} has no indices, so its value must be a number")
        return
    if not isinstance(p.values, dict):
        raise ValueError(f"parameter {p.name} is indexed by {p.indices}: give a table of values")
    want = {_key(combo) for combo in itertools.product(*(sets[i].elements for i in p.indices))}
    missing, extra = sorted(want - set(p.values)), sorted(set(p.values) - want)
    if missing or extra:
        raise ValueError(f"parameter {p.name}: " + (f"missing values for {missing[:5]}" if missing else "")
                         + ("; " if missing and extra else "") + (f"unknown keys {extra[:5]}" if extra else ""))


def _key(combo: tuple[Element, ...]) -> str:
    return ",".join(str(e) for e in combo)


# -- linear expressions ---------------------------------------------------------------------------------------
@dataclass
class Linear:
    """``sum(coef[v] * v) + const`` over variable keys such as ``("x", ("a", 1))``."""

    coef: dict[tuple[str, tuple[Element, ...]], float]
    const: float = 0.0

    def __add__(self, other: Linear) -> Linear:
        out = dict(self.coef)
        for k, c in other.coef.items():
            out[k] = out.get(k, 0.0) + c
        return Linear(out, self.const + other.const)

    def scale(self, k: float) -> Linear:
        return Linear({v: k * c for v, c in self.coef.items()}, k * self.const)

    @property
    def is_constant(self) -> bool:
        return all(c == 0 for c in self.coef.values())


@dataclass
class Row:
    """One linear constraint ``lower <= coef · x <= upper`` (equality when both bounds are equal)."""

    name: str
    coef: dict[tuple[str, tuple[Element, ...]], float]
    lower: float
    upper: float


@dataclass
class LinearModel:
    variables: list[tuple[str, tuple[Element, ...]]]
    types: list[str]
    bounds: list[tuple[float, float]]
    objective: dict[tuple[str, tuple[Element, ...]], float]
    objective_const: float
    sense: str
    rows: list[Row]

    def var_name(self, key: tuple[str, tuple[Element, ...]]) -> str:
        name, idx = key
        return name if not idx else f"{name}[{_key(idx)}]"


class ModelError(ValueError):
    """An expression that does not parse, names something undefined, or is not linear."""


class _Compiler:
    def __init__(self, f: Formulation) -> None:
        self.sets = {s.name: s.elements for s in f.sets}
        self.params = {p.name: p for p in f.parameters}
        self.vars = {v.name: v for v in f.variables}

    def compile(self, text: str) -> ast.AST:
        try:
            return ast.parse(text, mode="eval").body
        except SyntaxError as exc:
            raise ModelError(f"cannot parse {text!r}: {exc.msg}") from None

    def linear(self, node: ast.AST, env: dict[str, Element], where: str) -> Linear:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return Linear({}, float(node.value))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            inner = self.linear(node.operand, env, where)
            return inner.scale(-1.0) if isinstance(node.op, ast.USub) else inner
        if isinstance(node, ast.BinOp):
            a, b = self.linear(node.left, env, where), self.linear(node.right, env, where)
            if isinstance(node.op, ast.Add):
                return a + b
            if isinstance(node.op, ast.Sub):
                return a + b.scale(-1.0)
            if isinstance(node.op, ast.Mult):
                if a.is_constant:
                    return b.scale(a.const)
                if b.is_constant:
                    return a.scale(b.const)
                raise ModelError(f"{where}: {ast.unparse(node)!r} multiplies two variable terms (not linear)")
            if isinstance(node.op, ast.Div):
                if not b.is_constant or b.const == 0:
                    raise ModelError(f"{where}: {ast.unparse(node)!r} divides by a variable or by zero")
                return a.scale(1.0 / b.const)
            raise ModelError(f"{where}: operator {type(node.op).__name__} is not allowed in a linear model")
        if isinstance(node, ast.Name):
            return self.name(node.id, (), env, where)
        if isinstance(node, ast.Subscript):
            if not isinstance(node.value, ast.Name):
                raise ModelError(f"{where}: only names can be indexed, got {ast.unparse(node)!r}")
            parts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            idx = tuple(self.element(p, env, where) for p in parts)
            return self.name(node.value.id, idx, env, where)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "sum" \
                and len(node.args) == 1 and isinstance(node.args[0], ast.GeneratorExp) and not node.keywords:
            return self.summation(node.args[0], env, where)
        raise ModelError(f"{where}: {ast.unparse(node)!r} is not a linear expression (numbers, parameters, "
                         "variables, + - * /, and sum(... for i in SET))")

    def element(self, node: ast.AST, env: dict[str, Element], where: str) -> Element:
        if isinstance(node, ast.Name) and node.id in env:
            return env[node.id]
        if isinstance(node, ast.Constant) and isinstance(node.value, (str, int)):
            return node.value
        raise ModelError(f"{where}: index {ast.unparse(node)!r} is neither a bound index name nor a literal")

    def name(self, name: str, idx: tuple[Element, ...], env: dict[str, Element], where: str) -> Linear:
        if name in self.vars:
            v = self.vars[name]
            self._check_index(name, v.indices, idx, where)
            return Linear({(name, idx): 1.0})
        if name in self.params:
            p = self.params[name]
            self._check_index(name, p.indices, idx, where)
            value = p.values if not p.indices else p.values[_key(idx)]  # type: ignore[index]
            return Linear({}, float(value))  # type: ignore[arg-type]
        if name in env and not idx and isinstance(env[name], (int, float)):
            return Linear({}, float(env[name]))  # a numeric set element used as a number
        raise ModelError(f"{where}: {name!r} is not a defined parameter or variable")

    def _check_index(self, name: str, sets: list[str], idx: tuple[Element, ...], where: str) -> None:
        if len(idx) != len(sets):
            raise ModelError(f"{where}: {name} takes {len(sets)} index(es) ({sets}), got {len(idx)}")
        for e, s in zip(idx, sets):
            if e not in self.sets[s]:
                raise ModelError(f"{where}: {e!r} is not an element of {s} (in {name})")

    def summation(self, gen: ast.GeneratorExp, env: dict[str, Element], where: str) -> Linear:
        total = Linear({})
        for binding in self._bindings(gen.generators, env, where):
            total = total + self.linear(gen.elt, binding, where)
        return total

    def _bindings(self, gens: list[ast.comprehension], env: dict[str, Element], where: str) -> list[dict]:
        if not gens:
            return [env]
        g = gens[0]
        if not isinstance(g.target, ast.Name) or not isinstance(g.iter, ast.Name) or g.iter.id not in self.sets:
            raise ModelError(f"{where}: sums range over a defined set: 'for i in SET', got "
                             f"{ast.unparse(g.target)} in {ast.unparse(g.iter)}")
        out = []
        for e in self.sets[g.iter.id]:
            inner = {**env, g.target.id: e}
            if all(self.condition(c, inner, where) for c in g.ifs):
                out.extend(self._bindings(gens[1:], inner, where))
        return out

    def condition(self, node: ast.AST, env: dict[str, Element], where: str) -> bool:
        """``if`` filters in sums compare index elements: ``i != j``, ``i == 'a'``, ``i < j``."""
        if isinstance(node, ast.Compare) and len(node.ops) == 1:
            a, b = self.element(node.left, env, where), self.element(node.comparators[0], env, where)
            op = type(node.ops[0])
            checks = {ast.Eq: a == b, ast.NotEq: a != b}
            if op in checks:
                return checks[op]
            if op in (ast.Lt, ast.LtE, ast.Gt, ast.GtE) and type(a) is type(b):
                return {ast.Lt: a < b, ast.LtE: a <= b, ast.Gt: a > b, ast.GtE: a >= b}[op]  # type: ignore[operator]
        raise ModelError(f"{where}: sum filters compare indices (i != j, i == 'a'), got {ast.unparse(node)!r}")


def linearize(f: Formulation) -> LinearModel:
    """The formulation as a :class:`LinearModel` (one column per variable element, one row per constraint
    instance); raises :class:`ModelError` naming the expression that does not parse or is not linear."""
    comp = _Compiler(f)
    variables, types, bounds = [], [], []
    for v in f.variables:
        lo = -math.inf if v.lower is None else v.lower
        hi = math.inf if v.upper is None else v.upper
        if v.type == "binary":
            lo, hi = max(lo, 0.0), min(hi, 1.0)
        for combo in itertools.product(*(comp.sets[i] for i in v.indices)):
            variables.append((v.name, tuple(combo)))
            types.append(v.type)
            bounds.append((lo, hi))
    obj = comp.linear(comp.compile(f.objective.expression), {}, "objective")
    rows = []
    for c in f.constraints:
        node = comp.compile(c.expression)
        if not (isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _OPS):
            raise ModelError(f"constraint {c.name}: {c.expression!r} must be one comparison with <=, >= or ==")
        names = list(c.for_all)
        for combo in itertools.product(*(comp.sets[s] for s in c.for_all.values())):
            env = dict(zip(names, combo))
            where = f"constraint {c.name}" + (f"[{_key(combo)}]" if combo else "")
            diff = comp.linear(node.left, env, where) + comp.linear(node.comparators[0], env, where).scale(-1.0)
            coef = {k: v for k, v in diff.coef.items() if v != 0}
            op = _OPS[type(node.ops[0])]
            if not coef:
                if (op == "<=" and diff.const > 1e-9) or (op == ">=" and diff.const < -1e-9) or \
                        (op == "==" and abs(diff.const) > 1e-9):
                    raise ModelError(f"{where}: {c.expression!r} is a false statement without variables")
                continue
            rhs = -diff.const
            lo, hi = {"<=": (-math.inf, rhs), ">=": (rhs, math.inf), "==": (rhs, rhs)}[op]
            rows.append(Row(where.removeprefix("constraint "), coef, lo, hi))
    return LinearModel(variables, types, bounds, {k: v for k, v in obj.coef.items() if v != 0}, obj.const,
                       f.objective.sense, rows)


def parse_formulation(data: dict[str, Any] | str) -> Formulation:
    """A :class:`Formulation` from a dict or a JSON string (e.g. a model's answer), validated."""
    if isinstance(data, str):
        return Formulation.model_validate_json(data)
    return Formulation.model_validate(data)
