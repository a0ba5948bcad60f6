"""TRL integration: GRPO trainer subclasses and callbacks for COPO, MoPPS and dynamic reward weighting.

Everything here subclasses or hooks TRL's ``GRPOTrainer`` at its documented extension points
(``_calculate_rewards``, ``_generate_and_score_completions``, ``_get_train_sampler``, ``training_step``,
``reward_weights``, callbacks) and works with ``trl>=0.24,<2`` (tested with 1.16). Importing this module
imports TRL; ``lmopt.rl`` exposes these names lazily so the rest of ``lmopt.rl`` works without TRL.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable
from typing import Any

import torch

from lmopt._deps import require
from lmopt.rl.advantages import copo_advantages, copo_settings, grpo_advantages
from lmopt.rl.answers import final_answer
from lmopt.rl.mopps import MoPPS, group_success_rates
from lmopt.rl.weighting import NORMALISERS, HypervolumeWeighting, gradient_scores, gradient_weight_update

trl = require("trl", "trl")
transformers = require("transformers", "trl")
accelerate_utils = require("accelerate.utils", "trl")

GRPOTrainer = trl.GRPOTrainer
INDEX_COLUMN = "lmopt_prompt_index"
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def default_answer(completion: Any) -> Hashable:
    """The final answer used for COPO's entropy: :func:`lmopt.rl.answers.final_answer` (boxed content, the
    text after an answer marker, or the last number), so chain-of-thought completions that agree compare equal."""
    return final_answer(completion)


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
    TRL's own group advantage (same ``scale_rewards`` and ``reward_weights``), ``A_global`` the z-score of
    the prompts' global rewards over the whole generation batch (gathered from every process). Logs
    ``copo/weight_local`` and ``copo/answer_entropy``. Only the ``sum_then_normalize`` aggregation is
    supported. Evaluation batches keep TRL's advantages (they are not trained on).

    The generation batch must hold at least two prompt groups (``generation_batch_size /
    num_generations >= 2``; TRL's defaults give one, where the global advantage would always be 0): raise
    ``steps_per_generation`` or ``per_device_train_batch_size``, or set ``generation_batch_size``. The
    authors' run z-scores over 512 prompts. The advantage blend equals the paper's loss blend for on-policy
    updates: ``num_iterations=1`` and ``steps_per_generation <= gradient_accumulation_steps``.

    Extra args: ``copo_preset`` (``"released"``, the authors' run — ``soft-with-zero`` gate, k=5, b=1, no
    consistency factor — or ``"paper"``: soft gate, k=1, b=0.5, with the factor), each setting overridable
    with ``copo_gate``, ``copo_k``, ``copo_b``, ``copo_consistency``; ``answer_fn`` (completion → hashable
    final answer, default :func:`default_answer`; pass ``task.parser`` for a task's own parser).
    """

    def __init__(self, *args: Any, answer_fn: Callable[[Any], Hashable] = default_answer,
                 copo_preset: str = "released", copo_gate: str | None = None, copo_k: float | None = None,
                 copo_b: float | None = None, copo_consistency: bool | None = None, **kwargs: Any) -> None:
        settings = copo_settings(copo_preset, gate=copo_gate, k=copo_k, b=copo_b, consistency=copo_consistency)
        super().__init__(*args, **kwargs)
        if getattr(self, "multi_objective_aggregation", "sum_then_normalize") != "sum_then_normalize":
            raise ValueError("COPOGRPOTrainer supports multi_objective_aggregation='sum_then_normalize' only")
        if self.num_generations < 2:
            raise ValueError("COPO needs num_generations >= 2")
        groups = self.args.generation_batch_size // self.num_generations
        if groups < 2:
            raise ValueError(
                f"COPO's global advantage is a z-score across the prompts of a generation batch, but this "
                f"configuration generates {groups} prompt group per batch (generation_batch_size="
                f"{self.args.generation_batch_size}, num_generations={self.num_generations}): raise "
                "steps_per_generation or per_device_train_batch_size, or set generation_batch_size, to hold at "
                "least 2 groups (the authors' run uses 512 prompts)"
            )
        self.answer_fn = answer_fn
        self.copo = settings

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        if not self.model.training:
            return out
        last = self._lmopt_last
        completions = accelerate_utils.gather_object(list(last["completions"]))
        answers = [self.answer_fn(c) for c in completions]
        rpf = last["rewards_per_func"].detach().float().cpu()
        adv, parts = copo_advantages(rpf, answers, self.num_generations, self.reward_weights.cpu(),
                                     self.scale_rewards, return_parts=True, **self.copo)
        local = out["advantages"]
        out["advantages"] = adv[self._lmopt_process_slice(local.shape[0])].to(local.device, local.dtype)
        self._metrics["train"]["copo/weight_local"].append(float(parts["weight_local"].mean()))
        self._metrics["train"]["copo/answer_entropy"].append(float(parts["entropy"].mean()))
        return out


