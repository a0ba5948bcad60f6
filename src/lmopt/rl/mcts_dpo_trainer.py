"""DPO with a label smoothing per preference pair — MCTS-DPO's confidence-based "conservative" loss
(arXiv 2405.00451) — as a TRL ``DPOTrainer`` subclass (imports TRL; ``lmopt.rl`` exposes it lazily).

Per pair, with ``z = (log π - log π_ref)(chosen) - (log π - log π_ref)(rejected)`` summed over response
tokens and ``ε`` the pair's ``label_smoothing`` column (:func:`lmopt.rl.mcts_dpo.mcts_preference_data`
writes it: ``min(1 - confidence, 0.5)``):

    L = -(1 - ε) log σ(β z) - ε log σ(-β z)

as the released trainer. A dataset without the column trains plain DPO (ε = 0) — and then equals TRL's
``loss_type="sigmoid"`` (tested).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from lmopt._deps import require
from lmopt.rl._dpo_common import ReferenceForward, token_logps

trl = require("trl", "trl")
COLUMN = "label_smoothing"


class ConfidenceDPOTrainer(ReferenceForward, trl.DPOTrainer):
    """``DPOTrainer`` whose sigmoid loss reads a per-pair ``label_smoothing`` column (values in [0, 0.5])."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if list(getattr(self, "loss_types", ["sigmoid"])) != ["sigmoid"]:
            raise ValueError(f"ConfidenceDPOTrainer replaces the sigmoid DPO loss; got loss_type {self.loss_types}")
        if self.precompute_ref_logps:
            raise ValueError("set precompute_ref_log_probs=False: the reference runs with the policy here")
        train = self.train_dataset  # however it was passed; TRL's tokenised copy keeps the column
        if train is not None and COLUMN in (getattr(train, "column_names", None) or []):
            bad = [v for v in train[COLUMN] if not 0.0 <= float(v) <= 0.5]
            if bad:
                raise ValueError(f"{len(bad)} label_smoothing values lie outside [0, 0.5], e.g. {bad[0]!r}")
        collate = self.data_collator

        def with_smoothing(examples: list[dict[str, Any]]) -> dict[str, Any]:
            batch = collate(examples)
            batch[COLUMN] = torch.tensor([float(e.get(COLUMN, 0.0)) for e in examples])
            return batch

        self.data_collator = with_smoothing

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self._signature_columns is not None and COLUMN not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, COLUMN]

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        ids, att, cm = inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"]
        out = model(input_ids=ids, attention_mask=att, use_cache=False)
        ref = self._reference_forward(ids, att)
        resp = cm[:, 1:].float()
        ratio = ((token_logps(out.logits, ids) - token_logps(ref.logits, ids)) * resp).sum(-1)
        chosen, rejected = ratio.chunk(2)
        z = self.beta * (chosen - rejected)
        eps = inputs.get(COLUMN)
        eps = torch.zeros_like(z) if eps is None else eps.to(z.device, z.dtype)
        loss = (-(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)).mean()
        gather = self.accelerator.gather_for_metrics
        ch, rj = (self.beta * chosen).detach(), (self.beta * rejected).detach()
        self._metrics[mode]["rewards/chosen"].append(gather(ch).mean().item())
        self._metrics[mode]["rewards/rejected"].append(gather(rj).mean().item())
        self._metrics[mode]["rewards/accuracies"].append(gather((ch > rj).float()).mean().item())
        self._metrics[mode]["rewards/margins"].append(gather(ch - rj).mean().item())
        self._metrics[mode]["label_smoothing"].append(gather(eps).mean().item())
        return (loss, out) if return_outputs else loss


__all__ = ["ConfidenceDPOTrainer"]
