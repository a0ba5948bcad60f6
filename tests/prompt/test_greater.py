"""GReaTer on a tiny random Llama (float64) with the embedded tokenizer: token gradients against finite
differences, the candidate rule, the selection rule, and the run end to end."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from lmopt.data import Example, Task
from lmopt.lm import LM, LocalLM
from lmopt.prompt import GReaTer
from lmopt.prompt.greater import candidate_tokens, propose_candidates, rank_by_gradient

from .conftest import ToyLM, make_task


@pytest.fixture(scope="module")
def tiny_local():
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lmopt.assets import smollm2_dir

    tok = AutoTokenizer.from_pretrained(str(smollm2_dir()))
    torch.manual_seed(0)  # transformers initialises weights from the global RNG; tests only
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg).to(torch.float64)
    return LocalLM(model_obj=model, tokenizer=tok, dtype=torch.float64)


def _task():
    ex = [Example(f"word {w}", lab) for w, lab in zip(["apple", "stone", "river", "cloud", "grass", "metal"] * 4,
                                                       ["yes", "no", "yes", "no", "no", "yes"] * 4)]
    return Task(name="tiny", examples=ex, labels=("yes", "no"), instruction="Say yes or no about the word.",
                template="{exemplars}Input: {input}\n{instruction}\nOutput:", max_new_tokens=4)


def test_token_gradients_equal_finite_differences_of_the_one_hot(tiny_local):
    task = _task()
    opt = GReaTer(answer_temperature=0.5, fluency_weight=0.3)
    ctx = SimpleNamespace(task=task)
    prompt_ids = tiny_local._encode("Answer with yes or no now.")
    rows = [opt.build_row(ctx, tiny_local, prompt_ids, e, None) for e in task.examples[:3]]
    pos = 2
    grad, prev_logp, loss = opt.token_gradient(tiny_local, rows, pos, len(prompt_ids))
    model = tiny_local.model
    weight = model.get_input_embeddings().weight.detach()
    for b, row in enumerate(rows):
        ids = torch.tensor([row.ids])
        base_emb = weight[row.ids[row.start + pos]]

        def f(emb_at, row=row, ids=ids):
            x = model.get_input_embeddings()(ids).detach().clone()
            x[0, row.start + pos] = emb_at
            with torch.no_grad():
                logits = model(inputs_embeds=x).logits[0]
            a0, a1 = row.answer
            ans = torch.nn.functional.cross_entropy(logits[a0 - 1:a1 - 1] / 0.5, ids[0, a0:a1])
            logp = torch.log_softmax(logits, -1)
            p = torch.arange(max(row.start, 1), row.start + len(prompt_ids))  # prompt tokens with a left context
            nll = -logp[p - 1, ids[0, p]].mean()
            return float(ans + 0.3 * nll)

        assert f(base_emb) == pytest.approx(float(loss[b]), rel=1e-9)
        # the tokens with the largest gradients (a tiny one would drown in float32 rounding) and the current one
        candidates = [prompt_ids[pos], int(grad[b].argmax()), int(grad[b].argmin()), 500]
        scale = float(grad[b].abs().max())
        for c in candidates:
            # central differences, Richardson-extrapolated: Llama's RMSNorm computes in float32 even for a
            # float64 model, so a tiny step drowns in rounding
            def d(h, c=c, base_emb=base_emb):
                return (f(base_emb + h * weight[c]) - f(base_emb - h * weight[c])) / (2 * h)

            fd = (4 * d(1e-3) - d(2e-3)) / 3
            assert float(grad[b, c]) == pytest.approx(fd, rel=1e-2, abs=1e-2 * scale)
        # the proposal distribution is the model's next-token distribution at the position
        with torch.no_grad():
            ref = torch.log_softmax(model(input_ids=ids).logits[0, row.start + pos - 1], -1)
        assert torch.allclose(prev_logp[b], ref, atol=1e-10)
    assert not any(p.grad is not None for p in model.parameters())  # the model's weights are not trained


def test_candidate_rule_intersects_and_grows():
    rng = random.Random(0)
    # the intersection of the chosen examples' top sets, unioned over draws
    tops = [[1, 2, 3], [2, 3, 4], [3, 4, 5]]
    assert candidate_tokens(tops, 3, 2, rng) == {3}
    assert candidate_tokens(tops, 1, 30, random.Random(1)) == {1, 2, 3, 4, 5}
    # disjoint top-2 sets: top_k grows until the rows share tokens
    lp = torch.full((2, 10), -10.0)
    lp[0, [0, 1, 2, 3]] = torch.tensor([-0.1, -0.2, -0.3, -0.4])
    lp[1, [4, 5, 2, 3]] = torch.tensor([-0.1, -0.2, -0.3, -0.4])
    banned = torch.zeros(10, dtype=torch.bool)
    assert propose_candidates(lp, 2, 2, 1, 2, random.Random(0), banned) == [2, 3]
    banned[2] = True
    got = propose_candidates(lp, 2, 2, 1, 1, random.Random(0), banned)
    assert 2 not in got and got == [3]


def test_ranking_takes_the_most_negative_summed_gradient():
    grad = torch.zeros(2, 6)
    grad[0] = torch.tensor([0.0, -1.0, 2.0, -0.5, 0.0, -3.0])
    grad[1] = torch.tensor([0.0, -1.0, -4.0, -0.5, 0.0, 1.0])
    # sums: 0, -2, -2, -1, 0, -2 → -2 ties broken by token id
    assert rank_by_gradient(grad, [0, 1, 2, 3, 4, 5], 3) == [1, 2, 5]
    assert rank_by_gradient(grad, [0, 3, 4], 2) == [3, 0]


def test_greater_end_to_end_on_a_tiny_model(tiny_local):
    task = _task()
    lm = LM(tiny_local)
    split = {"seed": 0, "n_train": 10, "n_val": 6, "n_test": 6}
    res = GReaTer(batch_size=4, max_steps=3, top_k=5).run(task, lm, budget=40, split=split, seed=0)
    steps = [h for h in res.history if h["kind"] == "greater_step"]
    assert len(steps) == 3
    assert [s["position"] for s in steps] == [0, 1, 2]  # the instruction follows the input: no position skipped
    for s in steps:
        assert 1 <= len(s["selection"]) <= 3 and s["candidates"] >= len(s["ranked"])
        # the selection rule: the lowest loss wins, ties to the later candidate (no "." shortcut here)
        losses = [c["loss"] for c in s["selection"]]
        last_min = max(i for i, v in enumerate(losses) if v == min(losses))
        if not any("." in c["text"] for c in s["selection"]):
            assert s["chosen"] == s["selection"][last_min]["token"]
    assert res.best_prompt.instruction.strip() and res.n_evaluations <= 40
    assert res.val_score == max(h["val_score"] for h in res.history if h["kind"] == "eval")


def test_greater_needs_a_local_model(toy_task):
    toy = ToyLM(toy_task)
    with pytest.raises(TypeError, match="white-box"):
        GReaTer(max_steps=1).run(toy_task, LM(toy.backend), budget=5, split={"seed": 0, "n_train": 10,
                                                                           "n_val": 5, "n_test": 5})


def test_greater_rejects_bad_options():
    with pytest.raises(ValueError, match="top_k"):
        GReaTer(top_k=0)
    with pytest.raises(ValueError, match="reasoning"):
        GReaTer(reasoning="yes")
    with pytest.raises(ValueError, match="answer_temperature"):
        GReaTer(answer_temperature=0)


def test_greater_template_must_hold_the_instruction_once(tiny_local):
    task = Task(name="twice", examples=make_task(8).examples, labels=("yes", "no"), instruction="x y z",
                template="{instruction}\n{exemplars}Input: {input}\n{instruction}\nOutput:")
    with pytest.raises(ValueError, match="exactly once"):
        GReaTer().split_template(SimpleNamespace(task=task), task.examples[0])


def test_greater_resumes_to_the_uninterrupted_result(tiny_local, tmp_path, monkeypatch):
    task = _task()
    split = {"seed": 0, "n_train": 10, "n_val": 6, "n_test": 6}
    full = GReaTer(batch_size=4, max_steps=3, top_k=5).run(task, LM(tiny_local), budget=40, split=split, seed=1)
    real = GReaTer.token_gradient
    calls = []

    def interrupted(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated interruption")
        return real(self, *a, **k)

    monkeypatch.setattr(GReaTer, "token_gradient", interrupted)
    with pytest.raises(KeyboardInterrupt):
        GReaTer(batch_size=4, max_steps=3, top_k=5).run(task, LM(tiny_local), budget=40, split=split, seed=1,
                                                        checkpoint_dir=tmp_path)
    monkeypatch.setattr(GReaTer, "token_gradient", real)
    again = GReaTer(batch_size=4, max_steps=3, top_k=5).run(task, LM(tiny_local), budget=40, split=split, seed=1,
                                                            checkpoint_dir=tmp_path)
    assert again.best_prompt == full.best_prompt and again.val_score == full.val_score
    assert [h.get("chosen") for h in again.history] == [h.get("chosen") for h in full.history]


def test_greater_skips_a_first_position_with_nothing_before_it(tiny_local):
    task = Task(name="first", examples=_task().examples, labels=("yes", "no"), instruction="Say yes or no now.")
    assert task.template.startswith("{instruction}") and tiny_local._bos is None
    res = GReaTer(batch_size=2, max_steps=1, top_k=5).run(task, LM(tiny_local), budget=20,
                                                          split={"seed": 0, "n_train": 10, "n_val": 6, "n_test": 6})
    (step,) = [h for h in res.history if h["kind"] == "greater_step"]
    assert step["position"] == 1
