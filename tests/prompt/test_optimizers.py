"""Every optimiser end to end against a scripted LM; budgets, parse failures, resume, determinism."""

from __future__ import annotations

import json

import pytest

from lmopt.lm import LM, Budget, ScriptedBackend
from lmopt.prompt import (
    APE,
    EASE,
    INSTINCT,
    OPRO,
    SPO,
    Prompt,
    PromptBudget,
    RandomSearch,
    evaluate_prompt,
)
from lmopt.prompt.features import HashingEmbedder

from .conftest import ToyLM, make_task

SPLIT = {"seed": 0, "n_train": 30, "n_val": 12, "n_test": 20}
FAST_EASE = {"embedder": "hash", "train_steps": 40, "n_candidates": 60, "n_initial": 3}


def _methods():
    return {
        "random": lambda: RandomSearch(n_shots=3),
        "ape": lambda: APE(prompts_per_subsample=4, n_subsamples=2),
        "ape_subsample": lambda: APE(prompts_per_subsample=4, n_subsamples=2, evaluation="subsample", n_samples=4),
        "ape_ucb": lambda: APE(prompts_per_subsample=4, n_subsamples=2, evaluation="ucb", n_samples=3, ucb_rounds=4),
        "opro": lambda: OPRO(proposals_per_step=3),
        "ease": lambda: EASE(n_shots=3, **FAST_EASE),
        "ease_ot_joint": lambda: EASE(n_shots=3, ot_filter=True, ot_keep=20, joint=True,
                                      instructions=["Answer carefully with yes or no."], **FAST_EASE),
        "instinct": lambda: INSTINCT(n_candidates=6, n_initial=2, embedder="hash", train_steps=40),
        "spo": lambda: SPO(rounds=3),
    }


@pytest.mark.parametrize("name", list(_methods()))
def test_optimizer_end_to_end(name, toy_task, toy_lm):
    _, lm = toy_lm
    res = _methods()[name]().run(toy_task, lm, budget=8, split=SPLIT, seed=0)
    assert 1 <= res.n_evaluations <= 8
    assert res.best_prompt.instruction.strip()
    assert res.seed_val_score is not None and res.test_score is not None and res.seed_test_score is not None
    # the reported validation score is the reported best prompt's, re-measured independently
    split = toy_task.split(**SPLIT)
    assert evaluate_prompt(LM(toy_lm[0].backend), toy_task, res.best_prompt, split.validation).score == \
        pytest.approx(res.val_score)
    assert res.usage["task"]["calls"] > 0
    if name.startswith("ape") or name in ("opro", "spo", "instinct"):
        assert res.usage["optimizer"]["calls"] > 0
    if name == "spo":
        assert res.usage["judge"]["calls"] > 0
        assert any(h["kind"] == "spo_round" for h in res.history)
    json.dumps(res.to_dict())  # JSON-able


def test_ease_beats_seed_and_prefers_good_exemplars(toy_task):
    toy = ToyLM(toy_task)
    res = EASE(n_shots=4, **{**FAST_EASE, "n_initial": 4}).run(toy_task, LM(toy.backend), budget=14, split=SPLIT)
    assert res.val_score > res.seed_val_score
    n_good = sum("GOOD" in e.input for e in res.best_prompt.exemplars)
    assert n_good >= 2, res.best_prompt


def test_parse_failures_are_logged_not_crashing(toy_task):
    toy = ToyLM(toy_task, proposals="garbage")
    res = OPRO(proposals_per_step=2, max_failed_steps=2).run(toy_task, LM(toy.backend), budget=5, split=SPLIT)
    fails = [h for h in res.history if h["kind"] == "parse_failure"]
    assert res.parse_failures == len(fails) >= 4 and all(f["score"] == 0.0 for f in fails)
    assert res.best_prompt == Prompt(toy_task.instruction)  # fell back to the seed, never an empty prompt
    assert res.n_evaluations == 1
    res = SPO(rounds=2).run(toy_task, LM(toy.backend), budget=5, split=SPLIT)
    assert res.best_prompt.instruction == toy_task.instruction and res.parse_failures >= 2


