"""HAPO on TRL: a ``GRPOTrainer`` subclass (imports TRL; ``lmopt.rl`` exposes it lazily).

The maths is in :mod:`lmopt.rl.hapo`. The subclass hooks three places of TRL 1.16's trainer, none of
them patched in TRL's files:

* ``_generate_single_turn`` — while TRL's own ``generate`` call runs, the model's ``generate`` receives an
  extra logits processor that divides each step's logits by ``1 + τ ĥ`` (TRL's temperature ``T`` is applied
  after it, by transformers' own warper, so a token is sampled at ``T (1 + τ ĥ)``). ``ĥ`` uses the entropy
  statistics of the previous optimisation step's tokens (the released order). Not applied with vLLM or
  continuous batching (a warning says so). With a ``rollout_func`` (e.g. ``CalcToolRollout``),
  ``_generate`` offers the same processor as ``generation_logits_processors`` for the rollout to apply.
* ``_generate_and_score_completions`` — the advantages become HAPO's token-level group averages.
* ``_compute_loss`` — HAPO's per-token loss (adaptive clipping, advantage redistribution, dual clip),
  token-mean over the batch as TRL's ``loss_type="dapo"``; TRL's KL term is added when ``beta != 0``.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from lmopt._deps import require
from lmopt.rl.hapo import EntropyStats, entropy_h, entropy_temperature, hapo_policy_loss, token_group_advantages
from lmopt.rl.trainers import GRPOTrainer, _RewardCapture

transformers = require("transformers", "trl")


class EntropyTemperatureProcessor(transformers.LogitsProcessor):
    """Divides each row's logits by ``1 + τ ĥ`` (``ĥ`` from the row's entropy and fixed batch statistics);
    runs before transformers' temperature warper, which then divides by ``T``."""

    def __init__(self, stats: EntropyStats, tau: float) -> None:
        self.stats, self.tau = stats, tau
        self.factors: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        factor = entropy_temperature(scores, 1.0, self.stats, self.tau).to(scores.dtype)
        self.factors.append(factor.detach().cpu())
        return scores / factor.unsqueeze(-1)


