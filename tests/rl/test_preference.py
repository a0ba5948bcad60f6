"""SimPO and f-DPO: TRL's trainers, configured by lmopt, compute the papers' losses on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from lmopt.rl.preference import SIMPO_PRESETS, f_prime, fdpo_config, fdpo_loss, simpo_config, simpo_loss

pytest.importorskip("trl")

PAIRS = [{"prompt": "2+2=", "chosen": " 4", "rejected": " 5 or so"},
         {"prompt": "Capital of France?", "chosen": " Paris", "rejected": " Rome"},
         {"prompt": "Say hi", "chosen": " hi there", "rejected": " no"}]


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from lmopt.assets import smollm2_dir

    return AutoTokenizer.from_pretrained(str(smollm2_dir()))


def tiny(tok, seed):
    from test_trl import tiny_model  # tests/rl is on sys.path (no package): pytest's default import mode

    return tiny_model(tok, seed).eval()


def seq_logp(model, prompt_ids, completion_ids, average=False):
    """log π(completion | prompt), summed (or averaged) over the completion tokens, in full precision."""
    ids = torch.tensor([list(prompt_ids) + list(completion_ids)])
    with torch.no_grad():
        logits = model(ids).logits[0].double()
    logp = torch.log_softmax(logits[:-1], dim=-1)
    pos = range(len(prompt_ids) - 1, ids.shape[1] - 1)
    vals = torch.stack([logp[p, ids[0, p + 1]] for p in pos])
    return vals.mean() if average else vals.sum()


def common(tmp_path):
    return dict(output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=3, max_steps=1,
                report_to="none", save_strategy="no", bf16=False)


@pytest.mark.parametrize("divergence,alpha", [("reverse_kl", 0.5), ("forward_kl", 0.5), ("js", 0.5),
                                              ("alpha", 0.3), ("alpha", 0.8)])
def test_dpo_trainer_with_fdpo_config_computes_the_papers_loss(tok, tmp_path, divergence, alpha):
    from datasets import Dataset
    from trl import DPOTrainer

    policy, ref = tiny(tok, 0), tiny(tok, 1)  # a reference unlike the policy: log-ratios far from 0
    args = fdpo_config(divergence, alpha=alpha, beta=0.7, **common(tmp_path))
    tr = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(PAIRS),
                    processing_class=tok)
    rows = [tr.train_dataset[i] for i in range(len(PAIRS))]
    got = tr.compute_loss(tr.model, tr.data_collator(rows)).item()
    want = []
    for r in rows:
        lp = [seq_logp(m, r["prompt_ids"], r[k]) for m in (policy, ref) for k in ("chosen_ids", "rejected_ids")]
        want.append(fdpo_loss(lp[0], lp[1], lp[2], lp[3], beta=0.7, divergence=divergence, alpha=alpha))
    assert got == pytest.approx(torch.stack(want).mean().item(), rel=1e-4)


def test_simpo_config_makes_cpo_trainer_compute_the_simpo_loss(tok, tmp_path):
    from datasets import Dataset
    from trl.experimental.cpo import CPOTrainer

    policy = tiny(tok, 2)
    args = simpo_config(beta=2.5, gamma_beta_ratio=0.4, **common(tmp_path), remove_unused_columns=False)
    assert (args.cpo_alpha, args.simpo_gamma, args.loss_type) == (0.0, 2.5 * 0.4, "simpo")
    tr = CPOTrainer(model=policy, args=args, train_dataset=Dataset.from_list(PAIRS), processing_class=tok)
    rows = [tr.train_dataset[i] for i in range(len(PAIRS))]
    got = tr.compute_loss(tr.model, tr.data_collator(rows)).item()
    want = []
    for r in rows:
        n_prompt = len(r["prompt_input_ids"])
        avg = [seq_logp(policy, r[f"{k}_input_ids"][:n_prompt], r[f"{k}_input_ids"][n_prompt:], average=True)
               for k in ("chosen", "rejected")]
        want.append(simpo_loss(avg[0], avg[1], beta=2.5, gamma_beta_ratio=0.4))
    assert got == pytest.approx(torch.stack(want).mean().item(), rel=1e-4)
    # TRL's own defaults are not SimPO: a behaviour-cloning term and an absolute margin
    from trl.experimental.cpo import CPOConfig

    plain = CPOConfig(output_dir=str(tmp_path), loss_type="simpo", use_cpu=True, bf16=False)
    assert plain.cpo_alpha != 0.0 and plain.beta != 2.0


def test_divergence_formulas_against_the_paper_table():
    u = torch.tensor([0.25, 1.0, 3.0], dtype=torch.float64)
    lu = torch.log(u)
    torch.testing.assert_close(f_prime(lu, "reverse_kl"), torch.log(u) + 1)
    torch.testing.assert_close(f_prime(lu, "forward_kl"), -1 / u)
    torch.testing.assert_close(f_prime(lu, "js"), torch.log(2 * u / (1 + u)))
    torch.testing.assert_close(f_prime(lu, "alpha", 0.3), (1 - u ** -0.3) / 0.3)
    # the α-divergence interpolates: α → 0 is reverse KL, α → 1 forward KL (up to constants)
    d = lu[2] - lu[0]
    rev, fwd = f_prime(lu, "reverse_kl"), f_prime(lu, "forward_kl")
    for a, target in ((1e-4, rev), (1 - 1e-4, fwd)):
        g = f_prime(lu, "alpha", a)
        assert (g[2] - g[0]).item() == pytest.approx((target[2] - target[0]).item(), rel=1e-3), (a, d)
    # SimPO with ε = 0 at a zero margin: log 2 at Δ = γ/β
    assert simpo_loss(torch.tensor(0.3), torch.tensor(0.2), beta=2.0, gamma_beta_ratio=0.1).item() == \
        pytest.approx(math.log(2))


def test_configs_validate_and_presets_are_the_released_values(tmp_path):
    cpu = {"output_dir": str(tmp_path), "use_cpu": True, "bf16": False}
    with pytest.raises(ValueError, match=r"alpha must lie in \(0.0, 1.0\)"):
        fdpo_config("alpha", alpha=1.0, **cpu)
    with pytest.raises(ValueError, match="divergence must be one of"):
        fdpo_config("kl", **cpu)
    with pytest.raises(ValueError, match="pass divergence= and alpha="):
        fdpo_config("js", f_divergence_type="forward_kl", **cpu)
    assert fdpo_config("alpha", alpha=0.2, **cpu).f_alpha_divergence_coef == pytest.approx(0.8)
    with pytest.raises(ValueError, match="beta must lie in"):
        simpo_config(beta=0.0, **cpu)
    with pytest.raises(ValueError, match="simpo_gamma is set by simpo_config"):
        simpo_config(simpo_gamma=1.0, **cpu)
    with pytest.raises(ValueError, match="unknown SimPO preset"):
        simpo_config(preset="llama-9", **cpu)
    c = simpo_config(preset="gemma-2-9b-it", **cpu)
    assert (c.beta, c.simpo_gamma, c.learning_rate, c.lr_scheduler_type) == (10.0, 5.0, 8e-7, "cosine")
    assert simpo_config(**cpu).simpo_gamma == pytest.approx(0.5)  # β 2.0 × γ/β 0.25
    assert SIMPO_PRESETS["llama-3-8b-instruct-v2"] == {"beta": 10.0, "gamma_beta_ratio": 0.3, "learning_rate": 1e-6}


def test_self_preference_pairs_pair_right_with_wrong_answers_only():
    from lmopt.rl.preference import self_preference_pairs

    rows = self_preference_pairs(["p1", "p2", "p3"], [[" 5", " 6", " 5", " 7"], [" 1", " 1"], [" 2", " 3"]],
                                 [[1, 0, 1, 0], [1, 1], [0, 1]], pairs_per_prompt=2)
    assert [r["prompt"] for r in rows] == ["p1", "p3"]  # p2 has no wrong answer
    assert {r["chosen"] for r in rows[:1]} == {" 5"} and {r["rejected"] for r in rows} >= {" 2"}
    assert all(r["chosen"] in (" 5", " 3") and r["rejected"] in (" 6", " 7", " 2") for r in rows)
    assert len(self_preference_pairs(["p1"], [[" 5", " 6", " 7"]], [[1, 0, 0]], pairs_per_prompt=2)) == 1
    with pytest.raises(ValueError, match="differ in length"):
        self_preference_pairs(["p"], [], [])
