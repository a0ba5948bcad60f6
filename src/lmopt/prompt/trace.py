"""Execution traces of Python programs with trainable parameters, for OptoPrime (Trace, arXiv 2406.16218).

Tracing works by wrapped values and decorated functions, never by rewriting the user's code:

- :func:`param` makes a trainable parameter (``kind`` ``"text"`` — a prompt, an instruction —, ``"number"``
  or ``"code"``, the source of a small Python function);
- :func:`node` wraps a constant input;
- :func:`op` decorates a function: called with nodes among its arguments, it runs on their values and
  returns a :class:`Node` whose parents are those nodes, recording the call (function name, docstring,
  inputs, output) in the trace;
- :func:`call_code` runs a ``"code"`` parameter in :func:`lmopt.modeling.sandbox.run_sandboxed` (a separate
  ``python -I`` process with CPU, memory, file and wall-clock limits and no network): model-written code is
  never executed in this process. A snippet that fails or runs away becomes an error node, its message in
  the trace, so the optimiser sees it.

:func:`render_trace` turns the sub-graph behind an output into the text OptoPrime shows its optimiser LM:
the calls in execution order, the definitions of the functions called, the constant inputs, the trainable
variables with their types and values, the intermediate values, the output and the feedback.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Callable, Sequence
from typing import Any

KINDS = ("text", "number", "code")
_ids = itertools.count()


class Node:
    """A value in a traced program."""

    def __init__(self, value: Any, name: str, *, trainable: bool = False, kind: str | None = None,
                 description: str = "", parents: Sequence[Node] = (), op: str | None = None,
                 op_doc: str = "", error: str | None = None) -> None:
        self.value, self.name, self.trainable, self.kind = value, name, trainable, kind
        self.description, self.parents, self.op, self.op_doc, self.error = description, tuple(parents), op, \
            op_doc, error
        self.order = next(_ids)

    def __repr__(self) -> str:
        return f"Node({self.name}={self.value!r})"


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a traced name must be a Python identifier (it is how the optimiser refers to it), "
                         f"got {name!r}")


def param(value: Any, name: str, *, kind: str = "text", description: str = "") -> Node:
    """A trainable parameter. ``kind="code"``: ``value`` is Python source defining one function."""
    _check_name(name)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "text" and not isinstance(value, str):
        raise TypeError(f"a text parameter holds a str, got {type(value).__name__}")
    if kind == "number" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise TypeError(f"a number parameter holds an int or float, got {type(value).__name__}")
    if kind == "code":
        check_code(value)
    return Node(value, name, trainable=True, kind=kind, description=description)


def node(value: Any, name: str) -> Node:
    """A constant input of the traced program."""
    _check_name(name)
    return Node(value, name, description="input")


def check_code(source: Any) -> str:
    """The name of the one function ``source`` defines (compiled, not run); ValueError otherwise."""
    import ast

    if not isinstance(source, str):
        raise TypeError(f"a code parameter holds Python source as a str, got {type(source).__name__}")
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ValueError(f"the code does not parse: {exc.msg} (line {exc.lineno})") from None
    funcs = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    if len(funcs) != 1:
        raise ValueError(f"a code parameter must define exactly one function at top level, found {len(funcs)}")
    return funcs[0]


def op(fn: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
    """Decorator: record calls of ``fn`` on nodes (see the module docstring). Usable as ``@op`` or
    ``@op(name=...)``."""

    def wrap(f: Callable[..., Any]) -> Callable[..., Node]:
        op_name = name or f.__name__
        doc = (f.__doc__ or "").strip()

        @functools.wraps(f)
        def traced(*args: Any, **kwargs: Any) -> Node:
            parents = [a for a in (*args, *kwargs.values()) if isinstance(a, Node)]
            vals = [a.value if isinstance(a, Node) else a for a in args]
            kw = {k: v.value if isinstance(v, Node) else v for k, v in kwargs.items()}
            bad = [p for p in parents if p.error is not None]
            if bad:  # an upstream failure propagates as an error, visible in the trace
                return Node(None, f"{op_name}{next(_ids)}", parents=parents, op=op_name, op_doc=doc,
                            error=f"not run: its input {bad[0].name} is an error ({bad[0].error})")
            try:
                out = f(*vals, **kw)
            except Exception as exc:  # noqa: BLE001 - the failure is the feedback the optimiser needs
                return Node(None, f"{op_name}{next(_ids)}", parents=parents, op=op_name, op_doc=doc,
                            error=f"{type(exc).__name__}: {exc}")
            return Node(out, f"{op_name}{next(_ids)}", parents=parents, op=op_name, op_doc=doc)

        return traced

    return wrap(fn) if fn is not None else wrap


def call_code(code: Node, *args: Any, limits: Any = None) -> Node:
    """Call the function a ``"code"`` parameter defines on ``args`` (JSON values or nodes holding them), in
    the sandbox. The result must be JSON-serialisable; a crash, a timeout or a memory overrun gives an error
    node with the sandbox's report."""
    from ..modeling.sandbox import SandboxLimits, run_sandboxed

    if not (isinstance(code, Node) and code.kind == "code"):
        raise TypeError("call_code takes a code parameter (param(source, name, kind='code'))")
    parents = [code] + [a for a in args if isinstance(a, Node)]
    vals = [a.value if isinstance(a, Node) else a for a in args]
    label = f"{code.name}_call{next(_ids)}"
    try:
        entry = check_code(code.value)
        payload = json.dumps(vals)
    except (TypeError, ValueError) as exc:
        return Node(None, label, parents=parents, op=code.name, error=str(exc))
    program = f"{code.value}\n\nimport json as _json\nresult = {entry}(*_json.loads({payload!r}))\n"
    run = run_sandboxed(program, limits or SandboxLimits(timeout_s=10, cpu_s=10, memory_mb=512))
    if not run.ok:
        return Node(None, label, parents=parents, op=code.name, error=run.error_summary(lines=4))
    return Node(run.result, label, parents=parents, op=code.name, op_doc="the trainable code parameter "
                f"{code.name}, called on its arguments in the sandbox")


