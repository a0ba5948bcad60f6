"""Reward transforms, advantages, ensembles, MoPPS, COPO and weighting maths (no TRL trainer needed)."""

import math

import numpy as np
import pytest
import torch

from lmopt.rl.advantages import (
    answer_entropy,
    copo_advantages,
    copo_settings,
    grpo_advantages,
    zero_variance_groups,
)
from lmopt.rl.ensemble import EnsembleReward, combine_rewards
from lmopt.rl.mopps import MoPPS, MoPPSSampler, group_success_rates
from lmopt.rl.redit import ALL_SCHEDULES, ReDitReward, dither, noise_scale
from lmopt.rl.weighting import (
    HypervolumeWeighting,
    gradient_scores,
    gradient_weight_update,
    hypervolume,
    pareto_front,
)


def trl_reference_advantages(rpf, weights, G, scale):
    """TRL's own code path, using TRL's nanstd (the library under test re-implements it)."""
    from trl.trainer.utils import nanstd

    unscorable = torch.isnan(rpf).all(dim=1)
    r = (rpf * weights.unsqueeze(0)).nansum(dim=1)
    r[unscorable] = torch.nan
    mean = torch.nanmean(r.view(-1, G), dim=1).repeat_interleave(G)
    if scale in ("group", "none"):
        std = nanstd(r.view(-1, G), dim=1).repeat_interleave(G)
    else:
        std = nanstd(r).expand_as(r)
    adv = r - mean
    if scale != "none":
        adv = adv / (std + 1e-4)
    return torch.nan_to_num(adv, nan=0.0)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_advantages_match_trl(scale):
    g = torch.Generator().manual_seed(0)
    rpf = torch.randint(0, 3, (24, 2), generator=g).float()
    rpf[3, 1] = float("nan")
    rpf[5] = float("nan")  # unscorable row
    rpf[8:12] = 1.0  # a zero-variance group
    w = torch.tensor([1.0, 0.5])
    ours = grpo_advantages(rpf, 4, w, scale)
    ref = trl_reference_advantages(rpf.clone(), w, 4, scale)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    assert ours[5] == 0.0
    assert torch.all(ours[8:12] == 0.0)


def test_grpo_advantage_errors():
    with pytest.raises(ValueError, match="multiple of num_generations"):
        grpo_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="scale_rewards"):
        grpo_advantages(torch.zeros(4), 2, scale_rewards="std")
    with pytest.raises(ValueError, match="one weight per reward function"):
        grpo_advantages(torch.zeros(4, 2), 2, [1.0])


def test_zero_noise_dither_is_identity_and_matches_trl_advantages():
    calls = []

    def correct(prompts, completions, **kw):
        calls.append(kw.get("trainer_state"))
        return [1.0 if c == "4" else 0.0 for c in completions]

    wrapped = ReDitReward(correct, m=0.0, seed=3)
    comps = ["4", "5", "4", "4", "3", "3", "3", "3"]
    out = wrapped(prompts=["2+2"] * 8, completions=comps)
    assert out == correct(["2+2"] * 8, comps)
    assert wrapped.__name__ == "correct"
    assert wrapped.history[-1]["noise_scale"] == 0.0


def test_redit_noise_statistics_and_logging():
    class State:
        global_step, max_steps = 0, 100

    logged = {}
    wrapped = ReDitReward(lambda prompts, completions, **kw: [0.0, 1.0] * 20000, m=0.1, distribution="uniform",
                          reward_range=(0.0, 2.0), seed=0)
    out = torch.tensor(wrapped(prompts=None, completions=None, trainer_state=State(),
                               log_metric=lambda k, v: logged.__setitem__(k, v)))
    noise = out - torch.tensor([0.0, 1.0] * 20000)
    assert noise.abs().max() <= 0.2 + 1e-6  # U(-m R, m R) with R = 2
    assert abs(float(noise.std()) - 0.2 / math.sqrt(3)) < 0.005
    assert logged["redit/<lambda>/noise_scale"] == pytest.approx(0.1)
    assert logged["redit/<lambda>/pre_noise_std"] == pytest.approx(0.5, abs=1e-3)
    g = dither(torch.zeros(40000), 0.1, 2.0, "gaussian", torch.Generator().manual_seed(1))
    assert abs(float(g.std()) - 0.2 / math.sqrt(3)) < 0.005
    nan_in = dither(torch.tensor([float("nan"), 1.0]), 0.1, generator=torch.Generator().manual_seed(0))
    assert torch.isnan(nan_in[0]) and not torch.isnan(nan_in[1])


