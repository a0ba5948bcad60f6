"""HAPO's token-level maths against a loop-by-loop transcription of the released rules, and the TRL trainer."""

from __future__ import annotations

import math

import pytest
import torch

from lmopt.rl.hapo import (
    EntropyStats,
    entropy_h,
    entropy_temperature,
    hapo_policy_loss,
    token_group_advantages,
)


def _h_hat_reference(ent, mask, pivot, released=False):
    """Per token, in plain Python: log-entropy minus the nearest pivot-quantile, over the RMS of that
    difference, positives divided by the largest positive, negatives by |most negative| (the released
    code divides them by the most negative value itself, which flips their sign)."""
    vals = sorted(math.log(max(e, 1e-8)) for e, m in zip(ent, mask) if m)
    q = vals[int(round(pivot * (len(vals) - 1)))]
    d = [math.log(max(e, 1e-8)) - q for e in ent]
    s = math.sqrt(max(sum(x * x for x, m in zip(d, mask) if m) / sum(mask), 1e-8))
    h = [x / s for x in d]
    top = max([x for x, m in zip(h, mask) if m and x > 0] + [1e-8])
    bottom = min([x for x, m in zip(h, mask) if m and x < 0] + [-1e-8])
    return [x / top if x > 0 else (x / bottom if released else x / -bottom) for x in h]


def _token_loss_reference(lp, old, a, hh, el, eh, c, alpha, beta):
    """One token of HAPO's loss, branch by branch."""
    r = math.exp(lp - old)
    low = el * (1 - alpha * hh) if hh <= 0 else el
    high = eh * (1 + alpha * hh) if hh > 0 else eh
    inside = 1 - low / 2 < r < 1 + high / 2
    if hh > 0:
        a = a if inside else a * (1 + beta * hh)
    else:
        a = a * (1 + beta * hh) if inside else a
    loss = max(-a * r, -a * min(max(r, 1 - low), 1 + high))
    if a < 0:
        loss = min(loss, -a * c)
    return loss


def test_h_hat_matches_the_reference_and_spans_minus_one_to_one():
    torch.manual_seed(0)
    ent = torch.rand(6, 9) * 4 + 1e-3
    mask = torch.rand(6, 9) > 0.2
    hh, stats = entropy_h(ent, mask, pivot=0.8)
    ref = _h_hat_reference(ent.flatten().tolist(), mask.flatten().tolist(), 0.8)
    got = hh.flatten().tolist()
    for g, r, m in zip(got, ref, mask.flatten().tolist()):
        if m:
            assert g == pytest.approx(r, abs=1e-5)
    assert hh[mask].max().item() == pytest.approx(1.0) and hh[mask].min().item() == pytest.approx(-1.0)
    assert (hh[mask] > 0).float().mean().item() == pytest.approx(0.2, abs=0.06)  # above the 0.8 quantile
    assert isinstance(stats, EntropyStats) and stats.neg_scale > 0 and stats.pos_scale > 0
    rel, _ = entropy_h(ent, mask, pivot=0.8, released_sign=True)
    ref = _h_hat_reference(ent.flatten().tolist(), mask.flatten().tolist(), 0.8, released=True)
    for g, r, m in zip(rel.flatten().tolist(), ref, mask.flatten().tolist()):
        if m:
            assert g == pytest.approx(r, abs=1e-5)
    assert rel[mask].min().item() >= 0.0  # the release: no token is "low-entropy" (ĥ <= 0 only at ties)


def test_policy_loss_matches_the_token_by_token_reference():
    torch.manual_seed(1)
    B, T = 5, 7
    mask = (torch.arange(T)[None] < torch.tensor([7, 5, 3, 6, 2])[:, None]).float()
    logp = -torch.rand(B, T) * 2
    old = logp + 0.4 * torch.randn(B, T)
    adv = torch.randn(B) * 2
    ent = torch.rand(B, T) * 3 + 1e-2
    got, _ = hapo_policy_loss(logp, old, adv, mask, ent, eps_low=0.2, eps_high=0.28, clip_ratio_c=3.0, pivot=0.8,
                              clip_alpha=1.0, adv_beta=1.0)
    hh, _ = entropy_h(ent, mask, 0.8)
    total = n = 0.0
    for i in range(B):
        for t in range(T):
            if mask[i, t]:
                total += _token_loss_reference(logp[i, t].item(), old[i, t].item(), adv[i].item(), hh[i, t].item(),
                                               0.2, 0.28, 3.0, 1.0, 1.0)
                n += 1
    assert got.item() == pytest.approx(total / n, rel=1e-5)
    # with every HAPO switch off it is the clipped PPO token mean (DAPO), dual clip aside
    plain, _ = hapo_policy_loss(logp, old, adv, mask, ent, adaptive_clip=False, adaptive_advantage=False,
                                clip_ratio_c=1e9)
    r = torch.exp(logp - old)
    a = adv[:, None].expand_as(r)
    dapo = torch.maximum(-a * r, -a * r.clamp(0.8, 1.2))
    assert plain.item() == pytest.approx(((dapo * mask).sum() / mask.sum()).item(), rel=1e-6)


