"""TRL integration: GRPO trainer subclasses and callbacks for COPO, MoPPS and dynamic reward weighting.

Everything here subclasses or hooks TRL's ``GRPOTrainer`` at its documented extension points
(``_calculate_rewards``, ``_generate_and_score_completions``, ``_get_train_sampler``, ``training_step``,
``reward_weights``, callbacks) and works with ``trl>=0.24,<2`` (tested with 1.16). Importing this module
imports TRL; ``lmopt.rl`` exposes these names lazily so the rest of ``lmopt.rl`` works without TRL.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import torch

from lmopt._deps import require
from lmopt.rl.advantages import copo_advantages, grpo_advantages
from lmopt.rl.mopps import MoPPS, MoPPSSampler, group_success_rates
from lmopt.rl.weighting import HypervolumeWeighting, gradient_weight_update

trl = require("trl", "trl")
transformers = require("transformers", "trl")
accelerate_utils = require("accelerate.utils", "trl")

GRPOTrainer = trl.GRPOTrainer
INDEX_COLUMN = "lmopt_prompt_index"


def default_answer(completion: Any) -> Hashable:
    """The final answer used for COPO's entropy: the stripped completion text (last message if chat)."""
    if isinstance(completion, list):
        completion = completion[-1].get("content", "") if completion else ""
    return str(completion).strip()


class _RewardCapture:
    """Mixin that keeps the last gathered reward matrix and completions seen by ``_calculate_rewards``."""

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rpf = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._lmopt_last = {"rewards_per_func": rpf, "inputs": inputs, "completions": completions}
        self._lmopt_after_rewards(rpf, inputs, completions)
        return rpf

    def _lmopt_after_rewards(self, rpf, inputs, completions) -> None:  # hook for subclasses
        return None

    def _lmopt_process_slice(self, local_len: int) -> slice:
        i = self.accelerator.process_index
        return slice(i * local_len, (i + 1) * local_len)


