"""LLAMBOSampler against the released LLAMBO rules (transcribed below) and end to end with a scripted LM."""

from __future__ import annotations

import math
import random
import re

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution as F
from optuna.distributions import IntDistribution as I

from lmopt.bo import LLAMBOSampler, TaskContext, expected_improvement, target_value, top_labels
from lmopt.bo.prompts import acquisition_prompt, regression_prompt
from lmopt.lm import LM, Budget, BudgetExceeded, Limits, ScriptedBackend

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = {"x": F(-2.0, 2.0), "k": I(1, 5)}
CTX = TaskContext("toy model", "score")


# -- the released rules, transcribed ------------------------------------------------------------------
def released_target(values, alpha, lower_is_better, max_loops=50):
    """LLM_ACQ.get_candidate_points: the desired value, the bound thresholds fixed at 1 (accuracy) and 0
    (error); None where the released loop never ends."""
    if alpha == 0:
        alpha = -1e-3
    spread = abs(max(values) - min(values))
    if spread == 0:
        spread = 0.1 * abs(max(values))
    steps = [0.1, 1e-2, 1e-3, -1e-3, -1e-2, 1e-1]
    sign = -1 if lower_is_better else 1
    best = min(values) if lower_is_better else max(values)
    t = best + sign * alpha * spread
    loops = 0
    while (t <= 0.00001) if lower_is_better else (t >= 0.9999):
        loops += 1
        if loops > max_loops:
            return None
        for a in steps:
            if a < alpha:
                alpha = a
                t = best + sign * alpha * spread
                break
    return t


def released_labels(values, top_pct, lower_is_better):
    """generative_sm_utils.prepare_configurations: the top-pct labels of the observed values."""
    v = np.asarray(values)
    if lower_is_better:
        return (v < np.percentile(v, int(top_pct * 100))).astype(int).tolist()
    return (v > np.percentile(v, int(100 - top_pct * 100))).astype(int).tolist()


def released_choice(preds, best, lower_is_better):
    """LLM_DIS_SM._predict + select_query_point: index of the candidate with the highest EI."""
    from scipy.stats import norm

    preds = np.asarray(preds, dtype=float)
    with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("ignore")
        m, s = np.nanmean(preds, axis=1), np.nanstd(preds, axis=1)
        m[np.isnan(m)] = np.nanmean(m)
        s[np.isnan(s)] = np.nanmean(s)
    s[s < 1e-5] = 1e-5
    delta = -(m - best) if lower_is_better else m - best
    z = delta / s
    return int(np.argmax(np.where(s > 0, delta * norm.cdf(z) + s * norm.pdf(z), 0)))


@pytest.mark.parametrize("lower", [False, True])
def test_target_matches_the_released_rule_on_random_histories(lower):
    rng = np.random.default_rng(0)
    hung = 0
    for _ in range(400):
        n = int(rng.integers(1, 8))
        scale = rng.choice([1.0, 0.01])
        values = list((rng.uniform(0.9, 1.0, n) if not lower else rng.uniform(0, 0.05, n)) * scale
                      if rng.random() < 0.5 else rng.uniform(0, 1, n))
        if rng.random() < 0.1:
            values = [values[0]] * n
        if rng.random() < 0.1:  # a perfect score already found, nearly no spread
            values = [0.0, float(rng.uniform(0, 1e-3))] if lower else [1.0, 1.0 - float(rng.uniform(0, 0.01))]
        alpha = float(rng.choice([0.1, 0.0, -0.2, 0.5]))
        ref = released_target(values, alpha, lower)
        ours, _ = target_value(values, alpha, maximize=not lower, bounds=(0.0, None) if lower else (None, 1.0))
        if ref is None:  # the released loop never ends: lmopt stops at the last step of α
            hung += 1
            best = min(values) if lower else max(values)
            spread = abs(max(values) - min(values)) or 0.1 * abs(max(values))
            last = -0.01 if alpha > -0.01 else alpha  # α stepped down to the list's end, or never moved
            assert ours == pytest.approx(best + (-1 if lower else 1) * last * spread)
        else:
            assert ours == pytest.approx(ref, rel=1e-12, abs=1e-15)
    assert hung > 0  # the sample covers the released code's endless loop