def ancestors(output: Node) -> list[Node]:
    """Every node ``output`` depends on and itself, in creation (execution) order."""
    seen: dict[int, Node] = {}
    stack = [output]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen[id(n)] = n
        stack.extend(n.parents)
    return sorted(seen.values(), key=lambda n: n.order)


def _show(v: Any, limit: int) -> str:
    text = v if isinstance(v, str) else json.dumps(v, default=repr)
    return text if len(text) <= limit else text[: limit - 15] + " [...truncated]"


def render_trace(output: Node, feedback: str, *, max_value_chars: int = 600) -> str:
    """The execution trace behind ``output`` with ``feedback``, in OptoPrime's sections. Results are named
    by their function and their rank among its calls in this trace (``scale0``, ``scale1``), so the same
    program gives the same text in every run (replay and resume depend on it)."""
    nodes = ancestors(output)
    calls = [n for n in nodes if n.op is not None]
    label: dict[int, str] = {id(n): n.name for n in nodes if n.op is None}
    seen: dict[str, int] = {}
    for n in calls:
        label[id(n)] = f"{n.op}{seen.setdefault(n.op, 0)}"
        seen[n.op] += 1

    def args(n: Node) -> str:  # a code parameter is the function called, not an argument
        return ", ".join(label[id(p)] for p in n.parents if not (p.kind == "code" and p.name == n.op))

    def val(n: Node) -> str:
        return f"(error) {n.error}" if n.error is not None else _show(n.value, max_value_chars)

    defs: dict[str, str] = {}
    for n in calls:
        if n.op not in defs and n.op_doc:
            defs[n.op] = n.op_doc
    inputs = [n for n in nodes if n.op is None and not n.trainable]
    params = [n for n in nodes if n.trainable]
    others = [n for n in calls if n is not output]
    parts = ["#Code"] + ([f"{label[id(n)]} = {n.op}({args(n)})" for n in calls] or ["(no calls)"])
    parts += ["", "#Definitions"] + ([f"{k}: {v}" for k, v in defs.items()] or ["(none documented)"])
    parts += ["", "#Inputs"] + ([f"{n.name} = {val(n)}" for n in inputs] or ["(none)"])
    parts += ["", "#Variables"]
    parts += [f"({n.kind}) {n.name} = {val(n)}" + (f"    # {n.description}" if n.description else "")
              for n in params]
    parts += ["", "#Others"] + ([f"{label[id(n)]} = {val(n)}" for n in others] or ["(none)"])
    parts += ["", "#Outputs", f"{label[id(output)]} = {val(output)}", "", "#Feedback", feedback]
    return "\n".join(parts)
