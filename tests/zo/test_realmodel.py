"""One small check on the embedded SmolLM2-135M: a ZO step on its top layer restores every weight exactly."""

import pytest
import torch

from lmopt.zo import ZOSGD, named_zo_parameters


@pytest.mark.realmodel
def test_smollm2_zo_step_exact_restore_and_update():
    from lmopt.assets import load_causal_lm

    model, tok = load_causal_lm()
    ids = torch.tensor([tok.encode("Tweet: self-driving cars are great\nSentiment: positive")])
    named = named_zo_parameters(model, include=[r"layers\.29\.mlp\."])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    closure = lambda: model(input_ids=ids, labels=ids).loss  # noqa: E731
    opt = ZOSGD([p for _, p in named], lr=0.0, mu=1e-3)
    opt.step(closure)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert opt.last_step["projected_grads"][0] != 0.0
    opt.param_groups[0]["lr"] = 1e-4
    opt.step(closure)
    chosen = {n for n, _ in named}
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) == (n not in chosen), n