def test_target_is_unbounded_without_score_bounds_and_alpha_zero_is_never_the_best():
    assert target_value([0.5, 0.99], 0.1, maximize=True) == (pytest.approx(1.039), 0.1)
    t, a = target_value([0.5, 0.99], 0.0, maximize=True)
    assert a == -1e-3 and t < 0.99


def test_labels_match_the_released_percentile_rule():
    rng = np.random.default_rng(1)
    for _ in range(100):
        v = list(rng.normal(size=int(rng.integers(2, 30))).round(2))
        for lower in (False, True):
            assert top_labels(v, 0.25, maximize=not lower) == released_labels(v, 0.25, lower)
    assert top_labels([1, 2, 3, 4, 5, 6, 7, 8], 0.25, maximize=True) == [0, 0, 0, 0, 0, 0, 1, 1]


def test_expected_improvement_equals_a_monte_carlo_estimate():
    rng = np.random.default_rng(2)
    mean, std, best = np.array([0.3, 0.5, 0.9]), np.array([0.2, 0.05, 0.4]), 0.6
    draws = rng.normal(mean, std, size=(400_000, 3))
    mc_max = np.maximum(draws - best, 0).mean(0)
    mc_min = np.maximum(best - draws, 0).mean(0)
    assert expected_improvement(mean, std, best, maximize=True) == pytest.approx(mc_max, rel=0.02, abs=1e-4)
    assert expected_improvement(mean, std, best, maximize=False) == pytest.approx(mc_min, rel=0.02, abs=1e-4)


# -- the sampler end to end ---------------------------------------------------------------------------
def objective(trial):
    return -(trial.suggest_float("x", -2, 2) - 1) ** 2 - 0.1 * trial.suggest_int("k", 1, 5)


def _last_config(prompt):
    tail = prompt.rsplit("Hyperparameter configuration:", 1)[1].split("\n")[0]
    return {k: float(v) for k, v in re.findall(r"(\w+) (?:is|:) ([-\d.]+)", tail.replace(":", " :"))}


def _surrogate_value(cfg, j):
    """The scripted surrogate's belief: high near x = 1, spread grows with k."""
    return -(cfg["x"] - 1) ** 2 + (j % 3 - 1) * 0.05 * cfg["k"]


def make_respond(proposals=None, warm=None, surrogate=_surrogate_value, log=None):
    def respond(prompt, config, j):
        if log is not None:
            log.append((prompt, config.stop))
        if "diverse configurations" in prompt:
            return warm
        if "Suggest one configuration" in prompt:
            if proposals is not None:
                return proposals(config, j)
            r = random.Random(config.seed * 31 + j)
            return f"## x: {r.uniform(-2.5, 2.5):.3f}, k: {r.randint(0, 6)} ##"
        return f"## {surrogate(_last_config(prompt), j):.4f} ##"
    return respond


def run_study(sampler, n=9, direction="maximize"):
    study = optuna.create_study(direction=direction, sampler=sampler)
    study.optimize(objective if direction == "maximize" else (lambda t: -objective(t)), n_trials=n)
    return study


def test_the_chosen_candidate_is_the_released_rule_s_choice_from_the_same_answers():
    def surrogate(cfg, j):
        v = _surrogate_value(cfg, j)
        if cfg["k"] == 3 and j == 0:
            return float("nan")  # an unreadable answer ("## nan ##") must be skipped, not averaged
        return v

    lm = LM(ScriptedBackend(make_respond(surrogate=surrogate)))
    sampler = LLAMBOSampler(lm, CTX, SPACE, warm_start=False, n_surrogate_samples=4, seed=3)
    study = run_study(sampler, n=8)
    for t in study.trials[5:]:
        stats = t.system_attrs["llambo"]
        assert stats["phase"] == "llambo" and stats["accepted"] >= 1
        assert SPACE["x"].low <= t.params["x"] <= SPACE["x"].high
    # replay the last trial's candidates through the released aggregation
    last = study.trials[-1].system_attrs["llambo"]
    hist = [(tr.params, tr.value) for tr in study.trials[:-1]]
    best = max(v for _, v in hist)
    cands = _candidates_of(lm, study, hist, last)
    preds = [[surrogate({"x": round(c["x"], 2), "k": c["k"]}, j) for _ in range(2) for j in range(4)]
             for c in cands]
    ref = released_choice(preds, best, lower_is_better=False)
    assert last["chosen"] == ref
    assert study.trials[-1].params == cands[ref]