def test_lm_budget_stops_before_exceeding(toy_task):
    toy = ToyLM(toy_task)
    limit = 12 * 2 * 3 + 5  # 3 prompt evaluations of 12 examples x 2 labels, plus a little
    lm = LM(toy.backend, budget=Budget.from_dict({"task": {"calls": limit}}))
    res = RandomSearch(n_shots=3).run(toy_task, lm, budget=50, split=SPLIT, evaluate_test=False)
    assert res.stop_reason.startswith("LM budget")
    assert lm.usage()["task"]["calls"] <= limit
    assert res.n_evaluations == 3
    # run-level LM limits via the PromptBudget are enforced too
    toy2 = ToyLM(toy_task)
    res = RandomSearch(n_shots=3).run(toy_task, LM(toy2.backend), split=SPLIT, evaluate_test=False,
                                      budget={"evaluations": 50, "task": {"calls": 30}})
    assert res.n_evaluations == 1 and res.usage["task"]["calls"] <= 30 and "budget" in res.stop_reason
    assert PromptBudget.from_any({"evaluations": 3}).evaluations == 3
    with pytest.raises(ValueError, match="positive int"):
        PromptBudget(evaluations=0)


@pytest.mark.parametrize("name", ["opro", "ease", "spo", "ape_ucb"])
def test_resume_after_interruption_matches_uninterrupted(name, tmp_path):
    task = make_task()
    ref_toy = ToyLM(task)
    ref = _methods()[name]().run(task, LM(ref_toy.backend), budget=7, split=SPLIT, seed=1)
    total_calls = ref_toy.backend.calls

    toy = ToyLM(task)
    toy.fail_after = total_calls // 2
    with pytest.raises(KeyboardInterrupt):
        _methods()[name]().run(task, LM(toy.backend), budget=7, split=SPLIT, seed=1, checkpoint_dir=tmp_path)
    first = toy.backend.calls
    toy.fail_after = None
    res = _methods()[name]().run(task, LM(toy.backend), budget=7, split=SPLIT, seed=1, checkpoint_dir=tmp_path)
    assert res.best_prompt == ref.best_prompt and res.val_score == ref.val_score
    assert [h.get("prompt") for h in res.history] == [h.get("prompt") for h in ref.history]
    # nothing answered before the interruption is asked again: both sessions together cost the
    # uninterrupted run's calls plus the one batch that was cut (at most the 20 test examples x 2 labels)
    assert first < total_calls and toy.backend.calls <= total_calls + 40
    # the usage of the interrupted session is restored (else the resumed run would get a fresh LM budget)
    assert ref.usage["total"]["calls"] <= res.usage["total"]["calls"] <= ref.usage["total"]["calls"] + 40
    before = toy.backend.calls
    again = _methods()[name]().run(task, LM(toy.backend), budget=7, split=SPLIT, seed=1, checkpoint_dir=tmp_path)
    assert toy.backend.calls == before  # a finished run costs zero LM calls
    assert again.to_dict() == res.to_dict()
    with pytest.raises(ValueError, match="different run"):
        _methods()[name]().run(task, LM(toy.backend), budget=9, split=SPLIT, seed=1, checkpoint_dir=tmp_path)


def test_a_finished_run_is_not_returned_for_another_judge_hyper_parameter_or_embedder(tmp_path):
    task = make_task()
    toy = ToyLM(task)
    SPO().run(task, LM(toy.backend), budget=3, split=SPLIT, seed=0, checkpoint_dir=tmp_path / "spo")
    other_judge = LM(ScriptedBackend(lambda p, c, j: "<answer>A</answer>", name="another-judge"))
    with pytest.raises(ValueError, match=r"judge_lm differ\); to start a fresh run pass another checkpoint_dir"):
        SPO().run(task, LM(toy.backend), budget=3, split=SPLIT, seed=0, judge_lm=other_judge,
                  checkpoint_dir=tmp_path / "spo")
    with pytest.raises(ValueError, match=r"\(hparams differ"):
        SPO(n_judgements=2).run(task, LM(toy.backend), budget=3, split=SPLIT, seed=0, checkpoint_dir=tmp_path / "spo")
    EASE(embedder="hash", n_initial=2).run(task, LM(toy.backend), budget=3, split=SPLIT, checkpoint_dir=tmp_path / "e")
    with pytest.raises(ValueError, match=r"\(hparams differ"):
        EASE(embedder=HashingEmbedder(dim=64), n_initial=2).run(task, LM(toy.backend), budget=3, split=SPLIT,
                                                                  checkpoint_dir=tmp_path / "e")
    shifted = task.split(seed=5, n_train=SPLIT["n_train"], n_val=SPLIT["n_val"], n_test=SPLIT["n_test"])
    with pytest.raises(ValueError, match=r"\(splits differ"):
        EASE(embedder="hash", n_initial=2).run(task, LM(toy.backend), budget=3, splits=shifted,
                                               checkpoint_dir=tmp_path / "e")


