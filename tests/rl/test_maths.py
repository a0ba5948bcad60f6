"""Reward transforms, advantages, ensembles, MoPPS, COPO and weighting maths (no TRL trainer needed)."""

import math

import numpy as np
import pytest
import torch

from lmopt.rl.advantages import answer_entropy, copo_advantages, grpo_advantages, zero_variance_groups
from lmopt.rl.ensemble import EnsembleReward, combine_rewards
from lmopt.rl.mopps import MoPPS, MoPPSSampler, group_success_rates
from lmopt.rl.redit import ALL_SCHEDULES, ReDitReward, dither, noise_scale
from lmopt.rl.weighting import HypervolumeWeighting, gradient_weight_update, hypervolume, pareto_front


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

    a = ReDitReward(f, m=0.05, seed=7)(prompts=None, completions=None)
    b = ReDitReward(f, m=0.05, seed=7)(prompts=None, completions=None)
    assert a == b and a[1] is None and a[0] != 1.0


def test_schedule_values():
    assert noise_scale("constant", 500, m=0.02) == 0.02
    assert noise_scale("sqrt", 300, m=0.02) == pytest.approx(0.02 / math.sqrt(2))
    assert noise_scale("exp", 10, m=0.02) == pytest.approx(0.02 * 0.99**10)
    assert noise_scale("step", 250, m=0.02, step_size=100) == pytest.approx(0.005)
    assert noise_scale("cosine", 0, 100) == pytest.approx(0.1)
    assert noise_scale("cosine", 100, 100) == pytest.approx(1e-3)
    assert noise_scale("cosine", 50, 100) == pytest.approx(0.0505)
    for s in ("constant", "sqrt", "exp", "step", "cosine"):
        assert noise_scale(f"reverse_{s}", 30, 100, m=0.02) == pytest.approx(noise_scale(s, 70, 100, m=0.02))
    assert noise_scale("reverse_exp", 100, 100) > noise_scale("reverse_exp", 0, 100)
    assert len(ALL_SCHEDULES) == 10
    with pytest.raises(ValueError, match="needs the total number of steps"):
        noise_scale("cosine", 3)
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
    # population variance: [2/3, 0, 2]
    torch.testing.assert_close(combine_rewards(r, "uwo", lam=0.5), torch.tensor([2 - 1 / 3, 2.0, 0.0]))
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
    adv, parts = copo_advantages(rewards, answers, 4, return_parts=True)
    assert parts["entropy"].tolist() == pytest.approx([0.0, 0.0, 1.5])
    lam = (1 - 1 / 4) / 2.0
    rg = torch.tensor([1.0, 0.0, 0.5 * (1 - lam * 1.5)])
    torch.testing.assert_close(parts["global_reward"], rg)
    a_g = (rg - rg.mean()) / (rg.std() + 1e-4)
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
    new = gradient_weight_update(torch.tensor([0.5, 0.5]), g, lr=1.0)
    s = torch.tensor([2.0, 3.0]) / 5.0
    torch.testing.assert_close(new, torch.softmax(torch.log(torch.tensor([0.5, 0.5])) + s, 0))
    assert new[1] > new[0]


def test_docstring_examples():
    import doctest

    import lmopt.rl.advantages
    import lmopt.rl.ensemble
    import lmopt.rl.redit
    import lmopt.rl.weighting

    for mod in (lmopt.rl.advantages, lmopt.rl.ensemble, lmopt.rl.redit, lmopt.rl.weighting):
        result = doctest.testmod(mod)
        assert result.attempted >= 1 and result.failed == 0, mod.__name__
