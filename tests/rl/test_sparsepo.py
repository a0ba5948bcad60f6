"""SparsePO: the loss against a token-by-token transcription of the released trainer, and the TRL subclass."""

from __future__ import annotations

import math

import pytest
import torch

from lmopt.rl.sparsepo import TokenMask, sparsepo_loss


def _reference_pair_loss(lr, kl, resp, mu, md, beta, l1u, l1d):
    """One pair (chosen row 0, rejected row 1), loops over tokens: masked reward sums, masked KL sums,
    -log σ(β(u - d)) plus the L1 norms of the masks over response tokens."""
    def total(vals, mask, row):
        return sum(mask[row][t] * vals[row][t] for t in range(len(vals[row])) if resp[row][t])
    u = total(lr, mu, 0) - total(lr, mu, 1)
    d = total(kl, md, 0) - total(kl, md, 1)
    z = beta * (u - d)
    loss = math.log1p(math.exp(-z))
    for mask, lam in ((mu, l1u), (md, l1d)):
        loss += lam * sum(abs(mask[r][t]) for r in (0, 1) for t in range(len(mask[r])) if resp[r][t])
    return loss


def test_loss_matches_the_token_by_token_reference():
    torch.manual_seed(0)
    B, T = 3, 6
    lr, kl = torch.randn(2 * B, T), -torch.rand(2 * B, T)
    resp = (torch.arange(T)[None] >= torch.tensor([1, 2, 0, 3, 1, 2])[:, None]).float()
    mu, md = torch.relu(torch.randn(2 * B, T)), torch.relu(torch.randn(2 * B, T))
    got = sparsepo_loss(lr, kl, resp, mu, md, beta=0.7, l1_reward=0.01, l1_kl=0.02)["loss"]
    for i in range(B):
        rows = [i, B + i]
        want = _reference_pair_loss([lr[r].tolist() for r in rows], [kl[r].tolist() for r in rows],
                                    [resp[r].tolist() for r in rows], [mu[r].tolist() for r in rows],
                                    [md[r].tolist() for r in rows], 0.7, 0.01, 0.02)
        assert got[i].item() == pytest.approx(want, rel=1e-5)
    # no masks and no KL term: the DPO loss on summed log-ratios
    dpo = sparsepo_loss(lr, kl, resp, None, None, beta=0.7, use_kl=False)["loss"]
    s = (lr * resp).sum(-1)
    torch.testing.assert_close(dpo, -torch.nn.functional.logsigmoid(0.7 * (s[:B] - s[B:])))
    with pytest.raises(ValueError, match="B chosen followed by B rejected"):
        sparsepo_loss(lr[:5], kl[:5], resp[:5], None, None)


def test_token_mask_is_non_negative_and_sparse_at_init():
    torch.manual_seed(3)
    mask = TokenMask(16, 3)
    states = [torch.randn(4, 7, 16) for _ in range(3)]
    m = mask(states)
    assert m.shape == (4, 7) and (m >= 0).all()
    assert 0 < (m == 0).float().mean() < 1  # ReLU: some tokens exactly masked out, some kept
    with pytest.raises(ValueError, match="hidden states of 3 layers"):
        mask(states[:2])


pytest.importorskip("trl")

PAIRS = [{"prompt": "2+2=", "chosen": " 4", "rejected": " 5 or so"},
         {"prompt": "Capital of France?", "chosen": " Paris", "rejected": " Rome"},
         {"prompt": "Say hi", "chosen": " hi there", "rejected": " no"}]


def _trainer(tmp_path, cls, steps=1, **kw):
    from datasets import Dataset
    from test_trl import tiny_model  # tests/rl is on sys.path (no package)
    from transformers import AutoTokenizer
    from trl import DPOConfig

    from lmopt.assets import smollm2_dir

    tok = AutoTokenizer.from_pretrained(str(smollm2_dir()))
    args = DPOConfig(output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=3, max_steps=steps,
                     report_to="none", save_strategy="no", bf16=False, beta=0.5, logging_steps=1,
                     learning_rate=1e-2)
    return cls(model=tiny_model(tok, 0), ref_model=tiny_model(tok, 1), args=args,
               train_dataset=Dataset.from_list(PAIRS), processing_class=tok, **kw)


def _batch(tr):
    return tr.data_collator([tr.train_dataset[i] for i in range(len(PAIRS))])


def test_sparsepo_with_neutral_settings_equals_trl_dpo(tmp_path):
    from trl import DPOTrainer

    from lmopt.rl.sparsepo_trainer import SparsePOTrainer

    plain = _trainer(tmp_path / "a", DPOTrainer)
    sparse = _trainer(tmp_path / "b", SparsePOTrainer, mask_on_reward=False, mask_on_kl=False, use_kl=False)
    batch = _batch(plain)
    assert plain.compute_loss(plain.model, batch).item() == pytest.approx(
        sparse.compute_loss(sparse.model, _batch(sparse)).item(), rel=1e-5)


def test_sparsepo_trainer_loss_and_mask_training(tmp_path):
    from lmopt.rl.sparsepo_trainer import SparsePOTrainer

    tr = _trainer(tmp_path, SparsePOTrainer, steps=3, l1_reward=1e-3)
    batch = _batch(tr)
    got = tr.compute_loss(tr.model, batch).item()
    # recompute independently: both models' log-probs, the reference's hidden states, the trainer's mask
    ids, att, cm = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    with torch.no_grad():
        pol = tr.model(input_ids=ids, attention_mask=att).logits.double().log_softmax(-1)
        ref_out = tr.ref_model(input_ids=ids, attention_mask=att, output_hidden_states=True)
        ref = ref_out.logits.double().log_softmax(-1)
        mask = tr.masks["common"]([h[:, :-1] for h in ref_out.hidden_states[1:]]).double()
    B = ids.shape[0] // 2
    losses = []
    for i in range(B):
        rows = [i, B + i]
        lr_rows, kl_rows, resp_rows, m_rows = [], [], [], []
        for r in rows:
            t_ids = ids[r, 1:]
            lr_rows.append([(pol[r, t, t_ids[t]] - ref[r, t, t_ids[t]]).item() for t in range(len(t_ids))])
            kl_rows.append([(ref[r, t].exp() * (pol[r, t] - ref[r, t])).sum().item() for t in range(len(t_ids))])
            resp_rows.append(cm[r, 1:].tolist())
            m_rows.append(mask[r].tolist())
        losses.append(_reference_pair_loss(lr_rows, kl_rows, resp_rows, m_rows, m_rows, 0.5, 1e-3, 0.0))
    assert got == pytest.approx(sum(losses) / B, rel=1e-4)
    before = {k: v.clone() for k, v in tr.masks.state_dict().items()}
    tr.train()
    after = tr.masks.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the optimiser trains the masks
    logs = [h for h in tr.state.log_history if "sparsepo/reward_sparsity" in h]
    assert logs and all(0.0 <= h["sparsepo/reward_sparsity"] <= 1.0 for h in logs)
    tr.save_masks(str(tmp_path / "masks.pt"))
    assert set(torch.load(tmp_path / "masks.pt")["state_dict"]) == set(after)
