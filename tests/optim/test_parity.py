"""The fast path equals the reference in parameters and state over 10 steps (fp32, bf16, bf16 state,
contiguous and non-contiguous tensors, several param groups with different hyperparameters). SOAP has one
implementation only (its ``impl`` is not a separate path), so it is checked by its formula tests instead."""

import pytest
import torch
from optim_helpers import grads_for, make_params

from lmopt.optim import APOLLO, AdaBelief, APOLLOMini, EXAdam, Lion, LionK, Muon

CASES = {
    "lion": (Lion, dict(lr=1e-2, weight_decay=0.1), dict(lr=3e-3, weight_decay=0.0)),
    "lionk_l2": (LionK, dict(lr=1e-1, kernel="l2", weight_decay=0.1), dict(lr=3e-2)),
    "adabelief": (AdaBelief, dict(lr=1e-2, weight_decay=0.1), dict(lr=3e-3, rectify=False)),
    "adabelief_ams_l2": (AdaBelief, dict(lr=1e-2, amsgrad=True, weight_decouple=False, weight_decay=0.01),
                         dict(lr=3e-3, eps_in_state=False)),
    "exadam": (EXAdam, dict(lr=1e-2, weight_decay=0.1), dict(lr=3e-3)),
    "muon": (Muon, dict(lr=0.05, weight_decay=0.1), dict(lr=0.02, adjust_lr="match_rms_adamw", nesterov=False)),
    "apollo": (APOLLO, dict(lr=1e-2, rank=2, update_proj_gap=4, weight_decay=0.1), dict(lr=3e-3, rank=3)),
    "apollo_mini": (APOLLOMini, dict(lr=1e-2, update_proj_gap=4), dict(lr=3e-3, norm_growth_limit=None)),
}


def _groups(params, kw_a, kw_b):
    a, b, c, d = params
    return [
        dict(params=[a, b], **kw_a),
        dict(params=[c], **kw_b),
        dict(params=[d], state_dtype=torch.bfloat16, **kw_b),
    ]


def _run(cls, kw_a, kw_b, impl, steps=10, maximize=False):
    params = make_params()
    opt = cls(_groups(params, kw_a, kw_b), impl=impl, maximize=maximize)
    for t in range(steps):
        for p, g in zip(params, grads_for(params, t)):
            p.grad = g
        opt.step()
    return params, opt


def _tol(t: torch.Tensor) -> dict:
    if t.dtype == torch.bfloat16:
        return dict(rtol=2e-2, atol=2e-2)
    return dict(rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("name", list(CASES))
def test_fast_matches_reference(name, fast_impl):
    cls, kw_a, kw_b = CASES[name]
    ref_params, ref = _run(cls, kw_a, kw_b, "reference")
    fast_params, fast = _run(cls, kw_a, kw_b, fast_impl)
    moved = 0.0
    init = make_params()
    for p0, pr, pf in zip(init, ref_params, fast_params):
        assert pr.dtype == pf.dtype and pr.stride() == pf.stride()
        torch.testing.assert_close(pf, pr, **_tol(pr))
        moved += float((pr.detach().float() - p0.detach().float()).abs().max())
    assert moved > 1e-3, "the optimizer did not move the parameters: the test would be vacuous"
    for pr, pf in zip(ref_params, fast_params):
        sr, sf = ref.state[pr], fast.state[pf]
        assert sr.keys() == sf.keys()
        for k in sr:
            if isinstance(sr[k], torch.Tensor):
                assert sr[k].dtype == sf[k].dtype, k
                torch.testing.assert_close(sf[k], sr[k], **_tol(sr[k]), msg=f"state {k!r} differs")


def test_bf16_state_is_stored_in_bf16():
    params = make_params()
    opt = Lion(_groups(params, dict(lr=1e-2), dict(lr=1e-2)), impl="reference")
    for p, g in zip(params, grads_for(params, 0)):
        p.grad = g
    opt.step()
    assert opt.state[params[0]]["exp_avg"].dtype == torch.float32
    assert opt.state[params[2]]["exp_avg"].dtype == torch.bfloat16
    assert opt.state[params[3]]["exp_avg"].dtype == torch.bfloat16
    assert params[3].dtype == torch.float32