def test_redit_seeded_and_keeps_none():
    def f(prompts, completions, **kw):
        return [1.0, None, 0.0]

    a = ReDitReward(f, m=0.05, seed=7, stream="f", rank=0)(prompts=None, completions=None)
    b = ReDitReward(f, m=0.05, seed=7, stream="f", rank=0)(prompts=None, completions=None)
    assert a == b and a[1] is None and a[0] != 1.0


def test_redit_streams_differ_per_reward_and_rank_and_follow_the_run_seed():
    """Two dithered reward functions must add independent noise, and so must two ranks (a shared default
    seed made the summed noise std 2x the per-function variance instead of 1x)."""
    n = 20000

    def zeros(prompts, completions, **kw):
        return [0.0] * n

    def zeros_too(prompts, completions, **kw):
        return [0.0] * n

    a = torch.tensor(ReDitReward(zeros, m=0.05, distribution="gaussian")(prompts=None, completions=None))
    b = torch.tensor(ReDitReward(zeros_too, m=0.05, distribution="gaussian")(prompts=None, completions=None))
    per_fn = 0.05 / math.sqrt(3)
    assert abs(float((a + b).std()) - per_fn * math.sqrt(2)) < 0.002  # independent: sqrt(2), shared: 2
    assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.03
    # the same function wrapped twice in one process gets two streams too
    c = torch.tensor(ReDitReward(zeros, m=0.05, seed=5)(prompts=None, completions=None))
    d = torch.tensor(ReDitReward(zeros, m=0.05, seed=5)(prompts=None, completions=None))
    assert not torch.equal(c, d)
    # ranks differ; a given (run seed, stream, rank) is reproducible
    r0 = ReDitReward(zeros, m=0.05, seed=9, stream="acc", rank=0)(prompts=None, completions=None)
    r1 = ReDitReward(zeros, m=0.05, seed=9, stream="acc", rank=1)(prompts=None, completions=None)
    r0_again = ReDitReward(zeros, m=0.05, seed=9, stream="acc", rank=0)(prompts=None, completions=None)
    assert r0 == r0_again and r0 != r1


def test_redit_rank_is_read_from_the_environment(monkeypatch):
    def zeros(prompts, completions, **kw):
        return [0.0] * 64

    monkeypatch.setenv("RANK", "3")
    env = ReDitReward(zeros, m=0.05, seed=1, stream="k")(prompts=None, completions=None)
    explicit = ReDitReward(zeros, m=0.05, seed=1, stream="k", rank=3)(prompts=None, completions=None)
    other = ReDitReward(zeros, m=0.05, seed=1, stream="k", rank=0)(prompts=None, completions=None)
    assert env == explicit != other


