"""Reward-model ensembles against over-optimisation (Coste et al., arXiv 2310.02743, §3.2).

Given K reward estimates per completion, the combined reward is

* ``mean``: ``(1/K) sum_i R_i``
* ``wco`` (worst-case optimisation): ``min_i R_i``
* ``uwo`` (uncertainty-weighted optimisation): ``mean - lam * Var``, with the intra-ensemble variance
  ``Var = 1/(K-1) sum_i (R_i - mean)^2`` (``variance="unbiased"``, the default: the authors' PPO code uses
  torch's unbiased variance) or ``1/K sum_i ...`` (``variance="population"``, as the paper's equation is
  written; 0.8x the unbiased value at K = 5). The paper uses ``lam = 0.1`` for PPO and ``0.5`` for
  best-of-n; default here 0.1. UWO needs ``K >= 2`` members for the unbiased variance.

Members may be TRL-style reward functions or Hugging Face sequence-classification reward models wrapped
with :class:`RewardModelFunction`. The paper's members are separately trained reward models of equal
scale; members on different scales should be normalised first (``normalize=True`` standardises each
member over the batch before combining).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

MODES = ("mean", "wco", "uwo")
VARIANCES = ("unbiased", "population")


def combine_rewards(rewards: torch.Tensor, mode: str = "mean", lam: float = 0.1,
                    variance: str = "unbiased") -> torch.Tensor:
    """Combine a (K, N) tensor of K members' rewards for N completions into N rewards.

    >>> combine_rewards(torch.tensor([[1.0, 0.0], [3.0, 0.0]]), "uwo", lam=0.5).tolist()
    [1.0, 0.0]
    """
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    if rewards.dim() != 2 or rewards.shape[0] < 1:
        raise ValueError(f"rewards must have shape (num_members, num_completions); got {tuple(rewards.shape)}")
    if mode not in MODES:
        raise ValueError(f"ensemble mode must be one of {MODES}, got {mode!r}")
    if lam < 0:
        raise ValueError(f"lam (UWO variance penalty) must be >= 0, got {lam}")
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    if mode == "mean":
        return rewards.mean(dim=0)
    if mode == "wco":
        return rewards.min(dim=0).values
    k = rewards.shape[0]
    if variance == "unbiased" and k < 2:
        raise ValueError("UWO's unbiased variance needs at least 2 ensemble members (or variance='population')")
    mean = rewards.mean(dim=0)
    var = ((rewards - mean) ** 2).sum(dim=0) / (k - 1 if variance == "unbiased" else k)
    return mean - lam * var


class RewardModelFunction:
    """Turn a sequence-classification reward model into a TRL-style reward function.

    Scores ``prompt + completion`` (plain text) or the chat-templated conversation (conversational data)
    with ``model(**inputs).logits[:, 0]``, like TRL does for reward models passed as modules.
    """

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 16, name: str | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.__name__ = name or getattr(getattr(model, "config", None), "_name_or_path", None) or "reward_model"

    def _texts(self, prompts: Sequence[Any], completions: Sequence[Any]) -> list[str]:
        texts = []
        for p, c in zip(prompts, completions, strict=True):
            if isinstance(p, list):  # conversational
                texts.append(self.tokenizer.apply_chat_template(p + c, tokenize=False))
            else:
                texts.append(str(p) + str(c))
        return texts

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        texts = self._texts(prompts, completions)
        device = next(self.model.parameters()).device
        out: list[float] = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(texts[i:i + self.batch_size], return_tensors="pt", padding=True,
                                     truncation=True, add_special_tokens=False)
                enc = {k: v.to(device) for k, v in enc.items()}
                out.extend(self.model(**enc).logits[:, 0].float().cpu().tolist())
        return out


class EnsembleReward:
    """A TRL reward function that combines several reward functions (mean / WCO / UWO, arXiv 2310.02743).

    Members returning ``None`` for a completion make the combined reward ``None`` there (TRL then treats
    it as not applicable). Each call records the mean intra-ensemble std in ``self.history`` and, through
    TRL's ``log_metric`` hook, as ``ensemble/<name>/member_std``.
    """

    def __init__(
        self,
        members: Sequence[Callable[..., Sequence[float | None]]],
        mode: str = "mean",
        lam: float = 0.1,
        normalize: bool = False,
        name: str | None = None,
        variance: str = "unbiased",
    ) -> None:
        if len(members) < 1:
            raise ValueError("EnsembleReward needs at least one member reward function")
        for i, f in enumerate(members):
            if not callable(f):
                raise TypeError(
                    f"ensemble member {i} is not callable; wrap reward models with lmopt.rl.RewardModelFunction"
                )
        if mode not in MODES:
            raise ValueError(f"ensemble mode must be one of {MODES}, got {mode!r}")
        if lam < 0:
            raise ValueError(f"lam (UWO variance penalty) must be >= 0, got {lam}")
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
        if mode == "uwo" and variance == "unbiased" and len(members) < 2:
            raise ValueError("UWO's unbiased variance needs at least 2 ensemble members (or variance='population')")
        self.variance = variance
        self.members = list(members)
        self.mode = mode
        self.lam = float(lam)
        self.normalize = normalize
        self.history: list[dict[str, float]] = []
        self.__name__ = name or f"ensemble_{mode}"

    def __call__(self, *args: Any, **kwargs: Any) -> list[float | None]:
        cols = []
        for f in self.members:
            vals = list(f(*args, **kwargs))
            cols.append([float("nan") if v is None else float(v) for v in vals])
        n = {len(c) for c in cols}
        if len(n) != 1:
            raise ValueError(f"ensemble members returned different numbers of rewards: {sorted(n)}")
        r = torch.tensor(cols, dtype=torch.float32)
        missing = torch.isnan(r).any(dim=0)
        if self.normalize:
            mu = torch.nanmean(r, dim=1, keepdim=True)
            sd = torch.sqrt(torch.nanmean((r - mu) ** 2, dim=1, keepdim=True))
            r = (r - mu) / (sd + 1e-8)
        comb = combine_rewards(torch.nan_to_num(r, nan=0.0), self.mode, self.lam, self.variance)
        spread = float(torch.nan_to_num(r, nan=0.0).std(dim=0, unbiased=False).mean()) if r.shape[1] else 0.0
        self.history.append({"member_std": spread})
        log_metric = kwargs.get("log_metric")
        if callable(log_metric):
            log_metric(f"ensemble/{self.__name__}/member_std", spread)
        return [None if m else float(v) for m, v in zip(missing.tolist(), comb.tolist())]
