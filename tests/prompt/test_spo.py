"""SPO's judging: the A/B side of the new answers is random per judgement, and the rewriter and the judge see
the requirement and the reference answers (as in the authors' code)."""

import pytest

from lmopt.lm import LM, ScriptedBackend
from lmopt.prompt import SPO

from .conftest import make_task

SPLIT = {"seed": 0, "n_train": 20, "n_val": 12, "n_test": 20}


def _position_biased(seen: list[str]):
    """Always prefers answer set A; every rewrite is new; the task answers are constant."""
    def respond(prompt, config, j):
        seen.append(prompt)
        if "<choose>" in prompt:
            return "<choose>A</choose>"
        if "</prompt>" in prompt:
            return f"<prompt>Answer yes or no, version {config.seed}.</prompt>"
        return "yes"
    return respond


def _accepted(res) -> list[bool]:
    return [h["accepted"] for h in res.history if h["kind"] == "spo_round" and "new_wins" in h]


def test_random_sides_let_a_position_biased_judge_accept_some_rewrites():
    task = make_task()
    seen: list[str] = []
    res = SPO(rounds=10).run(task, LM(ScriptedBackend(_position_biased(seen))), budget=40, split=SPLIT, seed=0)
    accepted = _accepted(res)
    assert len(accepted) >= 8 and 0 < sum(accepted) < len(accepted)  # P(accept) = 5/16 per round
    # the old deterministic alternation gives such a judge exactly 2 of 4 votes: never a strict majority
    seen2: list[str] = []
    old = SPO(rounds=10, ab_order="alternate").run(task, LM(ScriptedBackend(_position_biased(seen2))), budget=40,
                                                   split=SPLIT, seed=0)
    assert not any(_accepted(old))


def test_rewriter_and_judge_see_requirement_and_references():
    task = make_task()
    task.description = "Say whether the item is a yes-item."
    seen: list[str] = []
    SPO(rounds=1).run(task, LM(ScriptedBackend(_position_biased(seen))), budget=5, split=SPLIT, seed=0)
    rewrites = [p for p in seen if "</prompt>" in p]
    judgements = [p for p in seen if "<choose>" in p]
    assert rewrites and judgements
    for p in rewrites[:1] + judgements[:1]:
        assert "Task requirement:\nSay whether the item is a yes-item." in p
        assert "Reference answer: " in p
    seen_off: list[str] = []
    SPO(rounds=1, show_requirement=False, show_references=False).run(
        task, LM(ScriptedBackend(_position_biased(seen_off))), budget=5, split=SPLIT, seed=0)
    assert not any("Reference answer" in p or "Task requirement" in p for p in seen_off)


def test_judge_by_scoring_the_closed_answers():
    """judge_mode='score' ranks "<choose>A" against "<choose>B" by log-probability; no judge text is generated."""
    from lmopt.lm.scripted import render_chat

    task = make_task()
    scored: list[tuple[str, str]] = []

    def respond(prompt, config, j):
        assert "<choose>" not in prompt, "the judge must not be asked to generate"
        if "</prompt>" in prompt:
            return f"<prompt>Answer yes or no, version {config.seed}.</prompt>"
        return "yes"

    def score(prompt, continuation):
        scored.append((prompt, continuation))
        return -1.0 if continuation == "B" else -2.0  # this judge prefers B

    lm = LM(ScriptedBackend(respond, score))
    conv = [{"role": "user", "content": "Pick."}]
    assert lm.choose(conv, ["A", "B"], prefix="<choose>") == (1, [-2.0, -1.0])
    assert scored[-1] == (render_chat((("user", "Pick."),)) + "<choose>", "B")
    res = SPO(rounds=6, judge_mode="score").run(task, lm, budget=20, split=SPLIT, seed=0)
    rounds = [h for h in res.history if h["kind"] == "spo_round" and "new_wins" in h]
    assert rounds and sum(h["new_wins"] for h in rounds) > 0  # the new answers won whenever they were set B
    assert any(c == "A" for _, c in scored) and res.parse_failures == 0
    with pytest.raises(ValueError, match="judge_mode='score'"):
        SPO(rounds=1, judge_mode="score").run(task, LM(ScriptedBackend(respond)), budget=5, split=SPLIT, seed=0)
