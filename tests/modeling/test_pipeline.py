"""The modelling pipeline against a scripted model: strategies, self-debug, self-consistency, budgets."""

from __future__ import annotations

import json

import pytest
from test_formulation import FURNITURE

from lmopt.lm import LM, Budget, BudgetExceeded, ScriptedBackend
from lmopt.modeling.pipeline import OptimizationModeler, extract_code, extract_json
from lmopt.modeling.sandbox import SandboxLimits

PROBLEM = "A shop makes chairs (45 profit) and tables (80 profit) from 400 wood and 450 labour hours..."
CODE = """```python
import highspy
h = highspy.Highs()
h.setOptionValue("output_flag", False)
inf = highspy.kHighsInf
h.addVars(2, [0, 0], [inf, inf])
h.changeColsIntegrality(2, [0, 1], [highspy.HighsVarType.kInteger] * 2)
h.changeColsCost(2, [0, 1], [-45, -80])
h.addRows(2, [-inf, -inf], [400, 450], 4, [0, 2, 4], [0, 1, 0, 1], [5, 20, 10, 15])
h.run()
result = {"status": h.modelStatusToString(h.getModelStatus()).lower(),
          "objective": -h.getInfo().objective_function_value}
```"""


def scripted(replies):
    """A model that answers the k-th chat of a conversation with replies[k] (by the number of turns)."""
    seen = []

    def respond(prompt, config, j):
        seen.append(prompt)
        turn = prompt.count("<|user|>") - 1
        r = replies[min(turn, len(replies) - 1)]
        return r(config) if callable(r) else r

    return ScriptedBackend(respond), seen


def test_formulation_strategy_with_self_debug_after_a_parse_error():
    backend, seen = scripted(["I think the answer is {not json", "```json\n" + json.dumps(FURNITURE) + "\n```"])
    res = OptimizationModeler(LM(backend)).solve(PROBLEM)
    assert res.objective == pytest.approx(2200) and res.status == "optimal" and res.executed
    first, second = res.samples[0]
    assert first.stage == "parse" and "does not parse" in first.error
    assert second.stage == "ok" and res.rounds == 2
    assert "could not be used: the JSON object in the answer does not parse" in seen[1]


def test_an_infeasible_formulation_is_fed_back_and_revised():
    bad = json.loads(json.dumps(FURNITURE))
    bad["constraints"].append({"name": "min_chairs", "expression": "x['chairs'] >= 500"})
    backend, seen = scripted([json.dumps(bad), json.dumps(FURNITURE)])
    res = OptimizationModeler(LM(backend)).solve(PROBLEM)
    assert [a.stage for a in res.samples[0]] == ["status", "ok"] and res.objective == pytest.approx(2200)
    assert "The model you wrote is infeasible" in seen[1]


def test_validation_errors_name_the_field():
    bad = json.loads(json.dumps(FURNITURE))
    bad["objective"]["expression"] = "sum(x[p] * x[p] for p in P)"
    backend, seen = scripted([json.dumps(bad)])
    res = OptimizationModeler(LM(backend), debug_rounds=1).solve(PROBLEM)
    assert res.objective is None and not res.executed and len(res.samples[0]) == 2
    assert "multiplies two variable terms" in seen[1]


def test_self_debug_context_keeps_only_the_latest_round_unless_asked():
    replies = ["first {bad", "second {bad", "third {bad", "```json\n" + json.dumps(FURNITURE) + "\n```"]
    calls = []

    def respond(prompt, config, j):
        calls.append(prompt)
        return replies[len(calls) - 1]

    res = OptimizationModeler(LM(ScriptedBackend(respond)), debug_rounds=3).solve(PROBLEM)
    assert res.objective == pytest.approx(2200)
    assert "second {bad" in calls[2] and "first {bad" not in calls[2]  # the conversation does not grow
    assert calls[3].count("<|user|>") == 2
    calls.clear()
    OptimizationModeler(LM(ScriptedBackend(respond)), debug_rounds=3, debug_context="full").solve(PROBLEM)
    assert "first {bad" in calls[2] and calls[3].count("<|user|>") == 4
    with pytest.raises(ValueError, match="debug_context"):
        OptimizationModeler(LM(ScriptedBackend(respond)), debug_context="all")


def test_code_strategy_runs_in_the_sandbox_and_debugs_a_crash():
    backend, seen = scripted(["```python\nx = 1 / 0\n```", CODE])
    res = OptimizationModeler(LM(backend), strategy="code", sandbox=SandboxLimits(timeout_s=20)).solve(PROBLEM)
    assert res.objective == pytest.approx(2200) and [a.stage for a in res.samples[0]] == ["run", "ok"]
    assert "ZeroDivisionError" in seen[1]


def test_a_program_without_a_result_or_with_a_fake_line_is_not_an_answer():
    fake = "```python\nprint('result = {\"status\": \"optimal\", \"objective\": 1}')\n```"
    backend, _ = scripted([fake])
    res = OptimizationModeler(LM(backend), strategy="expert", debug_rounds=0).solve(PROBLEM)
    assert res.objective is None and res.samples[0][0].stage == "run"
    assert "did not set result" in res.samples[0][0].error


def test_self_consistency_votes_over_samples():
    def by_seed(config):
        d = json.loads(json.dumps(FURNITURE))
        if config.seed == 1:  # one of three samples models the profit wrongly
            d["parameters"][0]["values"] = {"chairs": 1, "tables": 1}
        return json.dumps(d)

    backend, _ = scripted([by_seed])
    res = OptimizationModeler(LM(backend), samples=3, temperature=0.7).solve(PROBLEM)
    finals = [s[-1].objective for s in res.samples]
    assert finals[1] != pytest.approx(2200) and res.objective == pytest.approx(2200)


def test_every_call_goes_through_the_lm_budget():
    backend, _ = scripted(["no json here"])
    lm = LM(backend, budget=Budget.from_dict({"task": {"calls": 2}}))
    with pytest.raises(BudgetExceeded):
        OptimizationModeler(lm, debug_rounds=3).solve(PROBLEM)
    assert lm.usage()["task"]["calls"] == 2


def test_reply_extraction():
    assert extract_json('Here: {"a": {"b": "}"}, "c": [1]} and more {"d": 2}') == {"a": {"b": "}"}, "c": [1]}
    assert extract_json('{"x": 1}\n```json\n{"y": 2}\n```') == {"y": 2}  # the fenced block wins
    with pytest.raises(ValueError, match="no JSON object"):
        extract_json("nothing")
    assert extract_code("draft:\n```python\nx = 1\n```\nfinal:\n```python\nx = 2\n```") == "x = 2\n"
    with pytest.raises(ValueError, match="no ```python block"):
        extract_code("x = 1")


def test_bad_settings():
    lm = LM(ScriptedBackend(lambda p, c, j: ""))
    with pytest.raises(ValueError, match="unknown strategy"):
        OptimizationModeler(lm, strategy="magic")
    with pytest.raises(ValueError, match="needs temperature > 0"):
        OptimizationModeler(lm, samples=3)
    with pytest.raises(ValueError, match="non-empty description"):
        OptimizationModeler(lm).solve("  ")
