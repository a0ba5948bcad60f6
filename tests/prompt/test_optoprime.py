"""OptoPrime: traced programs, the update from the trace, the sandbox for code parameters, and the prompt
optimiser end to end against scripted LMs."""

from __future__ import annotations

import json
import re

import pytest

from lmopt.lm import LM
from lmopt.modeling import SandboxLimits
from lmopt.prompt.optoprime import OptoPrime, OptoPrimePrompt
from lmopt.prompt.trace import call_code, check_code, node, op, param, render_trace

from .conftest import ToyLM

SPLIT = {"seed": 0, "n_train": 30, "n_val": 12, "n_test": 20}


@op
def scale(x: float, factor: float) -> float:
    """Multiplies x by factor."""
    return x * factor


@op
def describe(prefix: str, value: float) -> str:
    """Writes the value after the prefix."""
    return f"{prefix} {value}"


def test_trace_lists_calls_in_order_with_variables_and_feedback():
    factor = param(2.0, "factor", kind="number", description="the scale")
    prefix = param("Result:", "prefix")
    x = node(4.0, "x")
    y = scale(x, factor)
    out = describe(prefix, y)
    assert y.value == 8.0 and out.value == "Result: 8.0" and set(out.parents) == {prefix, y}
    text = render_trace(out, "the result should be 12")
    code = text.split("#Code\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert code == ["scale0 = scale(x, factor)", "describe0 = describe(prefix, scale0)"]
    assert "scale: Multiplies x by factor." in text and "x = 4.0" in text
    assert "(number) factor = 2.0    # the scale" in text and "(text) prefix = Result:" in text
    assert "#Others\nscale0 = 8.0" in text and text.endswith("#Feedback\nthe result should be 12")


def test_an_exception_becomes_an_error_node_that_propagates():
    @op
    def boom(v):
        """Fails."""
        raise RuntimeError("bad input")

    a = boom(node(1, "a"))
    b = scale(a, 2)
    assert a.error == "RuntimeError: bad input" and "not run" in b.error
    assert "(error) RuntimeError: bad input" in render_trace(b, "fix it")


def _engine(*replies):
    it = iter(replies)
    calls = []

    def engine(system, user):
        calls.append(user)
        return next(it)

    engine.calls = calls
    return engine


def test_optoprime_applies_valid_suggestions_and_reports_the_rest():
    factor = param(2.0, "factor", kind="number")
    prefix = param("Result:", "prefix")
    count = param(3, "count", kind="number")
    out = describe(prefix, scale(node(4.0, "x"), factor))
    reply = json.dumps({"reasoning": "scale by 3", "suggestion": {"factor": "3", "prefix": "Value:",
                                                                  "count": "many", "other": 1}})
    eng = _engine("no json", "```json\n" + reply + "\n```")
    rep = OptoPrime([factor, prefix, count], eng).step(out, "the result should be 12")
    assert len(eng.calls) == 2  # one re-ask after the unparseable reply
    assert rep.applied == {"factor": 3.0, "prefix": "Value:"} and factor.value == 3.0
    assert set(rep.rejected) == {"count", "other"} and count.value == 3
    assert "did not influence this output" in eng.calls[0] and "count" in eng.calls[0].split("influence")[1]
    eng2 = _engine("nothing", "still nothing")
    rep2 = OptoPrime([factor], eng2).step(out, "again")
    assert not rep2.parsed and factor.value == 3.0
    with pytest.raises(ValueError, match="feedback"):
        OptoPrime([factor], eng2).step(out, " ")
    with pytest.raises(ValueError, match="unique"):
        OptoPrime([factor, param(1.0, "factor", kind="number")], eng2)


def test_optoprime_memory_holds_past_steps():
    factor = param(1.0, "factor", kind="number")
    replies = [json.dumps({"reasoning": "", "suggestion": {"factor": v}}) for v in (2, 3, 4)]
    eng = _engine(*replies)
    opt = OptoPrime([factor], eng, memory_size=2)
    for fb in ("fb one", "fb two", "fb three"):
        opt.step(scale(node(1.0, "x"), factor), fb)
    assert "#Memory" not in eng.calls[0]
    assert "fb one" in eng.calls[1] and "fb one" in eng.calls[2] and "fb two" in eng.calls[2]
    assert len(opt.memory) == 2 and opt.memory[-1][1] == "fb three"


def test_code_parameters_run_only_in_the_sandbox(tmp_path):
    marker = tmp_path / "touched"
    evil = f"open({str(marker)!r}, 'w').write('x')\n\ndef f(v):\n    return v + 1\n"
    assert check_code(evil) == "f" and not marker.exists()  # validation compiles, never runs
    code = param("def double(v):\n    return 2 * v\n", "solver", kind="code")
    good = call_code(code, node(21, "v"))
    assert good.error is None and good.value == 42
    assert render_trace(good, "ok").split("#Code\n")[1].startswith("solver0 = solver(v)")
    runaway = param("def spin(v):\n    while True:\n        v += 1\n", "spin", kind="code")
    t = call_code(runaway, 1, limits=SandboxLimits(timeout_s=2, cpu_s=2))
    assert t.value is None and t.error and re.search(r"time|CPU|killed", t.error, re.I)
    assert "(error)" in render_trace(t, "it never returned")
    opt = OptoPrime([code], _engine(json.dumps({"suggestion": {"solver": "def a():\n  pass\ndef b():\n  pass"}})))
    rep = opt.step(good, "wrong")
    assert "exactly one function" in rep.rejected["solver"] and "double" in code.value
    with pytest.raises(ValueError, match="parse"):
        param("def broken(:\n", "bad", kind="code")


class OptoToy(ToyLM):
    def respond(self, prompt, config, j):
        self._maybe_interrupt()
        if "#Variables" in prompt:
            import hashlib
            v = int(hashlib.sha256(prompt.encode()).hexdigest()[:6], 16) % 100
            word = "carefully " if v % 2 else ""
            return json.dumps({"reasoning": "be careful", "suggestion": {"instruction": f"Answer {word}({v})."}})
        return super().respond(prompt, config, j)


def test_optoprime_prompt_end_to_end_and_resume(toy_task, tmp_path):
    res = OptoPrimePrompt(steps=6).run(toy_task, LM(OptoToy(toy_task).backend), budget=20, split=SPLIT, seed=0)
    steps = [h for h in res.history if h["kind"] == "optoprime_step"]
    assert len(steps) == 6 and all(s["applied"] == ["instruction"] for s in steps)
    assert res.val_score == max(h["val_score"] for h in res.history if h["kind"] == "eval")
    assert res.usage["optimizer"]["calls"] == 6
    kept, decisions = res.seed_prompt.instruction, []
    kept_score = res.seed_val_score
    for h in res.history:  # each minibatch runs under the kept instruction; worse ones are reverted
        if h["kind"] == "batch":
            assert h["prompt"]["instruction"] == kept
        if h["kind"] == "optoprime_validate":
            assert h["accepted"] == (h["val_score"] >= kept_score) and h["kept_score"] == kept_score
            decisions.append(h["accepted"])
            if h["accepted"]:
                kept, kept_score = h["candidate"], h["val_score"]
    assert True in decisions and False in decisions
    toy = OptoToy(toy_task)
    toy.fail_after = 15
    with pytest.raises(KeyboardInterrupt):
        OptoPrimePrompt(steps=6).run(toy_task, LM(toy.backend), budget=20, split=SPLIT, seed=0,
                                     checkpoint_dir=tmp_path)
    toy.fail_after = None
    again = OptoPrimePrompt(steps=6).run(toy_task, LM(toy.backend), budget=20, split=SPLIT, seed=0,
                                         checkpoint_dir=tmp_path)
    assert again.best_prompt == res.best_prompt and again.val_score == res.val_score
