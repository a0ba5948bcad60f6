"""torch.optim contract: validation messages, grads untouched, maximize, None/sparse grads, state_dict."""

import copy
import io

import pytest
import torch

from lmopt.optim import APOLLO, SOAP, AdaBelief, APOLLOMini, EXAdam, Lion, LionK, Muon

ALL = [Lion, LionK, AdaBelief, EXAdam, Muon, SOAP, APOLLO, APOLLOMini]
KW = {APOLLO: dict(rank=2)}


def _matrix():
    return torch.nn.Parameter(torch.randn(6, 8, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("cls", ALL)
def test_rejects_bad_hyperparameters(cls):
    with pytest.raises(ValueError, match="learning rate"):
        cls([_matrix()], lr=-1.0)
    with pytest.raises(ValueError, match="learning rate"):
        cls([_matrix()], lr=float("nan"))
    with pytest.raises(ValueError, match="weight_decay"):
        cls([_matrix()], weight_decay=-0.1)
    with pytest.raises(ValueError, match="impl"):
        cls([_matrix()], impl="fused-magic")
    with pytest.raises(ValueError, match="state_dtype"):
        cls([_matrix()], state_dtype=torch.int8)
    if cls is not Muon:
        with pytest.raises(ValueError, match=r"betas\[1\]"):
            cls([_matrix()], betas=(0.9, 1.0))
        with pytest.raises(ValueError, match="betas"):
            cls([_matrix()], betas=0.9)


def test_specific_validation_messages():
    with pytest.raises(ValueError, match="use_muon=False"):
        Muon([torch.nn.Parameter(torch.zeros(4))])
    with pytest.raises(ValueError, match="momentum"):
        Muon([_matrix()], momentum=1.5)
    with pytest.raises(ValueError, match="adjust_lr"):
        Muon([_matrix()], adjust_lr="sqrt")
    with pytest.raises(ValueError, match="apollo=False"):
        APOLLO([torch.nn.Parameter(torch.zeros(4))])
    with pytest.raises(ValueError, match="rank 8 is not smaller"):
        APOLLO([_matrix()], rank=8)
    with pytest.raises(ValueError, match="fraction"):
        APOLLO([_matrix()], rank=1.5)
    with pytest.raises(ValueError, match="scale_type"):
        APOLLO([_matrix()], scale_type="row")
    with pytest.raises(ValueError, match="kernel"):
        LionK([_matrix()], kernel="l3")
    with pytest.raises(ValueError, match="precondition_frequency"):
        SOAP([_matrix()], precondition_frequency=0)
    with pytest.raises(ValueError, match="eps"):
        AdaBelief([_matrix()], eps=-1e-16)


@pytest.mark.parametrize("cls", ALL)
def test_sparse_gradients_rejected(cls):
    p = _matrix()
    opt = cls([p], impl="reference", **KW.get(cls, {}))
    p.grad = torch.zeros(6, 8).to_sparse()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()


@pytest.mark.parametrize("cls", ALL)
def test_grad_untouched_none_skipped_and_maximize(cls):
    a, b = _matrix(), torch.nn.Parameter(torch.ones(6, 8))
    opt = cls([a, b], impl="reference", **KW.get(cls, {}))
    g = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    a.grad = g.clone()
    opt.step()
    assert torch.equal(a.grad, g)
    assert len(opt.state[b]) == 0 and torch.equal(b.detach(), torch.ones(6, 8))
    # maximize on g equals minimize on −g
    p1, p2 = _matrix(), _matrix()
    o1 = cls([p1], impl="reference", maximize=True, **KW.get(cls, {}))
    o2 = cls([p2], impl="reference", **KW.get(cls, {}))
    for _ in range(3):
        p1.grad, p2.grad = g.clone(), -g
        o1.step()
        o2.step()
    assert not torch.equal(p1.detach(), _matrix().detach())
    torch.testing.assert_close(p1.detach(), p2.detach(), rtol=0, atol=0)


def test_closure_and_zero_grad():
    p = _matrix()
    opt = Lion([p], lr=0.1, impl="reference")

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert float(loss.detach()) == pytest.approx(float((_matrix().detach() ** 2).sum()))
    opt.zero_grad()
    assert p.grad is None


def _train(model, opt, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(4, 8, generator=gen)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


def _model():
    torch_gen = torch.Generator().manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(8, 12), torch.nn.Tanh(), torch.nn.Linear(12, 6))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=torch_gen) * 0.3)
    return m


def _make(cls, model, **kw):
    mats = [p for p in model.parameters() if p.ndim == 2]
    vecs = [p for p in model.parameters() if p.ndim == 1]
    if cls is Muon:
        return cls([dict(params=mats), dict(params=vecs, use_muon=False)], **kw)
    if cls in (APOLLO, APOLLOMini):
        extra = dict(rank=2) if cls is APOLLO else {}
        return cls([dict(params=mats, update_proj_gap=3, **extra), dict(params=vecs, apollo=False)], **kw)
    return cls(model.parameters(), **kw)


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("state_dtype", [None, torch.bfloat16])
def test_state_dict_round_trip_resumes_bit_identically(cls, state_dtype):
    model = _model()
    opt = _make(cls, model, impl="reference", state_dtype=state_dtype)
    _train(model, opt, 4, seed=1)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    _train(model, opt, 5, seed=2)
    expected = copy.deepcopy(model.state_dict())

    buf.seek(0)
    ckpt = torch.load(buf, map_location="cpu", weights_only=True)
    model2 = _model()
    model2.load_state_dict(ckpt["model"])
    opt2 = _make(cls, model2, impl="reference", state_dtype=state_dtype)
    opt2.load_state_dict(ckpt["opt"])
    for p2 in model2.parameters():
        for k, v in opt2.state[p2].items():
            assert isinstance(v, torch.Tensor), (k, type(v))
            if k in ("step", "proj_seed"):
                assert v.device.type == "cpu"
            if k in ("exp_avg", "exp_avg_sq", "exp_avg_var", "momentum_buffer") and state_dtype is not None:
                assert v.dtype == state_dtype, k
    _train(model2, opt2, 5, seed=2)
    for k, v in model2.state_dict().items():
        assert torch.equal(v, expected[k]), k


def test_step_counts_exactly_past_two_to_the_24_and_old_float_steps_load_as_int():
    from lmopt.optim import SOAP

    w = torch.nn.Parameter(torch.zeros(4, 3))
    opt = SOAP([w], precondition_frequency=2, impl="reference")
    for _ in range(2):
        w.grad = torch.randn(4, 3)
        opt.step()
    opt.state[w]["step"].fill_(2**24)  # a float32 count freezes here: 2**24 + 1 rounds back down
    q = opt.state[w]["Q0"].clone()
    w.grad = torch.randn(4, 3)
    opt.step()
    assert int(opt.state[w]["step"]) == 2**24 + 1
    w.grad = torch.randn(4, 3)
    opt.step()  # step 2**24 + 2: a refresh is due, and happens
    assert int(opt.state[w]["step"]) == 2**24 + 2 and not torch.equal(opt.state[w]["Q0"], q)
    sd = opt.state_dict()
    sd["state"][0]["step"] = torch.tensor(7.0)  # as saved by an older version
    opt.load_state_dict(sd)
    assert opt.state[w]["step"].dtype == torch.int64 and int(opt.state[w]["step"]) == 7