def _candidates_of(lm, study, hist, stats):
    """Re-derive the accepted candidates of the last trial from the cached suggestion answers."""
    from lmopt.bo import parse_config
    from lmopt.bo.space import config_key

    seen = {config_key(p, SPACE) for p, _ in hist}
    out = []
    # the sampler's own parse of its own proposals, re-run on the same scripted answers
    for rnd in range(stats["rounds"]):
        cfg_seed = _seed(study, len(hist), rnd)
        for j in range(5):
            r = random.Random(cfg_seed * 31 + j)
            text = f"## x: {r.uniform(-2.5, 2.5):.3f}, k: {r.randint(0, 6)} ##"
            for _ in range(2):  # both templates get the same scripted answer
                p = parse_config(text, SPACE).params
                if p is not None and config_key(p, SPACE) not in seen:
                    seen.add(config_key(p, SPACE))
                    out.append(p)
    return out


def _seed(study, trial_number, rnd):
    return int(np.random.SeedSequence([3, trial_number + 1, rnd, 1]).generate_state(1)[0])


def test_invalid_suggestions_never_reach_the_objective():
    seen = []

    def objective_checked(trial):
        x, k = trial.suggest_float("x", -2, 2), trial.suggest_int("k", 1, 5)
        seen.append((x, k))
        return -(x - 1) ** 2

    bad = lambda config, j: ["## x: 7.5, k: 2 ##", "## x: 0.5, k: 2.5 ##", "no idea", "## x: 0.1 ##"][j % 4]  # noqa: E731
    lm = LM(ScriptedBackend(make_respond(proposals=bad)))
    sampler = LLAMBOSampler(lm, CTX, SPACE, warm_start=False, seed=0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective_checked, n_trials=7)
    assert all(-2 <= x <= 2 and 1 <= k <= 5 for x, k in seen)
    stats = study.trials[5].system_attrs["llambo"]
    assert stats["phase"] == "random_fallback" and stats["rounds"] == 4 and stats["proposals"] == 40
    assert stats["rejected"] == {"out of space": 24, "unparseable": 8, "missing": 8}
    assert sampler.counts["random_fallback"] == 2 and sampler.counts["rejected: out of space"] == 48


def test_already_observed_points_are_rejected_and_rounds_stop_at_min_candidates():
    def proposals(config, j):
        return "## x: 0.50, k: 2 ##" if j < 3 else f"## x: {0.1 * j:.2f}, k: 3 ##"

    lm = LM(ScriptedBackend(make_respond(proposals=proposals)))
    sampler = LLAMBOSampler(lm, CTX, SPACE, warm_start=False, seed=0, min_candidates=2)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.enqueue_trial({"x": 0.5, "k": 2})
    study.optimize(objective, n_trials=6)
    stats = study.trials[5].system_attrs["llambo"]
    assert stats["rounds"] == 1
    assert stats["rejected"] == {"already observed": 6, "duplicate": 2}
    assert stats["accepted"] == 2 and study.trials[5].params in ({"x": 0.3, "k": 3}, {"x": 0.4, "k": 3})


