"""LM façade: caching, n>1 samples, usage per role, budgets stop before spending."""

import pytest

from lmopt.lm import LM, Budget, BudgetExceeded, GenerationConfig, ScriptedBackend, UsageMeter
from lmopt.lm.cache import CallCache


def echo_backend(**kw):
    return ScriptedBackend(lambda p, c, j: f"{p.split()[-1]} sample{j} t{c.temperature}",
                           score_fn=lambda p, c: -float(len(c)), **kw)


def test_cache_hits_cost_no_backend_calls(tmp_path):
    b = echo_backend()
    cache = CallCache(tmp_path / "c.sqlite")
    lm = LM(b, cache=cache)
    first = lm.generate(["say a", "say b"])
    assert b.calls == 2 and not first[0][0].cached
    again = LM(b, cache=CallCache(tmp_path / "c.sqlite")).generate(["say a", "say b"])
    assert b.calls == 2
    assert [r[0].text for r in again] == [r[0].text for r in first]
    assert all(r[0].cached for r in again)


def test_n_samples_are_distinct_and_cached_per_index(tmp_path):
    b = echo_backend()
    lm = LM(b, cache=CallCache(tmp_path / "c.sqlite"))
    cfg = GenerationConfig(temperature=0.7, n=3, seed=5)
    out = lm.generate("say x", cfg)[0]
    assert [c.text for c in out] == ["x sample0 t0.7", "x sample1 t0.7", "x sample2 t0.7"]
    assert len(lm.cache) == 3
    assert [c.text for c in lm.generate("say x", cfg)[0]] == [c.text for c in out] and b.calls == 1
    # another seed is another request
    lm.generate("say x", GenerationConfig(temperature=0.7, n=3, seed=6))
    assert b.calls == 2


def test_duplicate_prompts_in_one_batch_call_backend_once():
    b = echo_backend()
    out = LM(b).generate(["say q", "say q", "say r", "say q"])
    assert b.calls == 2
    assert [o[0].text for o in out] == ["q sample0 t0.0", "q sample0 t0.0", "r sample0 t0.0", "q sample0 t0.0"]


def test_budget_stops_before_the_call_and_spends_nothing():
    b = echo_backend()
    lm = LM(b, budget=Budget.from_dict({"task": {"calls": 3}}))
    lm.generate(["say 1", "say 2"])
    with pytest.raises(BudgetExceeded, match=r"task calls would reach 4 \(limit 3\)") as ei:
        lm.generate(["say 3", "say 4"])
    assert ei.value.limit == "calls" and b.calls == 2
    assert lm.usage()["task"]["calls"] == 2
    lm.generate(["say 3"])  # exactly at the limit is allowed
    assert lm.usage()["task"]["calls"] == 3


def test_token_budget_uses_worst_case_completion_length():
    b = echo_backend()
    lm = LM(b, budget=Budget.from_dict({"total": {"completion_tokens": 100}}))
    with pytest.raises(BudgetExceeded, match="completion_tokens"):
        lm.generate(["say a", "say b"], GenerationConfig(max_new_tokens=64))
    assert b.calls == 0
    lm.generate(["say a"], GenerationConfig(max_new_tokens=64))
    assert b.calls == 1


def test_usage_is_accounted_per_role_and_shared_meter_covers_total():
    meter = UsageMeter(Budget.from_dict({"total": {"calls": 3}}))
    task_lm, opt_lm = LM(echo_backend(), meter=meter), LM(echo_backend(name="other"), meter=meter)
    task_lm.score("p", ["a", "bb"], role="task")
    opt_lm.chat([{"role": "user", "content": "propose x"}], role="optimizer")
    rep = meter.report()
    assert rep["task"]["calls"] == 2 and rep["optimizer"]["calls"] == 1 and rep["total"]["calls"] == 3
    with pytest.raises(BudgetExceeded, match="total calls"):
        opt_lm.generate(["say y"], role="judge")


def test_score_values_pairing_and_errors():
    lm = LM(echo_backend())
    s = lm.score("prompt", [" a", " bbb"])
    assert [x.logprob for x in s] == [-2.0, -4.0]
    with pytest.raises(ValueError, match="as many prompts as continuations"):
        lm.score(["a", "b"], ["x", "y", "z"])
    with pytest.raises(NotImplementedError, match="cannot score"):
        LM(ScriptedBackend(lambda p, c, j: "x")).score("a", "b")


@pytest.mark.parametrize("kwargs, msg", [
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"temperature": -1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"n": 2}, "temperature > 0"),
    ({"stop": "x"}, "stop"),
])
def test_generation_config_rejects_bad_values(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        GenerationConfig(**kwargs)


def test_int_and_float_temperatures_share_a_key(tmp_path):
    b = echo_backend()
    lm = LM(b, cache=CallCache(tmp_path / "c.sqlite"))
    lm.generate("say z", GenerationConfig(temperature=1, seed=1))
    lm.generate("say z", GenerationConfig(temperature=1.0, seed=1))
    assert b.calls == 1


def test_bad_roles_messages_and_constructor_args():
    lm = LM(echo_backend())
    with pytest.raises(ValueError, match="role must be a non-empty string"):
        lm.generate("x", role="")
    with pytest.raises(ValueError, match="role 'robot'"):
        lm.chat([{"role": "robot", "content": "hi"}])
    with pytest.raises(TypeError, match="Backend"):
        LM(object())
    with pytest.raises(ValueError, match="budget limit calls"):
        Budget.from_dict({"task": {"calls": -1}})
    with pytest.raises(ValueError, match="unknown budget limit"):
        Budget.from_dict({"task": {"cals": 1}})


def test_chunks_are_cached_before_a_later_failure(tmp_path):
    def respond(p, c, j):
        if "boom" in p:
            raise RuntimeError("server down")
        return "ok"

    b = ScriptedBackend(respond)
    lm = LM(b, cache=CallCache(tmp_path / "c.sqlite"), chunk_size=2)
    with pytest.raises(RuntimeError, match="server down"):
        lm.generate(["a", "b", "boom", "c"])
    assert len(lm.cache) == 2  # the first chunk was paid for and kept
    assert lm.usage()["task"]["calls"] == 2
