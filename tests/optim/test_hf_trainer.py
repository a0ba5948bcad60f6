"""Param-group helpers plugged into the Hugging Face Trainer through ``optimizer_cls_and_kwargs``."""

import pytest
import torch

from lmopt.optim import APOLLO, APOLLOMini, Muon, apollo_for_trainer, muon_for_trainer, muon_param_groups

transformers = pytest.importorskip("transformers")


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n=16, length=12, vocab=50):
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, vocab, (n, length), generator=gen)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "labels": self.x[i]}


def _tiny_gpt2():
    cfg = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    return transformers.GPT2LMHeadModel(cfg)


def test_muon_param_groups_split():
    model = _tiny_gpt2()
    groups = muon_param_groups(model)
    muon_ids = {id(p) for p in groups[0]["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in muon_ids}
    assert groups[0]["use_muon"] and not groups[1]["use_muon"]
    assert all(p.ndim == 2 for p in groups[0]["params"])
    assert not any("wte" in n or "wpe" in n for n in names)
    assert any("c_attn" in n for n in names) and any("mlp" in n for n in names)
    assert groups[1]["lr"] == 3e-4
    n_total = len({id(p) for p in model.parameters()})
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == n_total


@pytest.mark.parametrize("which", ["muon", "apollo", "apollo_mini"])
def test_trainer_uses_helper(tmp_path, which):
    model = _tiny_gpt2()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    if which == "muon":
        cls_kwargs = muon_for_trainer(model, lr=0.01, ns_steps=3, impl="reference")
    else:
        cls_kwargs = apollo_for_trainer(model, mini=which == "apollo_mini", lr=1e-3,
                                        rank=4 if which == "apollo" else 1, impl="reference")
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4,
                                          report_to=[], use_cpu=True, logging_steps=1, save_strategy="no",
                                          learning_rate=1e-3, lr_scheduler_type="constant")
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Tokens(),
                                   optimizer_cls_and_kwargs=cls_kwargs)
    trainer.train()
    opt = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    expected = {"muon": Muon, "apollo": APOLLO, "apollo_mini": APOLLOMini}[which]
    assert type(opt) is expected
    moved = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert any("c_attn" in n for n in moved) and any("wte" in n for n in moved)
    if which != "muon":
        st = [opt.state[p] for p in opt.param_groups[0]["params"]]
        assert all(s["exp_avg"].numel() < p.numel() for s, p in zip(st, opt.param_groups[0]["params"]))