def test_rerun_with_cache_costs_zero_calls(tmp_path):
    from lmopt.lm import CallCache

    task = make_task()
    toy = ToyLM(task)
    cache = CallCache(tmp_path / "cache.sqlite")
    r1 = OPRO(proposals_per_step=2).run(task, LM(toy.backend, cache=cache), budget=5, split=SPLIT)
    n = toy.backend.calls
    r2 = OPRO(proposals_per_step=2).run(task, LM(toy.backend, cache=cache), budget=5, split=SPLIT)
    assert toy.backend.calls == n and r2.best_prompt == r1.best_prompt
    assert r2.usage["task"]["calls"] == 0 and r2.usage["task"]["cached_calls"] > 0


@pytest.mark.parametrize("name", ["random", "ease", "opro", "ape_subsample"])
def test_deterministic_per_seed(name, toy_task):
    runs = []
    for seed in (0, 0, 1):
        toy = ToyLM(toy_task)
        runs.append(_methods()[name]().run(toy_task, LM(toy.backend), budget=6, split=SPLIT, seed=seed))
    evals = [[h["prompt"] for h in r.history if h["kind"] == "eval"] for r in runs]
    assert evals[0] == evals[1]
    assert evals[0] != evals[2]  # seed 0 is a seed like any other (not "no seed")


def test_bad_inputs(toy_task, toy_lm):
    _, lm = toy_lm
    with pytest.raises(ValueError, match="n_shots"):
        RandomSearch(n_shots=-1)
    with pytest.raises(ValueError, match="something to search"):
        RandomSearch(n_shots=0)
    with pytest.raises(ValueError, match="exceeds"):
        RandomSearch(n_shots=40).run(toy_task, lm, budget=3, split=SPLIT)
    with pytest.raises(TypeError, match="Task"):
        RandomSearch().run("toy", lm, budget=3)
    with pytest.raises(ValueError, match="features='hidden'"):
        INSTINCT(features="hidden", n_candidates=2, embedder="hash").run(toy_task, lm, budget=4, split=SPLIT)
    with pytest.raises(ValueError, match="seed_prompt="):
        RandomSearch().run(toy_task, lm, budget=3, split=SPLIT, seed_prompt=Prompt(""))
    res = RandomSearch().run(toy_task, lm, budget=2, split=SPLIT, seed_prompt="Answer.")
    assert res.seed_prompt == Prompt("Answer.")
    with pytest.raises(TypeError, match="seed_prompt must be a Prompt or a str"):
        RandomSearch().run(toy_task, lm, budget=3, split=SPLIT, seed_prompt=3)
    with pytest.raises(ValueError, match="unknown split"):
        RandomSearch().run(toy_task, lm, budget=3, split={"n_dev": 3})