class COPOGRPOTrainer(_RewardCapture, GRPOTrainer):
    """GRPO with COPO's consistency-aware advantages (arXiv 2508.04138).

    After TRL computes rewards, the advantages it returns are replaced by
    ``(1 - w) * A_global + w * A_local`` (see :func:`lmopt.rl.advantages.copo_advantages`); ``A_local`` is
    TRL's own group advantage (same ``scale_rewards`` and ``reward_weights``). Logs ``copo/weight_local``
    and ``copo/answer_entropy``. Only the ``sum_then_normalize`` aggregation is supported.

    Extra args: ``answer_fn`` (completion → hashable final answer, default the stripped text),
    ``copo_b`` (0.5), ``copo_k`` (1.0), ``copo_consistency`` (True: multiply the global reward by
    ``1 - lambda H``).
    """

    def __init__(self, *args: Any, answer_fn: Callable[[Any], Hashable] = default_answer, copo_b: float = 0.5,
                 copo_k: float = 1.0, copo_consistency: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if getattr(self, "multi_objective_aggregation", "sum_then_normalize") != "sum_then_normalize":
            raise ValueError("COPOGRPOTrainer supports multi_objective_aggregation='sum_then_normalize' only")
        if self.num_generations < 2:
            raise ValueError("COPO needs num_generations >= 2")
        self.answer_fn, self.copo_b, self.copo_k, self.copo_consistency = answer_fn, copo_b, copo_k, copo_consistency

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        last = self._lmopt_last
        mode = "train" if self.model.training else "eval"
        G = self.num_generations if mode == "train" else getattr(self, "num_generations_eval", self.num_generations)
        completions = accelerate_utils.gather_object(list(last["completions"]))
        answers = [self.answer_fn(c) for c in completions]
        rpf = last["rewards_per_func"].detach().float().cpu()
        adv, parts = copo_advantages(rpf, answers, G, self.reward_weights.cpu(), self.scale_rewards,
                                     self.copo_consistency, self.copo_b, self.copo_k, return_parts=True)
        local = out["advantages"]
        out["advantages"] = adv[self._lmopt_process_slice(local.shape[0])].to(local.device, local.dtype)
        self._metrics[mode]["copo/weight_local"].append(float(parts["weight_local"].mean()))
        self._metrics[mode]["copo/answer_entropy"].append(float(parts["entropy"].mean()))
        return out


class MoPPSGRPOTrainer(_RewardCapture, GRPOTrainer):
    """GRPO whose prompts are chosen by MoPPS Thompson sampling (arXiv 2507.04632).

    The trainer adds an ``lmopt_prompt_index`` column to ``train_dataset`` (reward functions receive it as a
    keyword argument and may ignore it), replaces TRL's ``RepeatSampler`` by :class:`MoPPSSampler` with the
    same repeat layout, and after every generation updates the posterior of each prompt from its group's
    success rate, computed from the weighted sum of the reward functions: mean of the rewards when they lie
    in [0, 1] (``success_threshold=None``) or the fraction ``>= success_threshold``.

    Extra args: ``mopps`` (a :class:`MoPPS`; default one over the dataset with ``mopps_lam``, seeded with
    ``args.seed``), ``mopps_lam`` (decay, default 1.0), ``success_threshold``. The posterior is not part of
    TRL's checkpoints: save ``trainer.mopps.state_dict()`` yourself to resume it.
    """

    def __init__(self, *args: Any, mopps: MoPPS | None = None, mopps_lam: float = 1.0,
                 success_threshold: float | None = None, **kwargs: Any) -> None:
        datasets = require("datasets", "trl")
        train = kwargs.get("train_dataset", args[3] if len(args) > 3 else None)
        if train is None or isinstance(train, datasets.IterableDataset) or not hasattr(train, "__len__"):
            raise ValueError("MoPPSGRPOTrainer needs a map-style train_dataset (datasets.Dataset) to index prompts")
        if INDEX_COLUMN not in train.column_names:
            train = train.add_column(INDEX_COLUMN, list(range(len(train))))
        if "train_dataset" in kwargs or len(args) <= 3:
            kwargs["train_dataset"] = train
        else:
            args = (*args[:3], train, *args[4:])
        super().__init__(*args, **kwargs)
        if self.args.remove_unused_columns:
            raise ValueError(f"MoPPSGRPOTrainer needs the {INDEX_COLUMN!r} column: set remove_unused_columns=False")
        self.mopps = mopps if mopps is not None else MoPPS(len(train), lam=mopps_lam, seed=self.args.seed)
        if self.mopps.num_prompts != len(train):
            raise ValueError(f"mopps tracks {self.mopps.num_prompts} prompts but the dataset has {len(train)}")
        self.success_threshold = success_threshold

    def _get_train_sampler(self, dataset=None):
        dataset = self.train_dataset if dataset is None else dataset
        return MoPPSSampler(
            self.mopps,
            mini_repeat_count=self.num_generations,
            batch_size=self.args.generation_batch_size // self.num_generations,
            repeat_count=self.num_iterations * self.args.steps_per_generation,
            num_batches=len(dataset) // (self.args.generation_batch_size // self.num_generations),
        )

    def _lmopt_after_rewards(self, rpf, inputs, completions) -> None:
        if not self.model.training:
            return
        G = self.num_generations
        idx = accelerate_utils.gather_object([int(x[INDEX_COLUMN]) for x in inputs])
        r = (rpf.detach().float().cpu() * self.reward_weights.cpu().unsqueeze(0)).nansum(dim=1)
        rates = group_success_rates(r, G, self.success_threshold)
        self.mopps.update(idx[::G], rates.tolist(), G)
        self._metrics["train"]["mopps/batch_success"].append(float(rates.mean()))


class GradientWeightingGRPOTrainer(_RewardCapture, GRPOTrainer):
    """GRPO with gradient-based dynamic reward weights (arXiv 2509.11452, §3.2).

    Every ``weight_update_every`` optimisation steps, the policy gradient of each objective alone (the GRPO
    loss with that reward function's own group advantages) is computed on the current micro-batch and the
    weights take the step ``w <- softmax(log w + lr * s / rho)`` of
    :func:`lmopt.rl.weighting.gradient_weight_update`. The new ``reward_weights`` apply from the next
    generation. The initial ``reward_weights`` (``GRPOConfig.reward_weights``, default all 1) are normalised to
    sum to 1. Costs one extra forward/backward per objective per update; single-process training only.
    Logs ``weights/<reward name>``.
    """

    def __init__(self, *args: Any, weight_lr: float = 0.1, weight_update_every: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if weight_update_every < 1:
            raise ValueError(f"weight_update_every must be >= 1, got {weight_update_every}")
        if len(self.reward_funcs) < 2:
            raise ValueError("gradient-based weighting needs at least two reward functions")
        if self.accelerator.num_processes > 1:
            raise ValueError("GradientWeightingGRPOTrainer supports single-process training only")
        self.weight_lr, self.weight_update_every = weight_lr, weight_update_every
        self._lmopt_weight_step = -1
        w = self.reward_weights.clamp_min(0)
        self.reward_weights = (w / w.sum()).float()

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        if mode == "train":
            rpf = self._lmopt_last["rewards_per_func"].detach().float().cpu()
            per_obj = torch.stack([grpo_advantages(rpf[:, k], self.num_generations, None, self.scale_rewards)
                                   for k in range(rpf.shape[1])], dim=1)
            local = out["advantages"]
            out["lmopt_objective_advantages"] = per_obj[self._lmopt_process_slice(local.shape[0])].to(local.device)
        return out

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        key = "lmopt_objective_advantages"
        obj_adv = inputs.pop(key) if key in inputs else None
        if obj_adv is not None and model.training and self.state.global_step % self.weight_update_every == 0 \
                and self._lmopt_weight_step != self.state.global_step:
            self._lmopt_weight_step = self.state.global_step
            params = [p for p in model.parameters() if p.requires_grad]
            grads = []
            for k in range(obj_adv.shape[1]):
                loss_k = self._compute_loss(model, {**inputs, "advantages": obj_adv[:, k]})
                g = torch.autograd.grad(loss_k, params, allow_unused=True)
                grads.append(torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1).float()
                                        for x, p in zip(g, params)]).cpu())
            self.reward_weights = gradient_weight_update(self.reward_weights, grads, self.weight_lr)
            for name, w in zip(self.reward_func_names, self.reward_weights.tolist()):
                self._metrics["train"][f"weights/{name}"].append(w)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


