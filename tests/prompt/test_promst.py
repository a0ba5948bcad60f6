"""PROMST and the embedded multi-step task, against scripted agents and optimisers."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from lmopt.data import load_task, number_walk
from lmopt.lm import LM, ScriptedBackend
from lmopt.prompt import evaluate_prompt
from lmopt.prompt.features import HashingEmbedder
from lmopt.prompt.promst import PROMST, RidgeScoreModel

SPLIT = {"seed": 0, "n_train": 10, "n_val": 10, "n_test": 10}


def _state(prompt):
    start, target = map(int, re.search(r"Start: (-?\d+)\. Target: (-?\d+)\.", prompt).groups())
    value = int(re.findall(r"Current number: (-?\d+)\.", prompt)[-1])
    return start, target, value


def agent(policy):
    def respond(prompt, config, j):
        return policy(prompt, *_state(prompt))
    return LM(ScriptedBackend(respond))


def toward(prompt, start, target, value):
    d = target - value
    return f"add {min(9, d)}" if d > 0 else f"subtract {min(9, -d)}"


def test_number_walk_episodes_score_and_categorise():
    task = number_walk(size=8, seed=0)
    exs = task.examples
    good = evaluate_prompt(agent(toward), task, "x", exs)
    assert good.score == 1.0 and good.mode == "episodes"
    eps = [json.loads(p) for p in good.predictions]
    assert all(e["category"] == "success" and e["feedback"] == "" for e in eps)
    assert all(e["steps"] == -(-abs(int(x.meta["target"]) - int(x.meta["start"])) // 9) for e, x in zip(eps, exs))
    bad = [json.loads(p) for p in evaluate_prompt(agent(lambda *a: "jump"), task, "x", exs).predictions]
    assert {e["category"] for e in bad} == {"format"} and "'jump'" in bad[0]["feedback"]
    big = [json.loads(p) for p in evaluate_prompt(agent(lambda *a: "add 12"), task, "x", exs).predictions]
    assert {e["category"] for e in big} == {"invalid"}
    # always "add 1": away from a lower target until the step limit; towards a far higher one, not reached
    res = evaluate_prompt(agent(lambda *a: "add 1"), task, "x", exs)
    cats = [json.loads(p)["category"] for p in res.predictions]
    assert set(cats) == {"step_limit"}
    for x, s in zip(exs, res.per_example):
        st, tg = int(x.meta["start"]), int(x.meta["target"])
        assert s == pytest.approx(max(0.0, 1 - abs(tg - (st + 6)) / abs(tg - st)))
    flip = iter(["add 3", "subtract 3"] * 100)
    loop = [json.loads(p) for p in evaluate_prompt(agent(lambda *a: next(flip)), task, "x", exs[:1]).predictions]
    assert loop[0]["category"] == "loop" and loop[0]["steps"] == 2
    with pytest.raises(ValueError, match="instruction only"):
        from lmopt.prompt import Prompt
        evaluate_prompt(agent(toward), task, Prompt("x", (exs[0],)), exs)
    assert load_task("number_walk", size=5).name == "number_walk"


def test_ridge_score_model_learns_a_word():
    texts = [f"prompt {i} {'careful' if i % 2 else 'hasty'}" for i in range(20)]
    scores = [0.9 if i % 2 else 0.1 for i in range(20)]
    m = RidgeScoreModel(HashingEmbedder(256).encode, alpha=0.1).fit(texts, scores)
    p = m.predict(["prompt 99 careful", "prompt 99 hasty"])
    assert p[0] > 0.6 > 0.4 > p[1]


class World:
    """The agent walks to the target when the instruction says "toward", adds 1 every step under "steady"
    (partial scores) and writes no action otherwise; the optimiser's children say "toward" an eighth of the
    time and "steady" half of the time; summaries and categorisation replies are fixed."""

    def __init__(self):
        self.requests = {"summary": 0, "children": 0, "category": 0}

    def respond(self, prompt, config, j):
        if "Next action:" in prompt:
            head = prompt.split("Rules:")[0]
            if "toward" in head:
                return toward(prompt, *_state(prompt))
            return "add 1" if "steady" in head else "jump"
        if "Summarise in a few sentences" in prompt:
            self.requests["summary"] += 1
            return "The agent must write its action as 'add N' and move toward the target."
        if "Which of these error types" in prompt:
            self.requests["category"] += 1
            return "<type>format</type>"
        self.requests["children"] += 1
        v = int(hashlib.sha256(f"{prompt}|{config.seed}|{j}".encode()).hexdigest()[:6], 16) % 1000
        word = "toward the target" if v % 8 == 0 else "steady" if v % 8 < 5 else "somewhere"
        return f"<prompt>Move {word}, variant {v}.</prompt>"


def test_promst_tree_search_and_score_model():
    task = number_walk(size=30, seed=1)
    world = World()
    res = PROMST(n_children=4, n_selected=2, score_model_min=3).run(task, LM(ScriptedBackend(world.respond)),
                                                                     budget=12, split=SPLIT, seed=0)
    assert res.val_score == 1.0 and "toward" in res.best_prompt.instruction
    children = [h for h in res.history if h["kind"] == "promst_child"]
    skipped = [h for h in res.history if h["kind"] == "promst_skipped"]
    summary = [h for h in res.history if h["kind"] == "promst_summary"]
    assert children and skipped and summary[0]["evaluations_saved"] == len(skipped)
    # level 1: the root's 4 children, all scored (fewer than score_model_min prompts were known)
    assert [h["level"] for h in children[:4]] == [1] * 4 and all(h["predicted"] is None for h in children[:4])
    # later expansions: half of the children are scored, those predicted best; the other half is skipped
    for ex in {h["expansion"] for h in skipped}:
        got = [h for h in children if h["expansion"] == ex]
        left = [h for h in skipped if h["expansion"] == ex]
        assert len(got) == len(left) == 2 and all(h["predicted"] is not None for h in got)
        assert min(h["predicted"] for h in got) >= max(h["predicted"] for h in left)
    # the two best children of an expansion are the ones expanded next (depth first)
    first = [h for h in children if h["expansion"] == 1]
    best2 = sorted(first, key=lambda h: -h["val_score"])[:2]
    expanded = [h["prompt"] for h in res.history if h["kind"] == "promst_leaf"] + [
        h["prompt"] for h in res.history if h["kind"] == "promst_expand"]
    assert all(b["prompt"] in expanded for b in best2)
    # a prompt without failures is a leaf: perfect children are never expanded
    leaves = [h for h in res.history if h["kind"] == "promst_leaf"]
    assert all("toward" in h["prompt"] for h in leaves)
    assert world.requests["summary"] >= 1 and world.requests["category"] == 0


def test_promst_stop_rule_and_lm_categorisation():
    task = number_walk(size=30, seed=1)
    opt = PROMST(n_children=2, min_level=2)
    from types import SimpleNamespace
    opt._best_per_level = [0.5, 0.4, 0.3]
    calls = []
    ctx = SimpleNamespace(log=lambda *a, **k: calls.append(a))
    assert opt._expand(ctx, [None], 2) is None and not calls  # three falls in a row: stop before any work
    world = World()
    res = PROMST(n_children=2, categorize="lm", score_model=False).run(
        task, LM(ScriptedBackend(world.respond)), budget=4, split=SPLIT, seed=0)
    expands = [h for h in res.history if h["kind"] == "promst_expand"]
    assert expands[0]["failures"] == 10  # the root fails every validation episode
    # every failed episode of every expanded prompt is categorised once
    assert world.requests["category"] == sum(h["failures"] for h in expands)
    assert not [h for h in res.history if h["kind"] == "promst_skipped"]


def test_promst_needs_a_multistep_task(toy_task):
    from .conftest import ToyLM
    with pytest.raises(TypeError, match="multi-step"):
        PROMST().run(toy_task, LM(ToyLM(toy_task).backend), budget=3,
                     split={"seed": 0, "n_train": 10, "n_val": 5, "n_test": 5})
    with pytest.raises(ValueError, match="categorize"):
        PROMST(categorize="auto")


def test_promst_resumes_to_the_uninterrupted_result(tmp_path):
    task = number_walk(size=30, seed=1)
    full = PROMST(n_children=4, score_model_min=3).run(task, LM(ScriptedBackend(World().respond)), budget=10,
                                                       split=SPLIT, seed=3)
    world, calls = World(), []

    def flaky(prompt, config, j):
        calls.append(1)
        if len(calls) == 40:
            raise KeyboardInterrupt("simulated interruption")
        return world.respond(prompt, config, j)

    with pytest.raises(KeyboardInterrupt):
        PROMST(n_children=4, score_model_min=3).run(task, LM(ScriptedBackend(flaky)), budget=10, split=SPLIT,
                                                    seed=3, checkpoint_dir=tmp_path)
    again = PROMST(n_children=4, score_model_min=3).run(task, LM(ScriptedBackend(world.respond)), budget=10,
                                                        split=SPLIT, seed=3, checkpoint_dir=tmp_path)
    assert again.best_prompt == full.best_prompt and again.val_score == full.val_score
    assert [h["kind"] for h in again.history] == [h["kind"] for h in full.history]