def test_opro_filters_and_threshold_as_the_authors_code():
    """Instructions below the score threshold stay out of the meta-prompt; over-long proposals or ones with a
    leaked INS tag are dropped unscored."""
    task = make_task()

    def run(threshold):
        metas: list[str] = []

        def respond(prompt, config, j):
            if "</INS>" in prompt:
                metas.append(prompt)
                return ["<INS>" + "long " * 150 + "</INS>", "<INS>Answer with INS please.</INS>",
                        f"<INS>Say yes or no ({config.seed}, {j}).</INS>"][j % 3]
            return "yes"

        res = OPRO(proposals_per_step=3, max_failed_steps=1, score_threshold=threshold).run(
            task, LM(ScriptedBackend(respond)), budget=4, split=SPLIT)
        return res, metas

    res, metas = run(0.3)
    seed_score = res.seed_val_score
    assert 0.3 <= seed_score < 0.9  # always "yes" on a balanced yes/no task
    assert f"text:\n{task.instruction}\nscore:" in metas[0]
    filtered = [h for h in res.history if h["kind"] == "opro_filtered"]
    assert len(filtered) >= 2 and all(h["chars"] > 500 or "INS" in h["instruction"] for h in filtered)
    scored = [h for h in res.history if h["kind"] == "eval"]
    assert scored and all("INS" not in json.dumps(h.get("prompt", "")) for h in scored)
    _, metas_hi = run(0.9)
    assert f"text:\n{task.instruction}\nscore:" not in metas_hi[0]
    with pytest.raises(ValueError, match="score_threshold"):
        OPRO(score_threshold=30)


def test_ease_embeds_the_exemplars_only_as_the_released_code(toy_task):
    seen: list[str] = []
    hasher = HashingEmbedder(32)

    def recording(texts):
        seen.extend(texts)
        return hasher.encode(texts)

    toy = ToyLM(toy_task)
    EASE(n_shots=2, **{**FAST_EASE, "embedder": recording, "n_candidates": 8}).run(
        toy_task, LM(toy.backend), budget=4, split=SPLIT)
    cand_texts = [t for t in seen if "Input:" in t]
    assert cand_texts and not any(toy_task.instruction in t for t in cand_texts)
    seen.clear()
    EASE(n_shots=2, embed_instruction=True, **{**FAST_EASE, "embedder": recording, "n_candidates": 8}).run(
        toy_task, LM(ToyLM(toy_task).backend), budget=4, split=SPLIT)
    assert all(t.startswith(toy_task.instruction) for t in seen if "Input:" in t)


def test_instinct_pool_outlasts_the_budget(toy_task):
    toy = ToyLM(toy_task)
    res = INSTINCT(n_candidates=3, n_initial=2, features="embedding", embedder=HashingEmbedder(16),
                   train_steps=5).run(toy_task, LM(toy.backend), budget=8, split=SPLIT)
    pool = [h for h in res.history if h["kind"] == "candidates"][0]["n"]
    assert pool >= 8  # one more than the evaluations left after the seed's
    assert res.n_evaluations == 8


def _sample_evals(res):
    return [h for h in res.history if h["kind"] == "sample_eval"]


def test_ape_subsample_scores_each_candidate_on_a_fresh_sample_within_the_budget(toy_task):
    # n_val 12, samples of 4: a sample costs 1/3 of an evaluation. Budget 6 = the seed prompt, 12 samples
    # (4 evaluations) and the chosen candidate's full evaluation.
    res = APE(prompts_per_subsample=10, n_subsamples=2, evaluation="subsample", n_samples=4).run(
        toy_task, LM(ToyLM(toy_task).backend), budget=6, split=SPLIT, seed=0)
    samples = _sample_evals(res)
    assert len(samples) == 12 and all(h["n_examples"] == 4 for h in samples)
    assert len({h["prompt"]["instruction"] for h in samples}) == 12  # one sample per candidate
    assert res.n_evaluations == 6
    full = [h for h in res.history if h["kind"] == "eval"]
    assert [h["source"] for h in full] == ["seed", "ape-subsample"]
    best = max(samples, key=lambda h: h["score"])  # the chosen candidate has the best sampled score
    assert full[1]["sampled_mean"] == best["score"]
    assert full[1]["prompt"]["instruction"] in {h["prompt"]["instruction"] for h in samples
                                                if h["score"] == best["score"]}


def test_ape_samples_differ_between_candidates(toy_task, monkeypatch):
    from lmopt.prompt import base

    seen = []
    real = base.RunContext.evaluate_sample

    def spy(self, prompt, examples, source="", **info):
        seen.append(tuple(e.input for e in examples))
        assert {e.input for e in examples} <= {e.input for e in self.splits.validation}
        return real(self, prompt, examples, source, **info)

    monkeypatch.setattr(base.RunContext, "evaluate_sample", spy)
    APE(prompts_per_subsample=10, n_subsamples=1, evaluation="subsample", n_samples=4).run(
        toy_task, LM(ToyLM(toy_task).backend), budget=5, split=SPLIT, seed=0)
    assert len(seen) == 9 and len(set(seen)) > 1 and all(len(set(s)) == 4 for s in seen)


