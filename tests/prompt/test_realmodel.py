"""Prompt optimisation with the embedded SmolLM2-135M-Instruct on a tiny budget (real model)."""

from __future__ import annotations

import pytest

from lmopt.data import load_task
from lmopt.lm import LM
from lmopt.prompt import INSTINCT, RandomSearch

pytestmark = pytest.mark.realmodel


@pytest.fixture(scope="module")
def local():
    from lmopt.lm import LocalLM

    return LocalLM(batch_size=8)


def test_random_search_and_white_box_instinct_on_tweets(local, tmp_path):
    task = load_task("tweets", per_class=10, seed=0)
    splits = task.split(0, n_train=8, n_val=4, n_test=3)
    lm = LM(local)
    res = RandomSearch(n_shots=2).run(task, lm, budget=2, splits=splits, checkpoint_dir=tmp_path)
    assert res.n_evaluations == 2 and res.usage["task"]["calls"] > 0
    assert res.val_score >= res.seed_val_score and 0 <= res.test_score <= 1
    again = RandomSearch(n_shots=2).run(task, lm, budget=2, splits=splits, checkpoint_dir=tmp_path)
    assert again.to_dict() == res.to_dict()
    # INSTINCT in white-box mode: NeuralUCB on SmolLM2's last-token hidden states of each instruction
    cands = ["Is the tweet negative, neutral or positive?", "Say how the writer feels: negative, neutral or positive."]
    res = INSTINCT(candidates=cands, n_candidates=2, n_initial=1, train_steps=20).run(
        task, lm, budget=2, splits=splits, evaluate_test=False)
    feats = [h for h in res.history if h["kind"] == "candidates"][0]
    assert feats["features"] == "hidden" and feats["dim"] == 576
    assert res.n_evaluations == 2


def test_greater_and_textgrad_on_tweets(local):
    from lmopt.prompt import GReaTer, TextGrad

    task = load_task("tweets", per_class=10, seed=0)
    splits = task.split(0, n_train=8, n_val=4, n_test=3)
    lm = LM(local)
    res = GReaTer(batch_size=2, max_steps=1, top_k=5).run(task, lm, budget=6, splits=splits, evaluate_test=False)
    (step,) = [h for h in res.history if h["kind"] == "greater_step"]
    assert step["candidates"] >= 6 and len(step["selection"]) == 3  # the model proposed, the gradient ranked
    assert res.best_prompt.instruction.strip()
    res = TextGrad(batch_size=2, steps_per_epoch=1, epochs=1, feedback_tokens=16, update_tokens=24).run(
        task, lm, budget=4, splits=splits, evaluate_test=False)
    (tg,) = [h for h in res.history if h["kind"] == "textgrad_step"]
    assert 1 <= res.usage["judge"]["calls"] <= 4 and tg["reason"] in ("updated", "unparsed", "too_long")