class MoPPSGRPOTrainer(_RewardCapture, GRPOTrainer):
    """GRPO whose prompts are chosen by MoPPS Thompson sampling (arXiv 2507.04632).

    The trainer adds an ``lmopt_prompt_index`` column to ``train_dataset`` (reward functions receive it as a
    keyword argument and may ignore it). Each training generation batch is chosen by :meth:`MoPPS.select`
    when it is generated, i.e. after the previous batch's rewards updated the posterior (the authors' order;
    a sampler would be read one batch ahead by the data loader), and laid out as TRL's ``RepeatSampler``
    lays out prompts (each prompt ``num_generations`` times in a row; this process's slice of the global
    batch). The data loader still runs, as the step clock; its rows are replaced. After every generation
    the posterior of each prompt is updated from its group's success rate.

    Success, as in the authors' code (binary accuracy): a completion succeeds when the reward of
    ``success_reward`` (index or name of a reward function, default the first) is ``>= success_threshold``
    (default 1.0, a correct answer of a 0/1 reward). ``success_threshold=None`` reads that reward as a
    probability (it must lie in [0, 1]); ``success_reward=None`` uses the weighted sum of all reward
    functions instead of one.

    Extra args: ``mopps`` (a :class:`MoPPS`; default one over the dataset with ``mopps_lam`` and
    ``mopps_candidate_ratio``, seeded with ``args.seed``), ``mopps_lam`` (decay, default 1.0),
    ``mopps_candidate_ratio`` (default 16, the authors' ``ts_ratio``), ``success_reward``,
    ``success_threshold``. The posterior is not part of TRL's checkpoints: save
    ``trainer.mopps.state_dict()`` yourself to resume it. Every process draws the same selection (same seed,
    same gathered updates).
    """

    def __init__(self, *args: Any, mopps: MoPPS | None = None, mopps_lam: float = 1.0,
                 mopps_candidate_ratio: float | None = 16.0, success_reward: int | str | None = 0,
                 success_threshold: float | None = 1.0, **kwargs: Any) -> None:
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
        self.mopps = mopps if mopps is not None else MoPPS(len(train), lam=mopps_lam,
                                                            candidate_ratio=mopps_candidate_ratio, seed=self.args.seed)
        if self.mopps.num_prompts != len(train):
            raise ValueError(f"mopps tracks {self.mopps.num_prompts} prompts but the dataset has {len(train)}")
        if isinstance(success_reward, str):
            if success_reward not in self.reward_func_names:
                raise ValueError(f"success_reward {success_reward!r} is not a reward function name; the names are "
                                 f"{self.reward_func_names}")
            success_reward = self.reward_func_names.index(success_reward)
        elif success_reward is not None and not 0 <= success_reward < len(self.reward_funcs):
            raise ValueError(f"success_reward index {success_reward} is out of range for "
                             f"{len(self.reward_funcs)} reward functions")
        self.success_reward = success_reward
        self.success_threshold = success_threshold
        self.prompts_per_generation = self.args.generation_batch_size // self.num_generations

    def _generate_and_score_completions(self, inputs):
        if self.model.training:
            inputs = self._mopps_inputs(len(inputs))
        return super()._generate_and_score_completions(inputs)

    def _mopps_inputs(self, local_len: int) -> list[dict[str, Any]]:
        chosen = self.mopps.select(self.prompts_per_generation)
        layout = [i for i in chosen for _ in range(self.num_generations)]
        return [self.train_dataset[int(i)] for i in layout[self._lmopt_process_slice(local_len)]]

    def _lmopt_after_rewards(self, rpf, inputs, completions) -> None:
        if not self.model.training:
            return
        G = self.num_generations
        idx = accelerate_utils.gather_object([int(x[INDEX_COLUMN]) for x in inputs])
        rpf = rpf.detach().float().cpu()
        if self.success_reward is None:
            r = (rpf * self.reward_weights.cpu().unsqueeze(0)).nansum(dim=1)
        else:
            r = rpf[:, self.success_reward]
        rates = group_success_rates(r, G, self.success_threshold)
        self.mopps.update(idx[::G], rates.tolist(), G)
        self._metrics["train"]["mopps/batch_success"].append(float(rates.mean()))


