"""Flexora: flexible layer selection for LoRA by hyperparameter optimisation.

Wei et al., "Flexora: Flexible Low Rank Adaptation for Large Language Models", arXiv 2408.10774. Each
decoder layer ``l`` gets a hyperparameter ``α_l``; the input of every LoRA branch of layer ``l`` is
multiplied by the gate ``L · softmax(α)_l`` (so all-equal ``α`` is plain LoRA). The search stage trains the
LoRA weights on training batches with the gates fixed, and after each weight step takes one Adam step
(lr 0.01) on ``α`` using the validation loss of a few validation batches, differentiated through the
gates (the paper's unrolled-differentiation view of layer selection as hyperparameter optimisation,
truncated to the current step as in the released code). The layers with ``α_l > 0`` are kept and LoRA is
retrained on them alone (``LoraConfig(layers_to_transform=...)``, :func:`retrain_config`).

Behaviour of the released code (kithib/Flexora ``train/flora.py``) and where it is kept: ``α`` starts at 0,
Adam with lr 0.01, 8 validation batches per step whose gradients are summed (``val_batches``), selection by
``α > 0``. The released code registers its gate hook on every module whose name contains ``lora`` in the
layer, so the dropout, ``lora_A`` and ``lora_B`` inputs are all scaled and the LoRA output is multiplied by
the gate cubed; ``gate_power=3`` reproduces that, the default 1 is the paper's single gate. The released
search is embedded in a patched LLaMA-Factory block optimizer (BAdam); here it is a plain function
(:func:`flexora_search`) and a ``transformers`` callback (:class:`FlexoraCallback`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

DEFAULT_LAYER_PATTERN = r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\."


def lora_modules(model: torch.nn.Module, adapter: str = "default", layer_pattern: str = DEFAULT_LAYER_PATTERN
                 ) -> list[tuple[str, int, torch.nn.Module]]:
    """``(name, layer index, module)`` of every peft LoRA layer with adapter ``adapter``."""
    rx = re.compile(layer_pattern)
    out = []
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if isinstance(lora_a, torch.nn.ModuleDict) and adapter in lora_a:
            m = rx.search(name + ".")
            if m is None:
                raise ValueError(f"LoRA module {name!r} is not inside a numbered layer matching {layer_pattern!r}; "
                                 "pass layer_pattern= for this architecture")
            out.append((name, int(m.group(1)), module))
    if not out:
        raise ValueError(f"the model has no LoRA layers with adapter {adapter!r}: wrap it with peft "
                         "(get_peft_model / inject_adapter_in_model with a LoraConfig whose target_modules "
                         "exist in the model) before adding Flexora gates")
    return out


class FlexoraGates:
    """Per-layer gates ``L · softmax(α)`` on the inputs of a peft model's LoRA branches.

    Args:
        model: a model with peft LoRA layers inside numbered decoder layers; the ``L`` layers that carry
            LoRA are the candidates (``α`` has one entry per candidate, in layer order).
        adapter: the peft adapter name.
        layer_pattern: regex whose group 1 is the layer index in a module name.
        gate_power: 1 (paper) or 3 (the released hook placement; see the module doc).

    ``mode`` is ``"train"`` (gates applied, no gradient to ``α``), ``"search"`` (gates applied and
    differentiable in ``α``) or ``"off"`` (plain LoRA).
    """

    def __init__(self, model: torch.nn.Module, adapter: str = "default", layer_pattern: str = DEFAULT_LAYER_PATTERN,
                 gate_power: int = 1) -> None:
        if gate_power not in (1, 3):
            raise ValueError(f"gate_power must be 1 (paper) or 3 (released hook placement), got {gate_power!r}")
        self.modules = lora_modules(model, adapter, layer_pattern)
        self.layers = sorted({i for _, i, _ in self.modules})
        self._position = {layer: k for k, layer in enumerate(self.layers)}
        first = next(iter(self.modules[0][2].lora_A[adapter].parameters()))
        dtype = torch.float64 if first.dtype == torch.float64 else torch.float32  # fp32 α for bf16/fp16 models
        self.alpha = torch.zeros(len(self.layers), device=first.device, dtype=dtype, requires_grad=True)
        self.mode = "train"
        self.gate_power = gate_power
        self._handles = []
        for _, layer, module in self.modules:
            targets = [module.lora_A[adapter]]
            if gate_power == 3:
                targets += [module.lora_dropout[adapter], module.lora_B[adapter]]
            for t in targets:
                self._handles.append(t.register_forward_pre_hook(self._hook(self._position[layer])))

    def _hook(self, k: int) -> Callable[..., Any]:
        def pre_hook(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            if self.mode == "off":
                return None
            g = self.gates()[k]
            if self.mode == "train":
                g = g.detach()
            return (args[0] * g.to(args[0].dtype), *args[1:])

        return pre_hook

    def gates(self) -> torch.Tensor:
        """``L · softmax(α)``, one gate per candidate layer (all 1 when the ``α`` are equal)."""
        return len(self.layers) * torch.softmax(self.alpha, dim=0)

    def selected_layers(self) -> list[int]:
        """The paper's rule: the candidate layers whose ``α`` is positive."""
        alpha = self.alpha.detach()
        return [layer for k, layer in enumerate(self.layers) if float(alpha[k]) > 0.0]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