class HAPOGRPOTrainer(_RewardCapture, GRPOTrainer):
    """GRPO with HAPO's token-level treatment (arXiv 2507.21848), each part switchable.

    Extra args (released defaults): ``hapo_pivot`` 0.8 (entropy quantile), ``hapo_tau`` 0.05 (temperature
    range), ``hapo_clip_alpha`` 1.0, ``hapo_adv_beta`` 1.0, ``hapo_clip_ratio_c`` 10.0 (dual clip), and the
    switches ``adaptive_temperature``, ``token_group_advantage``, ``adaptive_clip``, ``adaptive_advantage``
    (all True), and ``hapo_released_sign`` (False: the paper's signed ĥ; True: the released code's, see
    :mod:`lmopt.rl.hapo`). Clip ranges come from ``GRPOConfig.epsilon`` / ``epsilon_high`` (released: 0.2 / 0.2).
    The token-level advantages are per group (``scale_rewards="none"`` drops the std division; ``"batch"`` is
    treated as ``"group"``, as the released estimator has no batch scaling). With every switch off the loss
    is DAPO's (TRL ``loss_type="dapo"``) plus the dual clip.
    Logs ``hapo/clip_frac``, ``hapo/dual_clip_frac``, ``hapo/h_hat_mean`` and ``hapo/temperature_mean``.
    """

    def __init__(self, *args: Any, hapo_pivot: float = 0.8, hapo_tau: float = 0.05, hapo_clip_alpha: float = 1.0,
                 hapo_adv_beta: float = 1.0, hapo_clip_ratio_c: float = 10.0, adaptive_temperature: bool = True,
                 token_group_advantage: bool = True, adaptive_clip: bool = True, adaptive_advantage: bool = True,
                 hapo_released_sign: bool = False, **kwargs: Any) -> None:
        if not 0.0 <= hapo_pivot <= 1.0:
            raise ValueError(f"hapo_pivot must lie in [0, 1], got {hapo_pivot!r}")
        if not 0.0 <= hapo_tau < 1.0:
            raise ValueError(f"hapo_tau must lie in [0, 1) (a temperature factor 1 ± tau), got {hapo_tau!r}")
        if hapo_clip_ratio_c <= 1.0:
            raise ValueError(f"hapo_clip_ratio_c must exceed 1, got {hapo_clip_ratio_c!r}")
        super().__init__(*args, **kwargs)
        if self.importance_sampling_level != "token":
            raise ValueError("HAPOGRPOTrainer needs importance_sampling_level='token' (its clipping is per token)")
        self.hapo = {"pivot": hapo_pivot, "tau": hapo_tau, "clip_alpha": hapo_clip_alpha, "adv_beta": hapo_adv_beta,
                     "clip_ratio_c": hapo_clip_ratio_c, "adaptive_temperature": adaptive_temperature,
                     "token_group_advantage": token_group_advantage, "adaptive_clip": adaptive_clip,
                     "adaptive_advantage": adaptive_advantage, "released_sign": hapo_released_sign}
        self._entropy_buffer: list[torch.Tensor] = []
        self.generation_logits_processors: list[Any] = []
        self.entropy_stats: EntropyStats | None = None

    # -- rollout: entropy-driven temperature ---------------------------------------------------------
    def _refresh_entropy_stats(self) -> None:
        if self._entropy_buffer:
            ent = torch.cat(self._entropy_buffer)
            _, self.entropy_stats = entropy_h(ent, torch.ones_like(ent, dtype=torch.bool), self.hapo["pivot"],
                                              released_sign=self.hapo["released_sign"])
            self._entropy_buffer = []

    def _temperature_active(self) -> bool:
        self._refresh_entropy_stats()
        return bool(self.hapo["adaptive_temperature"] and self.model.training and self.entropy_stats is not None)

    def _log_temperature(self, proc: EntropyTemperatureProcessor) -> None:
        if proc.factors:
            t = torch.cat([f.flatten() for f in proc.factors]) * float(self.temperature)
            self._metrics["train"]["hapo/temperature_mean"].append(float(t.mean()))

    def _generate(self, prompts: list):
        if self.rollout_func is None or not self._temperature_active():
            return super()._generate(prompts)
        proc = EntropyTemperatureProcessor(self.entropy_stats, self.hapo["tau"])
        self.generation_logits_processors = [proc]  # read by rollouts that honour it (CalcToolRollout does)
        try:
            return super()._generate(prompts)
        finally:
            self.generation_logits_processors = []
            self._log_temperature(proc)

    def _generate_single_turn(self, *args: Any, **kwargs: Any):
        if not self._temperature_active():
            return super()._generate_single_turn(*args, **kwargs)
        if self.use_vllm or getattr(self, "use_transformers_continuous_batching", False):
            warnings.warn("HAPO's adaptive temperature needs transformers' generate; vLLM / continuous batching "
                          "sample at the fixed temperature", stacklevel=2)
            return super()._generate_single_turn(*args, **kwargs)
        model = self.accelerator.unwrap_model(self.model_wrapped)
        proc = EntropyTemperatureProcessor(self.entropy_stats, self.hapo["tau"])
        original = model.generate

        def generate(*gargs: Any, **gkw: Any):
            procs = transformers.LogitsProcessorList(gkw.pop("logits_processor", None) or [])
            procs.append(proc)
            return original(*gargs, logits_processor=procs, **gkw)

        model.generate = generate  # an instance attribute for this call only; the class method is untouched
        try:
            return super()._generate_single_turn(*args, **kwargs)
        finally:
            del model.generate
            self._log_temperature(proc)

    # -- advantages: token-level group average --------------------------------------------------------
    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        if not (self.model.training and self.hapo["token_group_advantage"]):
            return out
        rpf = self._lmopt_last["rewards_per_func"].detach().float()
        rewards = (rpf * self.reward_weights.to(rpf.device).unsqueeze(0)).nansum(dim=1).cpu()
        mask = out["completion_mask"]
        if "tool_mask" in out:
            mask = mask * out["tool_mask"]
        lengths = self.accelerator.gather(mask.sum(1).float()).cpu()
        adv = token_group_advantages(rewards, lengths, self.num_generations, scale=self.scale_rewards != "none")
        local = out["advantages"]
        out["advantages"] = adv[self._lmopt_process_slice(local.shape[0])].to(local.device, local.dtype)
        return out

    # -- loss -----------------------------------------------------------------------------------------
    def _compute_loss(self, model, inputs):
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        logps, entropies, _ = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, completion_ids.size(1), compute_entropy=True)
        old = inputs.get("old_per_token_logps")
        old = logps.detach() if old is None else old
        h = self.hapo
        per_token, stats = hapo_policy_loss(
            logps, old, inputs["advantages"], mask, entropies, eps_low=self.epsilon_low, eps_high=self.epsilon_high,
            clip_ratio_c=h["clip_ratio_c"], pivot=h["pivot"], adaptive_clip=h["adaptive_clip"],
            clip_alpha=h["clip_alpha"], adaptive_advantage=h["adaptive_advantage"], adv_beta=h["adv_beta"],
            released_sign=h["released_sign"], reduce=False)
        if self.use_vllm and getattr(self, "vllm_importance_sampling_correction", False):
            per_token = per_token * inputs["importance_sampling_ratio"]
        if self.beta != 0.0:
            ref = inputs["ref_per_token_logps"]
            per_token = per_token + self.beta * (torch.exp(ref - logps) - (ref - logps) - 1)
        mode = "train" if self.model.training else "eval"
        # token mean over the generation batch, as TRL's "dapo" normalises it
        normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
        if mode == "train":
            normalizer = normalizer * self.current_gradient_accumulation_steps / self.args.steps_per_generation
            self._entropy_buffer.append(entropies.detach()[mask.bool()].float().cpu())
        loss = (per_token * mask).sum() / normalizer
        for k, v in stats.items():
            self._metrics[mode][f"hapo/{k}"].append(v)
        return loss


__all__ = ["EntropyTemperatureProcessor", "HAPOGRPOTrainer"]
