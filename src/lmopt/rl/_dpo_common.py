"""Pieces shared by lmopt's DPOTrainer subclasses (imports TRL)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from lmopt._deps import require

trl_utils = require("trl.trainer.utils", "trl")
accelerate_utils = require("accelerate.utils", "trl")


class ReferenceForward:
    """Mixin for ``DPOTrainer`` subclasses: the reference model's forward pass on a DPO batch — the given
    ``ref_model``, or for a PEFT policy its base model with the adapters disabled (TRL's own convention)."""

    def _reference_forward(self, ids: torch.Tensor, att: torch.Tensor, **kwargs: Any) -> Any:
        context: Any = contextlib.nullcontext()
        ref = self.ref_model
        if ref is None:
            unwrapped = self.accelerator.unwrap_model(self.model)
            if not accelerate_utils.is_peft_model(unwrapped):
                raise ValueError(f"{type(self).__name__} needs a reference model (ref_model=...) or a PEFT policy")
            context = trl_utils.use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config
                                            else None)
            ref = self.model
        with torch.no_grad(), context:
            return ref(input_ids=ids, attention_mask=att, use_cache=False, **kwargs)


def token_logps(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log π of each next token (positions 1..T-1) from full-sequence ``logits`` (fp32)."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