def test_redit_logs_the_clean_rewards():
    logged = {}
    prompts = ["a"] * 4 + ["b"] * 4 + ["c"] * 4
    clean = [1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    wrapped = ReDitReward(lambda prompts, completions, **kw: clean, m=0.1)
    out = wrapped(prompts=prompts, completions=[""] * 12, log_metric=lambda k, v: logged.__setitem__(k, v))
    assert logged["redit/<lambda>/clean_mean"] == pytest.approx(5 / 12)
    assert logged["redit/<lambda>/clean_frac_zero_std"] == pytest.approx(2 / 3)  # groups a and c are tied
    assert len(set(out)) == 12  # the dithered rewards are all distinct: TRL would log 0 tied groups


def test_schedule_values():
    assert noise_scale("constant", 500, m=0.02) == 0.02
    assert noise_scale("sqrt", 300, m=0.02) == pytest.approx(0.02 / math.sqrt(2))
    assert noise_scale("exp", 10, m=0.02) == pytest.approx(0.02 * 0.99**10)
    # the authors' values: exp floored at 1e-3, step halving at 2000/4000/6000/8000, cosine over 8000 steps
    assert noise_scale("exp", 1000, m=0.02) == pytest.approx(1e-3)  # 0.02 * 0.99**1000 = 8.6e-7
    assert noise_scale("exp", 1000, m=0.02, exp_floor=0.0) == pytest.approx(0.02 * 0.99**1000)
    assert [noise_scale("step", t, m=0.02) for t in (0, 1999, 2000, 4000, 7999, 8000, 20000)] == pytest.approx(
        [0.02, 0.02, 0.01, 0.005, 0.0025, 0.00125, 0.00125])
    assert noise_scale("step", 250, m=0.02, step_size=100) == pytest.approx(0.005)
    assert noise_scale("step", 250, m=0.02, step_milestones=(100, 200)) == pytest.approx(0.005)
    assert noise_scale("cosine", 0) == pytest.approx(0.1)
    assert noise_scale("cosine", 4000) == pytest.approx(0.0505)
    assert noise_scale("cosine", 8000) == noise_scale("cosine", 12000) == pytest.approx(1e-3)
    assert noise_scale("cosine", 50, 100, cosine_horizon=None) == pytest.approx(0.0505)
    for s in ("constant", "sqrt", "exp", "step", "cosine"):
        assert noise_scale(f"reverse_{s}", 3000, 10000, m=0.02) == pytest.approx(noise_scale(s, 7000, 10000, m=0.02))
    assert noise_scale("reverse_exp", 100, 100) > noise_scale("reverse_exp", 0, 100)
    assert len(ALL_SCHEDULES) == 10
    with pytest.raises(ValueError, match="needs the total number of steps"):
        noise_scale("cosine", 3, cosine_horizon=None)
    with pytest.raises(ValueError, match="needs the total number of steps"):
        noise_scale("reverse_sqrt", 3)
    with pytest.raises(ValueError, match="step_milestones"):
        noise_scale("step", 3, step_milestones=(400, 200))
    with pytest.raises(TypeError, match="unknown ReDit schedule argument"):
        ReDitReward(lambda **k: [], schedule="step", step_sise=10)
    with pytest.raises(ValueError, match="unknown ReDit schedule"):
        ReDitReward(lambda **k: [], schedule="linear")

    async def async_reward(**k):
        return []

    with pytest.raises(TypeError, match="synchronous"):
        ReDitReward(async_reward)


def test_ensembles():
    r = torch.tensor([[1.0, 2.0, 0.0], [3.0, 2.0, 0.0], [2.0, 2.0, 3.0]])
    torch.testing.assert_close(combine_rewards(r, "mean"), torch.tensor([2.0, 2.0, 1.0]))
    torch.testing.assert_close(combine_rewards(r, "wco"), torch.tensor([1.0, 2.0, 0.0]))
    # unbiased variance (the authors' PPO code, torch.var): [1, 0, 3]; population (the paper's equation): [2/3, 0, 2]
    torch.testing.assert_close(combine_rewards(r, "uwo", lam=0.5), torch.tensor([2 - 0.5, 2.0, 1 - 1.5]))
    torch.testing.assert_close(combine_rewards(r, "uwo", lam=0.5), r.mean(0) - 0.5 * torch.var(r, dim=0))
    torch.testing.assert_close(combine_rewards(r, "uwo", lam=0.5, variance="population"),
                               torch.tensor([2 - 1 / 3, 2.0, 0.0]))
    with pytest.raises(ValueError, match="at least 2 ensemble members"):
        EnsembleReward([lambda prompts, completions, **k: [1.0]], mode="uwo")
    members = [lambda prompts, completions, **k: [1.0, None], lambda prompts, completions, **k: [3.0, 2.0]]
    ens = EnsembleReward(members, mode="wco")
    assert ens(prompts=None, completions=None) == [1.0, None]
    with pytest.raises(ValueError, match="ensemble mode"):
        EnsembleReward(members, mode="max")
    with pytest.raises(ValueError, match="lam"):
        combine_rewards(r, "uwo", lam=-1)


def test_mopps_posterior_update_formula():
    m = MoPPS(3, lam=0.9, alpha0=1.0, beta0=2.0)
    m.update([0, 2], [0.25, 1.0], 8)
    assert m.alpha[0] == pytest.approx(0.9 * 1 + 0.1 * 1 + 2) and m.beta[0] == pytest.approx(0.9 * 2 + 0.1 * 2 + 6)
    m.update([0], [0.5], 4)
    a1, b1 = 3.0, 8.0
    assert m.alpha[0] == pytest.approx(0.9 * a1 + 0.1 * 1 + 2) and m.beta[0] == pytest.approx(0.9 * b1 + 0.1 * 2 + 2)
    assert m.alpha[1] == 1.0 and m.beta[1] == 2.0  # untouched
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        m.update([0], [1.5], 4)
    with pytest.raises(IndexError):
        m.update([3], [0.5], 4)


def test_mopps_selects_informative_prompts():
    rng = np.random.default_rng(0)
    true_p = np.concatenate([np.zeros(40), np.ones(40), np.full(20, 0.5)])  # 20 informative prompts
    m = MoPPS(100, seed=0)
    informative_hits = []
    for t in range(60):
        chosen = m.select(10)
        rates = rng.binomial(8, true_p[chosen]) / 8
        m.update(chosen, rates, 8)
        if t >= 30:
            informative_hits.append(np.mean(true_p[chosen] == 0.5))
    assert np.mean(informative_hits) > 0.8  # uniform sampling would give 0.2


def test_mopps_candidates_are_epochwise_slices_of_a_shuffled_pool():
    """The authors' candidates: int(ratio * B) prompts per batch taken in turn from a shuffled pass over the pool,
    a new pass when the rest cannot fill a candidate set; ratio None = the whole pool."""
    m = MoPPS(10, candidate_ratio=1.5, seed=3)
    first = [m.candidates(2) for _ in range(3)]  # 3 candidates each: 9 of the 10 prompts, then a new pass
    assert all(len(c) == 3 for c in first)
    assert len(set(np.concatenate(first).tolist())) == 9
    assert len(set(m.candidates(2).tolist()) & set(np.concatenate(first).tolist())) <= 3  # a fresh permutation
    chosen = m.select(2)
    assert len(chosen) == 2 and set(chosen) <= set(m._order[m._pos - 3:m._pos].tolist())
    assert MoPPS(10, candidate_ratio=None).candidates(2).tolist() == list(range(10))
    assert MoPPS(10).candidates(2).size == 10  # 16 * 2 capped at the pool
    state = m.state_dict()
    again = MoPPS(10, candidate_ratio=1.5)
    again.load_state_dict(state)
    assert again.select(2) == m.select(2)
    with pytest.raises(ValueError, match="candidate_ratio"):
        MoPPS(10, candidate_ratio=0.5)


def test_mopps_sampler_repeat_layout():
    m = MoPPS(7, seed=1)
    s = MoPPSSampler(m, mini_repeat_count=2, batch_size=3, repeat_count=2)
    out = list(s)
    assert len(out) == len(s) == 2 * 3 * 2 * 2
    first = out[:12]
    chunk = first[0:6:2]
    assert first == [i for i in chunk for _ in range(2)] * 2
    assert len(set(chunk)) == 3
    assert group_success_rates(torch.tensor([1.0, 0.0, 1.0, 1.0]), 2).tolist() == [0.5, 1.0]
    assert group_success_rates(torch.tensor([0.7, 0.2]), 2, threshold=0.5).tolist() == [0.5]
    with pytest.raises(ValueError, match="success_threshold"):
        group_success_rates(torch.tensor([2.0, 0.0]), 2)


def test_copo_on_hand_made_groups():
    rewards = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    answers = ["4", "4", "4", "4", "5", "5", "5", "5", "4", "7", "4", "8"]
    adv, parts = copo_advantages(rewards, answers, 4, return_parts=True, **copo_settings("paper"))
    assert parts["entropy"].tolist() == pytest.approx([0.0, 0.0, 1.5])
    lam = (1 - 1 / 4) / 2.0
    rg = torch.tensor([1.0, 0.0, 0.5 * (1 - lam * 1.5)])
    torch.testing.assert_close(parts["global_reward"], rg)
    a_g = (rg - rg.mean()) / (rg.std() + 1e-6)
    w = torch.sigmoid(torch.tensor([0.0, 0.0, 1.5]) - 0.5)
    local = grpo_advantages(rewards, 4)
    expected = (1 - w.repeat_interleave(4)) * a_g.repeat_interleave(4) + w.repeat_interleave(4) * local
    torch.testing.assert_close(adv, expected)
    # the all-correct group now gets a positive signal and the all-wrong group a negative one
    assert torch.all(adv[:4] > 0.4) and torch.all(adv[4:8] < -0.4)
    assert torch.all(local[:8] == 0)
    assert answer_entropy(["a", "b"]) == 1.0
    with pytest.raises(ValueError, match="one answer per completion"):
        copo_advantages(rewards, answers[:-1], 4)
    with pytest.raises(ValueError, match="1 prompt group"):
        copo_advantages(rewards[:4], answers[:4], 4)
    with pytest.raises(ValueError, match="unknown COPO preset"):
        copo_settings("fast")
    with pytest.raises(ValueError, match="unknown COPO setting"):
        copo_settings("paper", gamma=3)


def _official_copo_blend_grad(logp, old_logp, adv_local, adv_global, entropy, reward, k, b, clip=0.2):
    """The authors' soft-with-zero COPO loss, transcribed: two clipped PPO losses (one per advantage), mixed per
    sample with weight ``sigmoid(k (H - b)) * [reward != 0]`` on the local one; returns d loss / d logp."""
    logp = logp.clone().requires_grad_(True)
    ratio = torch.exp(logp - old_logp)

    def clipped(a):
        return torch.maximum(-a * ratio, -a * ratio.clamp(1 - clip, 1 + clip))

    gate = torch.sigmoid(k * (entropy - b)) * (reward != 0).float()
    loss = (clipped(adv_global) * (1 - gate) + clipped(adv_local) * gate).mean()
    (g,) = torch.autograd.grad(loss, logp)
    return g


def test_copo_released_matches_the_authors_loss_blend():
    """soft-with-zero, k=5, b=1, no consistency factor: the blended advantage in one on-policy PG loss gives the
    gradient of the authors' two-loss blend; the global z-score is over every prompt group of the batch."""
    gen = torch.Generator().manual_seed(0)
    G, n_groups = 5, 6
    rewards = (torch.rand(G * n_groups, generator=gen) < 0.5).float()
    answers = [str(int(torch.randint(0, 3, (1,), generator=gen))) for _ in range(G * n_groups)]
    adv, parts = copo_advantages(rewards, answers, G, return_parts=True)  # defaults = the released run
    assert copo_settings() == {"gate": "soft-with-zero", "k": 5.0, "b": 1.0, "consistency": False}
    # the authors' global reward: mean reward per group (no consistency factor), z-scored over the groups
    rg = rewards.view(n_groups, G).mean(dim=1)
    a_global = ((rg - rg.mean()) / (rg.std() + 1e-6)).repeat_interleave(G)
    entropy = parts["entropy"].repeat_interleave(G)
    logp = torch.randn(G * n_groups, generator=gen)
    official = _official_copo_blend_grad(logp, logp.detach(), parts["local"], a_global, entropy, rewards, 5.0, 1.0)
    lp = logp.clone().requires_grad_(True)
    (ours,) = torch.autograd.grad((-adv * torch.exp(lp - logp)).mean(), lp)
    torch.testing.assert_close(ours, official)
    # a zero-reward sample learns from the global advantage alone
    zero = rewards == 0
    torch.testing.assert_close(adv[zero], a_global[zero])
    # the gate matters: the paper's soft gate gives a different gradient on the same batch
    soft = copo_advantages(rewards, answers, G, gate="soft")
    assert (soft - adv).abs().max() > 0.05


def test_zero_variance_groups():
    assert zero_variance_groups(torch.tensor([1.0, 1.0, 0.0, 1.0]), 2).tolist() == [True, False]


def test_hypervolume_and_weightings():
    assert hypervolume([[1.0, 2.0], [2.0, 1.0]], [0.0, 0.0]) == 3.0
    assert hypervolume([[1.0, 1.0, 1.0], [2.0, 0.5, 0.5]], [0.0, 0.0, 0.0]) == pytest.approx(1.0 + 0.5 * 0.5)
    assert pareto_front(torch.tensor([[1.0, 1.0], [0.5, 0.5], [2.0, 0.0]])).tolist() == [[1.0, 1.0], [2.0, 0.0]]
    hv = HypervolumeWeighting([0.5, 0.5])
    w = hv.update([0.5, 0.5])
    assert hv.meta == pytest.approx(0.5 + 1.5 * math.tanh(0.25))
    torch.testing.assert_close(w, torch.tensor([0.5, 0.5]) * hv.meta)
    hv.update([0.4, 0.4])  # dominated: no gain
    assert hv.meta == pytest.approx(0.5)
    g = [torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])]
    new = gradient_weight_update(torch.tensor([0.5, 0.5]), g, lr=1.0, normaliser="sum-norm")
    s = torch.tensor([2.0, 3.0]) / 5.0
    torch.testing.assert_close(new, torch.softmax(torch.log(torch.tensor([0.5, 0.5])) + s, 0))
    assert new[1] > new[0]


