"""EXPO / EXPO-ES on the embedded LLM-plays-a-bandit task, with a scripted agent whose behaviour depends on
the meta-prompt: only a meta-instruction that mentions 'greedy' makes it play the good machine (mostly)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from lmopt.lm import LM, ScriptedBackend
from lmopt.prompt.expo import EXPO, BernoulliBandit, parse_arm
from lmopt.prompt.features import HashingEmbedder


def agent(prompt: str, config, j: int) -> str:
    if "<prompt>" in prompt:  # rephrasing request
        k = (config.seed + j) % 3
        return ["<prompt>Be greedy: pick the machine with the best payout so far, reply <arm>n</arm>.</prompt>",
                "<prompt>Pick any machine you like and reply <arm>n</arm> with its number.</prompt>",
                "no tags here"][k]
    if "garbage" in prompt:
        return "hmm"
    if "greedy" in prompt:  # this meta-instruction makes the agent play the good machine
        n_past = len(re.findall(r"machine \d+ paid", prompt))
        return f"<arm>{2 if n_past % 5 else 1}</arm>"
    return "I choose <arm>0</arm>"


def _run(seed=0, **kw):
    lm = LM(ScriptedBackend(agent))
    env = BernoulliBandit((0.1, 0.1, 0.9), seed=seed)
    return EXPO(embedder=HashingEmbedder(64), n_descriptions=1, n_instructions=3, eta=0.5, train_steps=30,
                seed=seed, **kw).run(env, lm, horizon=30)


def test_expo_beats_the_fixed_meta_prompt():
    gains = []
    for seed in range(3):
        fixed, expo = _run(seed, optimize=False), _run(seed)
        assert fixed.total_reward <= 6
        assert expo.cumulative_regret[-1] < fixed.cumulative_regret[-1]
        gains.append(expo.total_reward - fixed.total_reward)
    assert np.median(gains) >= 8, gains
    assert len(expo.candidates) == 3 and expo.usage["optimizer"]["calls"] == 1
    assert any(h["kind"] == "parse_failure" for h in expo.history)  # the untagged rephrasing was logged
    # late choices concentrate on the 'greedy' meta-instruction
    greedy = [i for i, c in enumerate(expo.candidates) if "greedy" in c["instruction"]]
    assert np.mean([m in greedy for m in expo.meta_prompts[-10:]]) >= 0.7


def test_expo_es_runs_and_is_deterministic():
    a = _run(exemplar_search=True, exemplar_size=4, n_exemplar_sets=4)
    b = _run(exemplar_search=True, exemplar_size=4, n_exemplar_sets=4)
    assert a.arms == b.arms and a.meta_prompts == b.meta_prompts
    assert any(h["kind"] == "exemplar_set" for h in a.history)
    assert a.total_reward > _run(optimize=False).total_reward + 5


def test_unparseable_actions_fall_back_to_logged_random_arms():
    lm = LM(ScriptedBackend(agent))
    env = BernoulliBandit((0.5, 0.5, 0.5), seed=1)
    env.instruction = "garbage " + env.instruction
    res = EXPO(optimize=False).run(env, lm, horizon=5)
    assert res.parse_failures == 5 and len(res.arms) == 5
    assert parse_arm("I'd go with <arm> 2 </arm>", 3) == 2 and parse_arm("machine 7 or 1", 3) == 1
    assert parse_arm("none", 3) is None
    with pytest.raises(ValueError, match="means"):
        BernoulliBandit((0.5,))


def test_optimizer_budget_stops_the_rewriting_not_the_run():
    """An optimizer-role budget must not escape EXPO.run: the agent acts with the meta-prompts it has."""
    from lmopt.lm.usage import Budget

    lm = LM(ScriptedBackend(agent), budget=Budget.from_dict({"optimizer": {"calls": 0}}))
    env = BernoulliBandit((0.1, 0.1, 0.9), seed=0)
    res = EXPO(embedder=HashingEmbedder(64), n_descriptions=1, n_instructions=3, train_steps=5, seed=0).run(
        env, lm, horizon=5)
    assert len(res.rewards) == 5 and len(res.candidates) == 1
    assert "optimizer LM budget" in res.stop_reason
    assert any(h["kind"] == "budget" and h["role"] == "optimizer" for h in res.history)


def test_actions_scored_over_the_arm_numbers():
    """action_mode='score' takes the most likely arm number after '<arm>'; no action text is parsed."""
    def score(prompt, continuation):
        return 0.0 if continuation == "2" else -3.0

    def no_text(prompt, config, j):
        assert "pull" not in prompt.lower(), "actions must be scored, not generated"
        return agent(prompt, config, j)

    lm = LM(ScriptedBackend(no_text, score))
    env = BernoulliBandit((0.1, 0.1, 0.9), seed=0)
    res = EXPO(embedder=HashingEmbedder(64), n_descriptions=1, n_instructions=1, train_steps=5, seed=0,
               action_mode="score").run(env, lm, horizon=6)
    assert res.arms == [2] * 6 and res.parse_failures == 0
    with pytest.raises(ValueError, match="action_mode='score'"):
        EXPO(embedder=HashingEmbedder(64), action_mode="score").run(env, LM(ScriptedBackend(agent)), horizon=2)


def test_progress_true_prints_one_line_per_step(capsys):
    env = BernoulliBandit((0.1, 0.9), seed=0)
    lm = LM(ScriptedBackend(lambda p, c, j: "<arm>1</arm>"))
    res = EXPO(optimize=False).run(env, lm, horizon=4, progress=True)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 4
    assert lines[-1].endswith(f"4/4 fixed: meta-prompt 0 pulled arm 1, total reward {res.total_reward:g}")
    with pytest.raises(TypeError, match="progress must be"):
        EXPO(optimize=False).run(env, lm, horizon=1, progress="yes")
