import pytest
import torch

from lmopt.finetune import FlexoraGates, flexora_search, lora_modules, retrain_config

peft = pytest.importorskip("peft")


class Block(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.proj = torch.nn.Linear(d, d)

    def forward(self, x):
        return x + torch.tanh(self.proj(x))


class Tiny(torch.nn.Module):
    def __init__(self, n_layers=4, d=6, dtype=torch.float32):
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.ModuleList([Block(d) for _ in range(n_layers)])
        self.head = torch.nn.Linear(d, 3)
        self.to(dtype)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def with_lora(n_layers=4, dtype=torch.float32, layers=None):
    model = Tiny(n_layers, dtype=dtype)
    cfg = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["proj"], layers_to_transform=layers,
                          layers_pattern="layers" if layers is not None else None)
    peft.inject_adapter_in_model(cfg, model)
    torch.manual_seed(1)
    with torch.no_grad():  # a non-zero B, so the LoRA branch contributes
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.5)
    return model


def data(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 6, generator=g).to(dtype)
    return x, torch.randint(0, 3, (16,), generator=g)


def test_equal_alpha_is_plain_lora():
    model = with_lora()
    x, _ = data()
    plain = model(x)
    gates = FlexoraGates(model)
    assert torch.equal(model(x), plain)  # α = 0: gates are exactly 1
    with torch.no_grad():
        gates.alpha.fill_(0.7)
    torch.testing.assert_close(model(x), plain, rtol=0, atol=1e-6)
    with torch.no_grad():
        gates.alpha.copy_(torch.tensor([2.0, -1.0, 0.0, 0.5]))
    assert not torch.allclose(model(x), plain, atol=1e-3)
    gates.mode = "off"
    assert torch.equal(model(x), plain)


def test_the_gate_scales_each_layers_lora_branch():
    """Gate g on layer l: that layer's LoRA contribution times g (power 1) or g³ (released hook placement)."""
    for power in (1, 3):
        model = with_lora(n_layers=2)
        x, _ = data()
        layer = model.layers[1].proj
        base = layer.base_layer(x)
        branch = layer(x) - base
        gates = FlexoraGates(model, gate_power=power)
        with torch.no_grad():
            gates.alpha.copy_(torch.tensor([0.3, -0.4]))
        g = float(gates.gates()[1].detach())
        assert abs(g - 2 * torch.softmax(torch.tensor([0.3, -0.4]), 0)[1]) < 1e-6 and abs(g - 1) > 0.1
        torch.testing.assert_close(layer(x) - base, branch * g ** power, rtol=1e-5, atol=1e-6)


def test_alpha_gradient_matches_finite_differences():
    model = with_lora(dtype=torch.float64)
    x, y = data(torch.float64)
    gates = FlexoraGates(model)
    gates.mode = "search"
    with torch.no_grad():
        gates.alpha.copy_(torch.tensor([0.2, -0.1, 0.4, 0.0], dtype=gates.alpha.dtype))

    def loss():
        return torch.nn.functional.cross_entropy(model(x), y)

    grad = torch.autograd.grad(loss(), gates.alpha)[0]
    h = 1e-6
    fd = torch.zeros_like(grad)
    for i in range(4):
        with torch.no_grad():
            gates.alpha[i] += h
            up = float(loss())
            gates.alpha[i] -= 2 * h
            down = float(loss())
            gates.alpha[i] += h
        fd[i] = (up - down) / (2 * h)
    torch.testing.assert_close(grad, fd, rtol=1e-5, atol=1e-8)
    assert float(grad.abs().max()) > 1e-4


def test_train_mode_gives_no_gradient_to_alpha():
    model = with_lora()
    x, y = data()
    gates = FlexoraGates(model)
    with torch.no_grad():
        gates.alpha.copy_(torch.tensor([0.2, -0.1, 0.4, 0.0]))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    assert gates.alpha.grad is None


def test_selection_keeps_exactly_the_positive_alphas():
    gates = FlexoraGates(with_lora(n_layers=5))
    with torch.no_grad():
        gates.alpha.copy_(torch.tensor([0.1, -0.2, 0.0, 0.3, -1e-9]))
    assert gates.selected_layers() == [0, 3]
    cfg = retrain_config(peft.LoraConfig(r=2, target_modules=["proj"]), gates.selected_layers())
    assert cfg.layers_to_transform == [0, 3]
    with pytest.raises(ValueError, match="no layer has a positive"):
        retrain_config(cfg, [])


def test_retraining_on_the_selected_layers_trains_fewer_parameters():
    full = with_lora(n_layers=4)
    part = with_lora(n_layers=4, layers=[0, 3])
    n_full = sum(p.numel() for n, p in full.named_parameters() if "lora_" in n)
    n_part = sum(p.numel() for n, p in part.named_parameters() if "lora_" in n)
    assert n_part * 2 == n_full
    assert sorted({i for _, i, _ in lora_modules(part)}) == [0, 3]
    gates = FlexoraGates(part)  # the candidates are the layers that carry LoRA
    assert gates.layers == [0, 3] and gates.alpha.shape == (2,)
    with torch.no_grad():
        gates.alpha.copy_(torch.tensor([-0.5, 0.5]))
    assert gates.selected_layers() == [3]


def test_search_moves_alpha_and_selects_the_positive_layers():
    model = with_lora()
    x, y = data()
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)
    gates = FlexoraGates(model)
    loss = lambda b: torch.nn.functional.cross_entropy(model(x[b]), y[b])  # noqa: E731
    res = flexora_search(gates, params, loss, [slice(0, 8)] * 10, loss, [slice(8, 16)], lr=1e-2,
                         val_batches_per_step=2)
    assert len(res.alpha_history) == 10 and any(abs(a) > 1e-3 for a in res.alpha)
    assert res.selected_layers == [i for i, a in enumerate(res.alpha) if a > 0]
    assert all(torch.isfinite(torch.tensor(v)) for v in res.val_losses)


def test_a_model_without_lora_is_refused():
    with pytest.raises(ValueError, match="has no LoRA layers"):
        FlexoraGates(Tiny())