def _official_weight_step(weights, grads, lr_t, reg, max_norm):
    """The authors' gradient-based update, transcribed: every objective's flat gradient clipped to max_norm (their
    actor's clip_grad_norm_), scores = row sums of the Gram matrix G G^T, log-weights moved by lr_t * scores / reg,
    then a softmax."""
    clipped = []
    for g in grads:
        g = g.clone().double()
        norm = g.norm()
        clipped.append(g * min(1.0, max_norm / (float(norm) + 1e-6)))
    gm = torch.stack(clipped)
    scores = (gm @ gm.T).sum(dim=-1)
    return torch.softmax(torch.log(weights.double()) + lr_t * scores / reg, dim=-1).float()


def test_gradient_weighting_matches_the_authors_update():
    gen = torch.Generator().manual_seed(0)
    w = torch.tensor([0.334, 0.333, 0.333])
    for _ in range(30):
        grads = [torch.randn(50, generator=gen) * scale for scale in (0.3, 2.0, 5.0)]  # two get clipped
        ours = gradient_weight_update(w, grads, lr=1e-6, reg=1e-5, max_grad_norm=1.0)
        torch.testing.assert_close(ours, _official_weight_step(w, grads, 1e-6, 1e-5, 1.0))
        w = ours
    assert not torch.allclose(w, torch.tensor([0.334, 0.333, 0.333]), atol=1e-3)
    # averaged scores (their weight_accumulation_steps) give the same step as the gradients they came from
    grads = [torch.randn(8, generator=gen) for _ in range(2)]
    torch.testing.assert_close(gradient_weight_update(torch.tensor([0.5, 0.5]), None, 1e-6,
                                                      scores=gradient_scores(grads, 1.0)),
                               gradient_weight_update(torch.tensor([0.5, 0.5]), grads, 1e-6))
    with pytest.raises(ValueError, match="normaliser"):
        gradient_weight_update(torch.tensor([0.5, 0.5]), grads, normaliser="rho")


def test_docstring_examples():
    import doctest

    import lmopt.rl.advantages
    import lmopt.rl.answers
    import lmopt.rl.ensemble
    import lmopt.rl.redit
    import lmopt.rl.weighting

    for mod in (lmopt.rl.advantages, lmopt.rl.answers, lmopt.rl.ensemble, lmopt.rl.redit, lmopt.rl.weighting):
        result = doctest.testmod(mod)
        assert result.attempted >= 1 and result.failed == 0, mod.__name__
