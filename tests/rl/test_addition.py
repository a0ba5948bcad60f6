"""The 2-digit addition GRPO testbed: pools, tokens, masks, log-probs and seeded runs of every arm."""

import pytest
import torch

from lmopt.rl.addition import (
    END,
    AdditionConfig,
    AdditionTask,
    completion_logprobs,
    completion_mask,
    decode_answer,
    encode_answer,
    encode_prompt,
    exact_match,
    generate,
    has_carry,
    make_policy,
    run_addition,
)


def test_carry_and_pools():
    assert has_carry(15, 17) and has_carry(55, 61) and has_carry(95, 95)
    assert not has_carry(12, 34) and not has_carry(40, 59)
    task = AdditionTask(n_train=64, n_test=40, carry_fraction=0.5, seed=3)
    train, test, warm = set(task.train), set(task.test), set(task.warmup)
    assert len(train) == 64 and len(test) == 40
    assert not (train & test) and not (train & warm) and not (test & warm)  # RL, test and warm-up sums are disjoint
    assert sum(has_carry(*p) for p in task.train) == 32 and sum(has_carry(*p) for p in task.test) == 20
    assert len(train | test | warm) == 90 * 90


def test_tokens_mask_and_reward():
    assert encode_prompt(47, 85) == [4, 7, 10, 8, 5, 11]
    assert encode_answer(47, 85) == [1, 3, 2, END]
    assert decode_answer([1, 3, 2, END]) == "132"
    assert decode_answer([5, END, 9, 9]) == "5"
    assert decode_answer([1, 2, 3, 4]) == ""  # no end token: unfinished, never correct
    comps = torch.tensor([[1, 3, 2, END], [5, END, 9, 9], [1, 2, 3, 4]])
    assert completion_mask(comps).tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]]
    assert exact_match(comps, [(47, 85), (2, 3), (60, 63)]).tolist() == [1.0, 1.0, 0.0]


def test_teacher_forced_logprobs_line_up_with_generation():
    """Every greedy token must be the argmax of the teacher-forced distribution at its own position (an
    off-by-one slice of the logits would score the wrong tokens)."""
    model = make_policy(0, n_layer=1, n_embd=32)
    prompts = torch.tensor([encode_prompt(a, b) for a, b in [(12, 34), (56, 78), (99, 10)]])
    greedy = generate(model, prompts, None)
    logits = model(torch.cat([prompts, greedy], dim=1)[:, :-1])[:, 5:, :]
    assert torch.equal(logits.argmax(-1), greedy)
    lp = completion_logprobs(model, prompts, greedy)
    torch.testing.assert_close(lp, torch.log_softmax(logits, -1).max(-1).values)


@pytest.mark.parametrize("arm", [{}, {"redit_m": 0.02}, {"sampler": "mopps"}, {"method": "copo"}])
def test_every_arm_runs_seeded(arm):
    cfg = dict(steps=3, eval_every=3, warmup_target=0.0, n_layer=1, n_embd=32, n_train=32, n_test=16, seed=1)
    a = run_addition(AdditionConfig(**cfg, **arm))
    b = run_addition(AdditionConfig(**cfg, **arm))
    assert a["curves"] == b["curves"] and a["curves"]["step"] == [0, 3]
    assert len(a["curves"]["batch_reward"]) == 3 and 0 <= a["summary"]["final_test_accuracy"] <= 1


def test_grpo_step_changes_nothing_when_every_group_is_tied():
    """All-wrong groups carry no GRPO signal: the weights must not move (ReDit's noise would move them)."""
    cfg = dict(steps=1, eval_every=1, warmup_target=0.0, n_layer=1, n_embd=32, n_train=32, n_test=16, seed=2,
               max_grad_norm=1.0)
    out = run_addition(AdditionConfig(**cfg))
    assert out["summary"]["zero_var_group_frac"] == 1.0  # an untrained model never produces a right sum
    assert out["curves"]["grad_norm"] == [0.0]
    dithered = run_addition(AdditionConfig(**cfg, redit_m=0.05))
    assert dithered["curves"]["grad_norm"][0] > 0
    with pytest.raises(ValueError, match="method"):
        run_addition(AdditionConfig(method="ppo"))