@dataclass
class FlexoraResult:
    selected_layers: list[int]
    alpha: list[float]
    alpha_history: list[list[float]] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    train_losses: list[float] = field(default_factory=list)


def hyper_step(gates: FlexoraGates, alpha_opt: torch.optim.Optimizer, val_loss: Callable[[Any], torch.Tensor],
               val_batches: Iterator[Any], n: int) -> float:
    """One Adam step on ``α``: the gradients of ``n`` validation losses are summed (as released)."""
    mode = gates.mode
    gates.mode = "search"
    alpha_opt.zero_grad(set_to_none=True)
    total = 0.0
    try:
        for _ in range(n):
            loss = val_loss(next(val_batches))
            grad = torch.autograd.grad(loss, gates.alpha)[0]  # α only: the weights get no gradient
            gates.alpha.grad = grad if gates.alpha.grad is None else gates.alpha.grad + grad
            total += float(loss.detach())
        if not math.isfinite(total):
            raise FloatingPointError(f"non-finite validation loss {total} in Flexora's search; lower the lr")
        alpha_opt.step()
    finally:
        gates.mode = mode
    return total / n


def _cycle(batches: Iterable[Any]) -> Iterator[Any]:
    items = list(batches)
    if not items:
        raise ValueError("Flexora's search needs at least one validation batch")
    while True:
        yield from items


def flexora_search(gates: FlexoraGates, params: list[torch.Tensor], train_loss: Callable[[Any], torch.Tensor],
                   train_batches: Iterable[Any], val_loss: Callable[[Any], torch.Tensor], val_batches: Iterable[Any],
                   optimizer: torch.optim.Optimizer | None = None, lr: float = 1e-4, alpha_lr: float = 0.01,
                   val_batches_per_step: int = 8) -> FlexoraResult:
    """The search stage in plain PyTorch: a weight step per training batch, then a hyper step on ``α``.

    ``params`` are the LoRA parameters (trained by ``optimizer``, default AdamW(lr)); ``α`` is trained by
    Adam(``alpha_lr``). Returns the selected layers, the final ``α`` and their history per step.
    """
    opt = optimizer if optimizer is not None else torch.optim.AdamW(params, lr=lr)
    alpha_opt = torch.optim.Adam([gates.alpha], lr=alpha_lr)
    vals = _cycle(val_batches)
    res = FlexoraResult([], [])
    for batch in train_batches:
        gates.mode = "train"
        opt.zero_grad(set_to_none=True)
        loss = train_loss(batch)
        loss.backward()
        opt.step()
        res.train_losses.append(float(loss.detach()))
        res.val_losses.append(hyper_step(gates, alpha_opt, val_loss, vals, val_batches_per_step))
        res.alpha_history.append(gates.alpha.detach().tolist())
    gates.mode = "train"
    res.alpha = gates.alpha.detach().tolist()
    res.selected_layers = gates.selected_layers()
    return res


def retrain_config(lora_config: Any, selected_layers: list[int]) -> Any:
    """A copy of a peft ``LoraConfig`` restricted to ``selected_layers`` (``layers_to_transform``)."""
    import copy

    if not selected_layers:
        raise ValueError("no layer has a positive α: nothing to retrain (search longer, or keep the top-k α)")
    cfg = copy.deepcopy(lora_config)
    cfg.layers_to_transform = sorted(selected_layers)
    return cfg


def trained_parameters(model: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def make_callback(gates: FlexoraGates, val_loss: Callable[[Any], torch.Tensor], val_batches: Iterable[Any],
                  alpha_lr: float = 0.01, val_batches_per_step: int = 8) -> Any:
    """A ``transformers.TrainerCallback`` that takes Flexora's hyper step after every optimizer step."""
    from transformers import TrainerCallback

    class FlexoraCallback(TrainerCallback):
        def __init__(self) -> None:
            self.gates = gates
            self.alpha_opt = torch.optim.Adam([gates.alpha], lr=alpha_lr)
            self.vals = _cycle(val_batches)
            self.history: list[list[float]] = []
            self.val_losses: list[float] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            model = kwargs.get("model")
            was_training = model.training if model is not None else False
            if model is not None:
                model.eval()
            self.val_losses.append(hyper_step(self.gates, self.alpha_opt, val_loss, self.vals, val_batches_per_step))
            self.history.append(self.gates.alpha.detach().tolist())
            if model is not None and was_training:
                model.train()

    return FlexoraCallback()