def test_warm_start_uses_the_lm_s_configurations_and_replaces_invalid_ones():
    warm = ("[{'x': 0.25, 'k': 2}, {'x': 9.0, 'k': 2}, {'x': -1.5, 'k': 4}, {\"x\": 0.25, \"k\": 2}, "
            "{'x': 1.0, 'k': 1}]")
    lm = LM(ScriptedBackend(make_respond(warm=warm)))
    sampler = LLAMBOSampler(lm, CTX, SPACE, seed=0)
    study = run_study(sampler, n=6)
    assert [t.params for t in study.trials[:3]] == [{"x": 0.25, "k": 2}, {"x": -1.5, "k": 4}, {"x": 1.0, "k": 1}]
    first = study.trials[0].system_attrs["llambo"]
    assert first["phase"] == "warm_start" and first["accepted"] == 3
    assert first["rejected"] == {"out of space": 1, "duplicate": 1}
    assert [t.system_attrs["llambo"]["phase"] for t in study.trials[3:5]] == ["random", "random"]
    assert study.trials[5].system_attrs["llambo"]["phase"] == "llambo"


def test_without_a_search_space_the_first_trial_is_random_and_the_rest_use_the_seen_space():
    lm = LM(ScriptedBackend(make_respond()))
    sampler = LLAMBOSampler(lm, CTX, n_initial=2, seed=0)
    study = run_study(sampler, n=4)
    assert "llambo" not in study.trials[0].system_attrs  # nothing known yet: optuna's independent sampling
    assert [t.system_attrs["llambo"]["phase"] for t in study.trials[1:]] == ["random", "llambo", "llambo"]


def test_reproducible_and_every_call_goes_through_the_cache(tmp_path):
    from lmopt.lm import CallCache

    backend = ScriptedBackend(make_respond())
    lm = LM(backend, cache=CallCache(tmp_path / "c.sqlite"))
    a = run_study(LLAMBOSampler(lm, CTX, SPACE, warm_start=False, seed=5), n=8)
    calls = backend.calls
    b = run_study(LLAMBOSampler(lm, CTX, SPACE, warm_start=False, seed=5), n=8)
    assert [t.params for t in a.trials] == [t.params for t in b.trials]
    assert backend.calls == calls  # the second study was answered entirely from the cache
    c = run_study(LLAMBOSampler(lm, CTX, SPACE, warm_start=False, seed=6), n=8)
    assert [t.params for t in c.trials] != [t.params for t in a.trials]


def test_the_budget_is_enforced_before_a_call():
    lm = LM(ScriptedBackend(make_respond()), budget=Budget(per_role={"optimizer": Limits(calls=3)}))
    study = optuna.create_study(direction="maximize",
                                sampler=LLAMBOSampler(lm, CTX, SPACE, warm_start=False, seed=0))
    with pytest.raises(BudgetExceeded):
        study.optimize(objective, n_trials=8)
    assert lm.usage()["optimizer"]["calls"] <= 3


def test_minimising_asks_for_a_target_below_the_best():
    lm = LM(ScriptedBackend(make_respond(surrogate=lambda c, j: (c["x"] - 1) ** 2)))
    study = run_study(LLAMBOSampler(lm, CTX, SPACE, warm_start=False, seed=0, jitter=False), n=6,
                      direction="minimize")
    stats = study.trials[5].system_attrs["llambo"]
    vals = [t.value for t in study.trials[:5]]
    assert stats["target"] == pytest.approx(min(vals) - 0.1 * (max(vals) - min(vals)))
    assert stats["targets"] == [stats["target"]] * 2


def test_jittered_targets_lie_between_the_target_and_the_best():
    lm = LM(ScriptedBackend(make_respond()))
    study = run_study(LLAMBOSampler(lm, CTX, SPACE, warm_start=False, seed=0), n=8)
    for t in study.trials[5:]:
        s = t.system_attrs["llambo"]
        best = max(x.value for x in study.trials[: t.number])
        assert all(min(best, s["target"]) <= v <= max(best, s["target"]) for v in s["targets"])
        assert len(set(s["targets"])) == 2