def test_ape_ucb_rounds_follow_the_bandit_and_keep_one_evaluation_for_the_winner(toy_task):
    res = APE(prompts_per_subsample=6, n_subsamples=1, evaluation="ucb", n_samples=3, ucb_rounds=5).run(
        toy_task, LM(ToyLM(toy_task).backend), budget=30, split=SPLIT, seed=0)
    samples = _sample_evals(res)
    # 6 candidates, a third of them (2) per round, 5 rounds of samples of 3 examples
    assert [h["round"] for h in samples] == [r for r in range(5) for _ in range(2)]
    (ucb,) = [h for h in res.history if h["kind"] == "ape_ucb"]
    assert sum(ucb["counts"]) == 5 * 2 * 3
    # the bandit's means are the per-candidate averages of its samples
    for i, mean in enumerate(ucb["means"]):
        mine = [h["score"] for h in samples if h["candidate"] == i]
        assert mean == pytest.approx(sum(mine) / len(mine) if mine else 0.0)
    # 30 examples of samples = 2.5 evaluations, counted as 2; plus the seed prompt and the winner
    assert res.n_evaluations == 4
    final = [h for h in res.history if h["kind"] == "eval"][-1]
    assert final["source"] == "ape-ucb" and final["sampled_mean"] == max(ucb["means"])


def test_ape_sampled_modes_reject_bad_settings(toy_task):
    with pytest.raises(ValueError, match="evaluation must be"):
        APE(evaluation="bandit")
    with pytest.raises(ValueError, match="n_samples applies"):
        APE(n_samples=5)
    with pytest.raises(ValueError, match="exceeds the 12 validation examples"):
        APE(evaluation="subsample", n_samples=13).run(toy_task, LM(ToyLM(toy_task).backend), budget=4, split=SPLIT)


def test_progress_true_prints_each_evaluation_and_the_test_scoring(toy_task, capsys):
    res = RandomSearch(n_shots=2).run(toy_task, LM(ToyLM(toy_task).backend), budget=3, split=SPLIT, progress=True)
    lines = capsys.readouterr().err.strip().splitlines()
    assert [ln.split("] ", 1)[1].split(" ", 1)[0] for ln in lines] == ["1/3", "2/3", "3/3", "3/3"]
    assert "random: eval 3/3" in lines[2] and "scoring the best and the seed prompt on 20 test" in lines[3]
    assert res.n_evaluations == 3
    with pytest.raises(TypeError, match="progress must be"):
        RandomSearch().run(toy_task, LM(ToyLM(toy_task).backend), budget=1, split=SPLIT, progress="yes")


def test_instinct_generator_features_read_the_generator_input_of_each_candidate(toy_task):
    import numpy as np

    toy = ToyLM(toy_task)
    seen: list[str] = []

    def hidden_states(texts, **kw):  # a white-box task model: records what it is asked to encode
        seen.extend(texts)
        return np.stack([np.array([len(t), t.count("Input"), hash(t) % 97], dtype=np.float32) for t in texts])

    toy.backend.hidden_states = hidden_states
    res = INSTINCT(n_candidates=4, n_initial=2, features="generator", train_steps=5).run(
        toy_task, LM(toy.backend), budget=4, split=SPLIT)
    (cands,) = [h for h in res.history if h["kind"] == "candidates"]
    assert cands["features"] == "generator" and cands["dim"] == 3
    assert seen[0] == toy_task.instruction  # the seed instruction has no generator input
    generated = seen[1:]
    assert generated and all(t.startswith("Someone was given one instruction") for t in generated)
    evaluated = {h["prompt"]["instruction"] for h in res.history if h["kind"] == "eval"} - {toy_task.instruction}
    assert all(any(t.endswith("<prompt>" + ins) for t in generated) for ins in evaluated)
    with pytest.raises(ValueError, match="features='generator' needs a white-box"):
        INSTINCT(features="generator", n_candidates=2).run(toy_task, LM(ToyLM(toy_task).backend), budget=3,
                                                           split=SPLIT)
