"""SparsePO on TRL: a ``DPOTrainer`` subclass for any causal LM (imports TRL; ``lmopt.rl`` exposes it lazily).

The released code ships patched model files for GPT-2, GPT-NeoX, GPT-J and BigCode only; here the mask
network reads the ``hidden_states`` every transformers causal LM returns, so SmolLM2, Llama, Qwen or Gemma
work unchanged. The maths is in :mod:`lmopt.rl.sparsepo`.
"""

from __future__ import annotations

from typing import Any

import torch

from lmopt._deps import require
from lmopt.rl._dpo_common import ReferenceForward
from lmopt.rl.sparsepo import TokenMask, sparsepo_loss

trl = require("trl", "trl")
MASK_ATTR = "lmopt_sparsepo_masks"


def _text_config(model: Any) -> Any:
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


class SparsePOTrainer(ReferenceForward, trl.DPOTrainer):
    """DPO with SparsePO's learned token masks (arXiv 2410.05102); arguments as ``DPOTrainer`` plus:

    * ``mask_mode``: ``"common"`` (one mask on both terms, the released "sparse-common") or ``"independent"``
      (one mask per term, "sparse-indp");
    * ``mask_on_reward`` / ``mask_on_kl``: where masks apply (both, as released); ``use_kl`` (True) keeps the
      token-level KL term ``d`` (False: masked DPO);
    * ``l1_reward`` / ``l1_kl``: L1 penalties on the masks (released HH runs 0.001 / 0.001; 0 elsewhere);
    * ``mask_dropout`` (0.0, see :class:`~lmopt.rl.sparsepo.TokenMask`).

    The masks are a submodule ``lmopt_sparsepo_masks`` of the trained model, so the trainer's optimiser
    updates them with the policy (the released code trains them jointly too); ``trainer.masks`` returns them
    and ``save_masks(path)`` writes their weights (``save_pretrained`` of a PEFT model keeps adapters only;
    that of a plain model also writes the ``lmopt_sparsepo_masks.*`` tensors, which ``from_pretrained``
    reports as unused weights when the model is reloaded without them).
    Logs ``sparsepo/mask_mean`` and ``sparsepo/sparsity`` (share of response tokens whose mask is exactly 0)
    per term, besides DPO's rewards and accuracies. ``loss_type`` must be TRL's default (``"sigmoid"``):
    SparsePO replaces the loss. The reference model runs with ``output_hidden_states=True``.
    """

    def __init__(self, *args: Any, mask_mode: str = "common", mask_on_reward: bool = True, mask_on_kl: bool = True,
                 use_kl: bool = True, l1_reward: float = 0.0, l1_kl: float = 0.0, mask_dropout: float = 0.0,
                 **kwargs: Any) -> None:
        if mask_mode not in ("common", "independent"):
            raise ValueError(f"mask_mode must be 'common' or 'independent', got {mask_mode!r}")
        for k, v in (("l1_reward", l1_reward), ("l1_kl", l1_kl)):
            if not (isinstance(v, (int, float)) and v >= 0):
                raise ValueError(f"{k} must be a number >= 0, got {v!r}")
        super().__init__(*args, **kwargs)
        if list(getattr(self, "loss_types", ["sigmoid"])) != ["sigmoid"]:
            raise ValueError(f"SparsePOTrainer replaces the DPO loss: leave loss_type at 'sigmoid', got "
                             f"{self.loss_types}")
        if self.precompute_ref_logps:
            raise ValueError("SparsePO needs the reference model's hidden states at every step: set "
                             "precompute_ref_log_probs=False")
        cfg = _text_config(self.accelerator.unwrap_model(self.model))
        eps = getattr(cfg, "rms_norm_eps", None) or getattr(cfg, "layer_norm_eps", None) or 1e-5
        names = ["common"] if mask_mode == "common" else ["reward", "kl"]
        masks = torch.nn.ModuleDict({n: TokenMask(cfg.hidden_size, cfg.num_hidden_layers, mask_dropout, eps)
                                     for n in names})
        param = next(self.model.parameters())
        masks.to(param.device)
        self.model.add_module(MASK_ATTR, masks)  # trained by the trainer's optimiser with the policy
        self.sparsepo = {"mode": mask_mode, "on_reward": mask_on_reward, "on_kl": mask_on_kl, "use_kl": use_kl,
                         "l1_reward": float(l1_reward), "l1_kl": float(l1_kl)}

    @property
    def masks(self) -> torch.nn.ModuleDict:
        return getattr(self.accelerator.unwrap_model(self.model), MASK_ATTR)

    def save_masks(self, path: str) -> None:
        torch.save({"config": self.sparsepo, "state_dict": self.masks.state_dict()}, path)

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        ids, att, cm = inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"]
        out = model(input_ids=ids, attention_mask=att, use_cache=False)
        ref_out = self._reference_forward(ids, att, output_hidden_states=True)
        targets = ids[:, 1:]
        resp = cm[:, 1:]
        logp_v = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)
        ref_logp_v = torch.log_softmax(ref_out.logits[:, :-1].float(), dim=-1)
        logratio = (logp_v.gather(-1, targets.unsqueeze(-1)) - ref_logp_v.gather(-1, targets.unsqueeze(-1)))
        logratio = logratio.squeeze(-1)
        ref_kl = (ref_logp_v.exp() * (logp_v - ref_logp_v)).sum(-1)
        states = [h[:, :-1] for h in ref_out.hidden_states[1:]]  # the position predicting each token
        masks = getattr(self.accelerator.unwrap_model(model), MASK_ATTR)
        s = self.sparsepo
        first = masks["common" if s["mode"] == "common" else "reward"](states)
        reward_mask = first if s["on_reward"] else None
        if not s["on_kl"]:
            kl_mask = None
        elif s["mode"] == "common":
            kl_mask = first
        else:
            kl_mask = masks["kl"](states)
        res = sparsepo_loss(logratio, ref_kl, resp, reward_mask, kl_mask, beta=self.beta,
                            l1_reward=s["l1_reward"], l1_kl=s["l1_kl"], use_kl=s["use_kl"])
        loss = res["loss"].mean()
        m = resp.bool()
        gather = self.accelerator.gather_for_metrics
        for name, mk in (("reward", reward_mask), ("kl", kl_mask)):
            if mk is not None:
                vals = mk.detach()[m]
                self._metrics[mode][f"sparsepo/{name}_mask_mean"].append(gather(vals.mean()).mean().item())
                self._metrics[mode][f"sparsepo/{name}_sparsity"].append(
                    gather((vals == 0).float().mean()).mean().item())
        ch, rj = res["chosen_rewards"].detach(), res["rejected_rewards"].detach()
        self._metrics[mode]["rewards/chosen"].append(gather(ch).mean().item())
        self._metrics[mode]["rewards/rejected"].append(gather(rj).mean().item())
        self._metrics[mode]["rewards/accuracies"].append(gather((ch > rj).float()).mean().item())
        self._metrics[mode]["rewards/margins"].append(gather(ch - rj).mean().item())
        return (loss, out) if return_outputs else loss


__all__ = ["MASK_ATTR", "SparsePOTrainer"]
