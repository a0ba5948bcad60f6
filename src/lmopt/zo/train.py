"""Training with a zeroth-order optimizer: a plain loop and a Hugging Face ``Trainer`` subclass.

Both run every loss evaluation of a step in ``eval()`` mode under ``torch.no_grad()`` (as MeZO does:
dropout would otherwise give ``f(theta + mu z)`` and ``f(theta - mu z)`` different masks), average the
loss over ``accumulation`` batches inside one closure (gradient accumulation for ZO: the same directions
are evaluated on all the batches of the step), and log per step the loss, the projected gradients and
the queries used.

Plain loop::

    from lmopt.zo import ZOSGD, zo_train
    opt = ZOSGD(model.parameters(), lr=1e-6, mu=1e-3)
    history = zo_train(model, opt, batches, steps=1000)     # batches: an iterable of dicts for model(**b)

Hugging Face::

    from lmopt.zo.train import ZOTrainer
    trainer = ZOTrainer(model=model, args=TrainingArguments(..., learning_rate=1e-6), train_dataset=ds,
                        zo_optimizer="zo-sgd", zo_kwargs={"mu": 1e-3})
    trainer.train()
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from .optimizers import OPTIMIZERS, ZOOptimizer
from .select import named_zo_parameters


def hf_loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """Default loss: ``model(**batch).loss`` (Hugging Face models with ``labels`` in the batch)."""
    out = model(**batch)
    loss = getattr(out, "loss", None)
    if loss is None:
        raise ValueError("model(**batch) returned no .loss: put 'labels' in the batch or pass loss_fn")
    return loss


class _EvalMode:
    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.was_training = self.model.training
        self.model.eval()

    def __exit__(self, *exc: Any) -> None:
        self.model.train(self.was_training)


def make_closure(model: torch.nn.Module, batches: list[Any],
                 loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor] = hf_loss) -> Callable[[], torch.Tensor]:
    """A closure returning the mean loss over ``batches`` (ZO gradient accumulation)."""
    if not batches:
        raise ValueError("make_closure needs at least one batch")

    def closure() -> torch.Tensor:
        total = None
        for b in batches:
            loss = loss_fn(model, b).float()
            total = loss if total is None else total + loss
        return total / len(batches)

    return closure


def zo_train(model: torch.nn.Module, optimizer: ZOOptimizer, batches: Iterable[Any], *, steps: int,
             accumulation: int = 1, loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor] = hf_loss,
             callback: Callable[[dict[str, Any]], Any] | None = None, progress: bool = False) -> list[dict[str, Any]]:
    """Run ``steps`` ZO steps, each on ``accumulation`` batches drawn from ``batches`` (cycled).

    Returns the per-step log (the optimizer's ``last_step`` plus wall time); ``callback(log)`` is called
    after every step (evaluate, checkpoint, stop early by raising ``StopIteration``).
    """
    if not isinstance(optimizer, ZOOptimizer):
        raise TypeError(f"zo_train needs a lmopt.zo optimizer, got {type(optimizer).__name__}")
    if steps < 0 or accumulation < 1:
        raise ValueError(f"steps must be >= 0 and accumulation >= 1, got steps={steps}, "
                         f"accumulation={accumulation}")
    source: Iterator[Any] = _cycle(batches)
    history: list[dict[str, Any]] = []
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("ZO steps", total=steps)
    try:
        with _EvalMode(model):
            for _ in range(steps):
                step_batches = [next(source) for _ in range(accumulation)]
                t0 = time.perf_counter()
                optimizer.step(make_closure(model, step_batches, loss_fn))
                log = dict(optimizer.last_step, seconds=time.perf_counter() - t0)
                history.append(log)
                if bar is not None:
                    bar.advance(task)
                if callback is not None:
                    try:
                        callback(log)
                    except StopIteration:
                        break
    finally:
        if bar is not None:
            bar.stop()
    return history


def _cycle(batches: Iterable[Any]) -> Iterator[Any]:
    cache: list[Any] = []
    for b in batches:
        cache.append(b)
        yield b
    if not cache:
        raise ValueError("zo_train got no batches")
    while True:
        yield from cache


def _build_trainer_class() -> type:
    from .._deps import require

    transformers = require("transformers", "hf")

    class _LRCarrier(torch.optim.Optimizer):
        """What the Trainer's loop and LR scheduler see: same groups, a no-op ``step`` (ZO steps happen in
        ``training_step``); the scheduler's learning rates are copied to the ZO optimizer before each step."""

        def __init__(self, zo: ZOOptimizer) -> None:
            groups = [{k: v for k, v in g.items()} for g in zo.param_groups]
            super().__init__(groups, dict(zo.defaults))

        def step(self, closure: Any = None) -> None:  # type: ignore[override]
            return None

    class ZOTrainer(transformers.Trainer):
        """``transformers.Trainer`` that trains with a :mod:`lmopt.zo` optimizer (no backward pass).

        Extra arguments: ``zo_optimizer`` (a name from :data:`lmopt.zo.OPTIMIZERS` or a class),
        ``zo_kwargs`` (its keyword arguments besides lr/weight_decay/seed, e.g. ``mu``, ``q``) and
        ``zo_no_decay`` (name patterns without weight decay: :data:`lmopt.zo.select.NO_DECAY_PATTERNS` by
        default, :data:`~lmopt.zo.select.MEZO_NO_DECAY_PATTERNS` for MeZO's rule) and
        ``zo_parameters`` (``(name, param)`` pairs to perturb; default: the trainable parameters, so a
        peft model perturbs only its adapters). ``learning_rate``, ``weight_decay``, ``seed``, the LR
        scheduler and ``gradient_accumulation_steps`` come from ``TrainingArguments``. Logs gain
        ``zo_projected_grad`` (mean over the step's directions), ``zo_queries`` (total so far).

        Under ``torchrun`` (``args.world_size > 1``) the optimizer is put in data-parallel mode
        (:meth:`lmopt.zo.ZOOptimizer.distribute`: every rank evaluates the same seeded perturbations on its own
        shard and each query's loss is averaged over the ranks, one float per query); ``zo_distribute=False``
        turns that off, ``True`` forces it (torch.distributed must be initialised).
        """

        def __init__(self, *args: Any, zo_optimizer: str | type[ZOOptimizer] = "zo-sgd",
                     zo_kwargs: dict[str, Any] | None = None,
                     zo_parameters: list[tuple[str, torch.nn.Parameter]] | None = None,
                     zo_no_decay: tuple[str, ...] | None = None, zo_distribute: bool | None = None,
                     **kwargs: Any) -> None:
            if isinstance(zo_optimizer, str):
                if zo_optimizer not in OPTIMIZERS:
                    raise ValueError(f"unknown zo_optimizer {zo_optimizer!r}; choose from {sorted(OPTIMIZERS)}")
                zo_optimizer = OPTIMIZERS[zo_optimizer]
            self.zo_optimizer_cls = zo_optimizer
            self.zo_kwargs = dict(zo_kwargs or {})
            for k in ("lr", "weight_decay"):
                if k in self.zo_kwargs:
                    raise ValueError(f"set {k} through TrainingArguments (learning_rate / weight_decay), "
                                     "not zo_kwargs")
            self.zo_parameters = zo_parameters
            self.zo_no_decay = zo_no_decay
            self.zo_distribute = zo_distribute
            self.zo_optimizer: ZOOptimizer | None = None
            self.zo_history: list[dict[str, Any]] = []
            self._zo_pending: list[Any] = []
            super().__init__(*args, **kwargs)

        def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
            if self.zo_optimizer is None:
                named = self.zo_parameters or named_zo_parameters(self.model)
                from .select import NO_DECAY_PATTERNS, param_groups

                groups = param_groups(named, weight_decay=self.args.weight_decay,
                                      no_decay=self.zo_no_decay or NO_DECAY_PATTERNS)
                kwargs = {"seed": int(self.args.seed), **self.zo_kwargs}
                self.zo_optimizer = self.zo_optimizer_cls(groups, lr=self.args.learning_rate, **kwargs)
                distribute = self.args.world_size > 1 if self.zo_distribute is None else self.zo_distribute
                if distribute:
                    self.zo_optimizer.distribute()
                self.optimizer = _LRCarrier(self.zo_optimizer)
            return self.optimizer

        def training_step(self, model: torch.nn.Module, inputs: dict[str, Any],
                          num_items_in_batch: Any = None) -> torch.Tensor:
            if self.zo_optimizer is None:
                self.create_optimizer()
            assert self.zo_optimizer is not None
            self._zo_pending.append(self._prepare_inputs(inputs))
            if len(self._zo_pending) < self.args.gradient_accumulation_steps:
                return torch.zeros((), device=self.args.device)  # the step's loss is reported on its last batch
            batches, self._zo_pending = self._zo_pending, []
            for carrier, group in zip(self.optimizer.param_groups, self.zo_optimizer.param_groups):
                group["lr"] = carrier["lr"]

            def loss_fn(m: torch.nn.Module, b: Any) -> torch.Tensor:
                return self.compute_loss(m, b)

            with _EvalMode(model):
                loss = self.zo_optimizer.step(make_closure(model, batches, loss_fn))
            self.zo_history.append(dict(self.zo_optimizer.last_step))
            return torch.tensor(loss, device=self.args.device)

        def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
            if self.zo_optimizer is not None and self.zo_optimizer.last_step and "loss" in logs:
                pg = self.zo_optimizer.last_step["projected_grads"]
                logs = {**logs, "zo_projected_grad": sum(pg) / max(len(pg), 1),
                        "zo_queries": self.zo_optimizer.total_queries}
            super().log(logs, *args, **kwargs)

    return ZOTrainer


_TRAINER: type | None = None


def __getattr__(name: str) -> Any:
    global _TRAINER
    if name == "ZOTrainer":
        if _TRAINER is None:
            _TRAINER = _build_trainer_class()
        return _TRAINER
    raise AttributeError(name)