def test_generative_surrogate_picks_the_highest_probability_of_being_good():
    def score_fn(prompt, continuation):
        x = _last_config(prompt)["x"]
        good = math.exp(-((x - 1) ** 2) * 4)  # the scripted model believes x near 1 is good
        return math.log(good if continuation == " ## 1" else 1 - good + 1e-9)

    lm = LM(ScriptedBackend(make_respond(), score_fn=score_fn))
    study = run_study(LLAMBOSampler(lm, CTX, SPACE, surrogate="generative", warm_start=False, seed=1), n=8)
    for t in study.trials[5:]:
        s = t.system_attrs["llambo"]
        assert s["surrogate_answers"] == 2 * 2 * s["accepted"]
        assert s["chosen_score"] == pytest.approx(math.exp(-((round(t.params["x"], 2) - 1) ** 2) * 4), rel=1e-6)


def test_generative_sampling_estimate_for_backends_without_log_probs():
    def respond(prompt, config, j):
        if "Classification:" in prompt.rsplit("\n", 1)[-1]:
            return " ## 1 ##" if _last_config(prompt)["x"] > 0 and j % 2 == 0 else " ## 0 ##"
        return make_respond()(prompt, config, j)

    lm = LM(ScriptedBackend(respond))
    study = run_study(LLAMBOSampler(lm, CTX, SPACE, surrogate="generative", generative_estimate="sample",
                                    warm_start=False, seed=1), n=7)
    s = study.trials[6].system_attrs["llambo"]
    assert s["chosen_score"] == pytest.approx(3 / 5) and study.trials[6].params["x"] > 0


def test_prompts_hold_the_history_in_the_released_per_template_order_and_the_candidate_last():
    hist = [({"x": 0.1 * i, "k": 1}, float(i)) for i in range(6)]
    for template in (0, 1):
        text = acquisition_prompt(CTX, SPACE, hist, 7.123456789, template)[1]["content"]
        order = [int(float(v)) for v in re.findall(r"Performance: ([\d.]+)\n", text)]
        assert order[:-1] == list(np.random.RandomState(template).permutation(6))
        assert text.endswith("Performance: 7.123457\nHyperparameter configuration:")
        reg = regression_prompt(CTX, SPACE, hist, {"x": 1.5, "k": 3}, template)[1]["content"]
        assert reg.endswith("Hyperparameter configuration: x is 1.50, k is 3\nPerformance: ")
        assert "Performance: ## 3.000000 ##" in reg


def test_completion_format_sends_raw_prompts_that_stop_at_the_line_end():
    log = []
    lm = LM(ScriptedBackend(make_respond(log=log)))
    run_study(LLAMBOSampler(lm, CTX, SPACE, warm_start=False, prompt_format="completion", seed=0), n=6)
    assert log and not any("<|" in p for p, _ in log)  # no chat rendering
    assert all(p.startswith("You are an AI assistant") and stop == ("\n",) for p, stop in log)
    chat_log = []
    lm = LM(ScriptedBackend(make_respond(log=chat_log)))
    run_study(LLAMBOSampler(lm, CTX, SPACE, warm_start=False, seed=0), n=6)
    assert all(p.startswith("<|system|>") and stop == () for p, stop in chat_log)


def test_bad_arguments_are_refused_with_the_fix():
    lm = LM(ScriptedBackend(make_respond()))
    with pytest.raises(ValueError, match="unknown surrogate"):
        LLAMBOSampler(lm, CTX, SPACE, surrogate="gp")
    with pytest.raises(ValueError, match="n_candidates .* at least n_templates"):
        LLAMBOSampler(lm, CTX, SPACE, n_candidates=1, n_templates=2)
    with pytest.raises(TypeError, match="TaskContext"):
        LLAMBOSampler(lm, "a model", SPACE)
    with pytest.raises(ValueError, match="prompt_format"):
        LLAMBOSampler(lm, CTX, SPACE, prompt_format="json")
    with pytest.raises(ValueError, match="TaskContext.task"):
        TaskContext("m", "acc", task="ranking")
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=LLAMBOSampler(lm, CTX, SPACE))
    with pytest.raises(ValueError, match="multi-objective"):
        study.optimize(lambda t: (t.suggest_float("x", -2, 2), t.suggest_int("k", 1, 5)), n_trials=1)