class HypervolumeWeightCallback(transformers.TrainerCallback):
    """A TRL callback for hypervolume-guided weights (arXiv 2509.11452, §3.1).

    At every log event it reads the mean reward of each reward function (``rewards/<name>/mean``, as TRL
    logs them), feeds that objective vector to :class:`HypervolumeWeighting` and writes the new weights to
    ``trainer.reward_weights``. Register with ``HypervolumeWeightCallback.attach(trainer)``. See
    :mod:`lmopt.rl.weighting` for when a common weight factor has an effect (``scale_rewards="none"``).
    """

    def __init__(self, ref: list[float] | None = None, hv_scale: float = 1.0) -> None:
        self.ref, self.hv_scale = ref, hv_scale
        self.trainer = None
        self.weighting: HypervolumeWeighting | None = None
        self.history: list[dict[str, Any]] = []

    @classmethod
    def attach(cls, trainer: Any, **kwargs: Any) -> HypervolumeWeightCallback:
        cb = cls(**kwargs)
        cb.trainer = trainer
        cb.weighting = HypervolumeWeighting(trainer.reward_weights.tolist(), cb.ref, cb.hv_scale)
        trainer.add_callback(cb)
        return cb

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.trainer is None or self.weighting is None:
            raise RuntimeError(
                "HypervolumeWeightCallback is not attached: use HypervolumeWeightCallback.attach(trainer)")
        if not logs:
            return control
        keys = [f"rewards/{n}/mean" for n in self.trainer.reward_func_names]
        if not all(k in logs for k in keys):
            return control
        w = self.weighting.update([float(logs[k]) for k in keys])
        self.trainer.reward_weights = w.to(self.trainer.reward_weights.dtype)
        self.history.append({"step": state.global_step, "meta": self.weighting.meta, "weights": w.tolist()})
        return control