class GradientWeightingGRPOTrainer(_RewardCapture, GRPOTrainer):
    """GRPO with gradient-based dynamic reward weights (arXiv 2509.11452, §3.2).

    At every optimisation step the policy gradient of each objective alone (the GRPO loss with that reward
    function's own group advantages, on the current micro-batch) gives the scores
    ``s_i = sum_j <g_i, g_j>`` of :func:`lmopt.rl.weighting.gradient_scores`; every
    ``weight_accumulation_steps`` steps their average moves the weights by
    :func:`lmopt.rl.weighting.gradient_weight_update`. Defaults follow the authors' code: each ``g_i``
    clipped to ``args.max_grad_norm``, step ``lr_t * s / weight_reg`` with ``lr_t`` the policy's current
    learning rate (``weight_lr=None``) and ``weight_reg=1e-5``; ``weight_layers`` restricts the gradients to
    decoder layers by index (their ``target_layer_ids``; parameters named ``...layers.<i>....``).
    ``weight_normaliser="sum-norm"`` is the scale-free alternative (then ``weight_lr`` is its step size).
    The new weights apply from the next generation. The initial ``reward_weights`` are normalised to sum
    to 1. Costs one extra forward/backward per objective per step; single-process training only.

    ``trainer.objective_weights`` holds the simplex weights and ``trainer.weight_scale`` a common factor
    (1; set by :class:`HypervolumeWeightCallback` when both are used), ``reward_weights`` is their product.
    Logs ``weights/<reward name>``.
    """

    def __init__(self, *args: Any, weight_lr: float | None = None, weight_reg: float = 1e-5,
                 weight_accumulation_steps: int = 1, weight_normaliser: str = "official",
                 weight_layers: list[int] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if weight_accumulation_steps < 1:
            raise ValueError(f"weight_accumulation_steps must be >= 1, got {weight_accumulation_steps}")
        if weight_normaliser not in NORMALISERS:
            raise ValueError(f"weight_normaliser must be one of {NORMALISERS}, got {weight_normaliser!r}")
        if weight_normaliser == "sum-norm" and weight_lr is None:
            raise ValueError("weight_normaliser='sum-norm' needs weight_lr (its step size)")
        if len(self.reward_funcs) < 2:
            raise ValueError("gradient-based weighting needs at least two reward functions")
        if self.accelerator.num_processes > 1:
            raise ValueError("GradientWeightingGRPOTrainer supports single-process training only")
        self.weight_lr, self.weight_reg = weight_lr, weight_reg
        self.weight_accumulation_steps, self.weight_normaliser = weight_accumulation_steps, weight_normaliser
        self.weight_layers = None if weight_layers is None else {int(i) for i in weight_layers}
        self._lmopt_weight_step = -1
        self._lmopt_scores: list[torch.Tensor] = []
        w = self.reward_weights.clamp_min(0)
        self.objective_weights = (w / w.sum()).float()
        self.weight_scale = 1.0
        self.reward_weights = self.objective_weights * self.weight_scale

    def _weight_params(self, model) -> list[torch.nn.Parameter]:
        params = []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if self.weight_layers is not None:
                m = _LAYER.search(name)
                if m is None or int(m.group(1)) not in self.weight_layers:
                    continue
            params.append(p)
        if not params:
            raise ValueError(f"weight_layers={sorted(self.weight_layers or [])} matches no trainable parameter "
                             "(names must contain 'layers.<i>.')")
        return params

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
        if obj_adv is not None and model.training and self._lmopt_weight_step != self.state.global_step:
            self._lmopt_weight_step = self.state.global_step
            params = self._weight_params(model)
            grads = []
            for k in range(obj_adv.shape[1]):
                loss_k = self._compute_loss(model, {**inputs, "advantages": obj_adv[:, k]})
                g = torch.autograd.grad(loss_k, params, allow_unused=True)
                grads.append(torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1).float()
                                        for x, p in zip(g, params)]).cpu())
            self._lmopt_update_weights(grads)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def _lmopt_update_weights(self, grads: list[torch.Tensor]) -> None:
        if self.weight_normaliser == "sum-norm":
            self.objective_weights = gradient_weight_update(self.objective_weights, grads, self.weight_lr,
                                                            normaliser="sum-norm")
        else:
            self._lmopt_scores.append(gradient_scores(grads, self.args.max_grad_norm or None))
            if len(self._lmopt_scores) < self.weight_accumulation_steps:
                return
            scores = torch.stack(self._lmopt_scores).mean(dim=0)
            self._lmopt_scores = []
            lr = self.weight_lr if self.weight_lr is not None else self._get_learning_rate()
            self.objective_weights = gradient_weight_update(self.objective_weights, None, float(lr),
                                                            reg=self.weight_reg, scores=scores)
        self.reward_weights = self.objective_weights * self.weight_scale
        for name, w in zip(self.reward_func_names, self.objective_weights.tolist()):
            self._metrics["train"][f"weights/{name}"].append(w)


class HypervolumeWeightCallback(transformers.TrainerCallback):
    """A TRL callback for hypervolume-guided weights (arXiv 2509.11452, §3.1).

    At every log event it reads the mean reward of each reward function (``rewards/<name>/mean``, as TRL
    logs them), feeds that objective vector to :class:`HypervolumeWeighting` and writes the new weights to
    ``trainer.reward_weights``: the base weights times the meta factor, or, on a
    :class:`GradientWeightingGRPOTrainer`, the trainer's current gradient-based ``objective_weights`` times
    the factor (its ``weight_scale``), so the two compose instead of one overwriting the other. Register
    with ``HypervolumeWeightCallback.attach(trainer)``. See
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
        if hasattr(self.trainer, "objective_weights"):
            self.trainer.weight_scale = self.weighting.meta
            w = self.trainer.objective_weights * self.weighting.meta
        self.trainer.reward_weights = w.to(self.trainer.reward_weights.dtype)
        self.history.append({"step": state.global_step, "meta": self.weighting.meta, "weights": w.tolist()})
        return control