def test_token_group_advantages_weigh_responses_by_length_and_fall_back_like_the_release():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    lengths = torch.tensor([10, 2, 2, 2])
    adv = token_group_advantages(rewards, lengths, 4)
    tokens = [1.0] * 10 + [0.0] * 4 + [1.0] * 2  # every token carries its response's reward
    mu = sum(tokens) / len(tokens)
    sd = math.sqrt(sum((x - mu) ** 2 for x in tokens) / len(tokens))
    assert adv.tolist() == pytest.approx([(r - mu) / (sd + 1e-6) for r in rewards.tolist()], rel=1e-5)
    # seven right, one nearly right: the token z-scores stay small, but the padded positions' -mean/std does not
    r = torch.tensor([1.0] * 7 + [0.96])
    lens = torch.tensor([10, 9, 8, 7, 6, 5, 4, 3])
    grpo = (r - r.mean()) / (r.std() + 1e-6)
    assert token_group_advantages(r, lens, 8).tolist() == pytest.approx(grpo.tolist(), rel=1e-5)
    assert token_group_advantages(r, lens, 8, padded=False).tolist() != pytest.approx(grpo.tolist(), rel=1e-3)
    with pytest.raises(ValueError, match="groups of 3"):
        token_group_advantages(rewards, lengths, 3)


def test_entropy_temperature_rises_with_entropy_within_tau():
    logits = torch.stack([torch.tensor([20.0] + [0.0] * 9), torch.zeros(10)])  # peaked, flat
    assert entropy_temperature(logits, 0.7, None).tolist() == pytest.approx([0.7, 0.7])
    ent = torch.tensor([0.01, 0.5, 1.0, 2.3])
    _, stats = entropy_h(ent, torch.ones(4, dtype=torch.bool), 0.5)
    t = entropy_temperature(logits, 1.0, stats, tau=0.05)
    assert 0.95 - 1e-6 <= t[0] < 1.0 < t[1] <= 1.05 + 1e-6


pytest.importorskip("trl")


def _run(tmp_path, cls, steps=1, **kw):
    from datasets import Dataset
    from test_trl import grpo_args, parity, tiny_model  # tests/rl is on sys.path (no package)
    from transformers import AutoTokenizer

    from lmopt.assets import smollm2_dir

    tok = AutoTokenizer.from_pretrained(str(smollm2_dir()))
    ds = Dataset.from_list([{"prompt": f"Count to {i}:"} for i in range(8)])
    args = grpo_args(tmp_path, steps=steps, loss_type="dapo", per_device_train_batch_size=4, num_generations=4,
                     learning_rate=1e-3)
    trainer = cls(model=tiny_model(tok), reward_funcs=[parity], args=args, train_dataset=ds,
                  processing_class=tok, **kw)
    trainer.train()
    return trainer


def test_hapo_trainer_with_every_switch_off_equals_trl_dapo(tmp_path):
    from trl import GRPOTrainer

    from lmopt.rl.hapo_trainer import HAPOGRPOTrainer

    torch.manual_seed(0)
    plain = _run(tmp_path / "a", GRPOTrainer)
    torch.manual_seed(0)
    hapo = _run(tmp_path / "b", HAPOGRPOTrainer, adaptive_temperature=False, token_group_advantage=False,
                adaptive_clip=False, adaptive_advantage=False)
    for (n, p), (_, q) in zip(plain.model.named_parameters(), hapo.model.named_parameters()):
        torch.testing.assert_close(p, q, msg=n)
    changed = sum(float((p - q).abs().max()) for p, q in zip(
        plain.model.parameters(), _run(tmp_path / "c", HAPOGRPOTrainer).model.parameters()))
    assert changed > 0  # and with HAPO on, the update differs


def test_hapo_trainer_samples_with_entropy_temperatures_after_the_first_step(tmp_path):
    from lmopt.rl.hapo_trainer import HAPOGRPOTrainer

    trainer = _run(tmp_path, HAPOGRPOTrainer, steps=2, hapo_tau=0.05)
    assert trainer.entropy_stats is not None
    temps = [h["hapo/temperature_mean"] for h in trainer.state.log_history if "hapo/temperature_mean" in h]
    assert temps and all(0.95 - 1e-6 <= t <= 1.05 + 1e-6 for t in temps)
    assert any("hapo/clip_frac" in h for h in trainer.state.log_history)


def test_hapo_offers_its_temperature_to_a_tool_rollout(tmp_path):
    from lmopt.rl.hapo_trainer import EntropyTemperatureProcessor, HAPOGRPOTrainer
    from lmopt.rl.tool_rollout import CalcToolRollout

    seen = []

    class Recording(CalcToolRollout):
        def __call__(self, prompts, trainer):
            seen.append(list(trainer.generation_logits_processors))
            return super().__call__(prompts, trainer)

    trainer = _run(tmp_path, HAPOGRPOTrainer, steps=2, rollout_func=Recording(max_calls=1))
    assert seen[0] == []  # no entropy statistics before the first optimisation step
    assert len(seen[1]) == 1 and isinstance(seen[1][0], EntropyTemperatureProcessor)
    assert trainer.generation_logits_processors == []  # offered for the rollout only
    temps = [h["hapo/temperature_mean"] for h in trainer.state.log_history if "hapo/temperature_mean" in h]
    assert temps and all(0.95 - 1e-6 <= t <= 1.05 + 1e-6 for t in temps)
