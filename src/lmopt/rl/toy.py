"""A pure-torch GRPO toy for fast, seeded experiments on CPU.

A *task* is a pool of prompts, each with a correct answer of ``answer_len`` tokens over a ``vocab`` of
tokens and a fixed difficulty offset that lowers the logit of the correct tokens (so some prompts start
almost always solved, others almost never: the regime where GRPO groups have zero reward variance).
The policy emits the answer tokens independently given the prompt:

* ``"tabular"``: one learnable logit table per prompt (no generalisation between prompts);
* ``"shared"``: logits ``W_l x_p + b_l`` from fixed prompt features ``x_p``; the correct answers are
  ``argmax_v (T_l x_p)_v`` of a hidden teacher, so a shared policy can learn all of them.

Rewards: ``"binary"`` (1 if every token is right) and ``"partial"`` (fraction of right tokens); a second
objective ``"style"`` (fraction of tokens equal to a per-prompt style token that usually differs from the
answer) gives a two-objective problem with a real trade-off.

The update is TRL's GRPO on-policy step: advantages from :func:`lmopt.rl.advantages.grpo_advantages`
(the exact TRL formula, ``scale_rewards`` "group"/"batch"/"none"), or COPO's blend, and the loss
``-(1/(N L)) sum_i A_i sum_l log pi(y_il)`` (TRL's token-mean loss with the importance ratio at 1 and no
KL term, TRL's default ``beta=0``). Everything random comes from seeded ``torch.Generator``s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from lmopt.rl.advantages import copo_advantages, copo_settings, grpo_advantages, zero_variance_groups
from lmopt.rl.mopps import MoPPS
from lmopt.rl.redit import dither, noise_scale
from lmopt.rl.weighting import HypervolumeWeighting, gradient_weight_update, hypervolume

REWARDS = ("binary", "partial")
POLICIES = ("tabular", "shared")


class ToyTask:
    """A seeded pool of prompts with answers, difficulty offsets, features and style tokens."""

    def __init__(self, num_prompts: int = 64, answer_len: int = 2, vocab: int = 4, feature_dim: int = 16,
                 difficulty: tuple[float, float] = (-2.0, 3.0), seed: int = 0) -> None:
        if num_prompts < 1 or answer_len < 1 or vocab < 2 or feature_dim < 1:
            raise ValueError("need num_prompts >= 1, answer_len >= 1, vocab >= 2 and feature_dim >= 1")
        lo, hi = difficulty
        if hi < lo:
            raise ValueError(f"difficulty must be (low, high) with low <= high, got {difficulty}")
        g = torch.Generator().manual_seed(seed)
        self.num_prompts, self.answer_len, self.vocab, self.feature_dim = num_prompts, answer_len, vocab, feature_dim
        self.features = torch.randn(num_prompts, feature_dim, generator=g)
        teacher = torch.randn(answer_len, vocab, feature_dim, generator=g)
        self.answers = torch.einsum("lvd,pd->plv", teacher, self.features).argmax(dim=-1)  # (P, L)
        self.difficulty = lo + (hi - lo) * torch.rand(num_prompts, generator=g)
        shift = torch.randint(1, vocab, (num_prompts, answer_len), generator=g)
        self.style = (self.answers + shift) % vocab  # never the correct token
        # fixed logit offsets: -difficulty on the correct token
        self.offsets = torch.zeros(num_prompts, answer_len, vocab)
        self.offsets.scatter_(2, self.answers.unsqueeze(-1), -self.difficulty.view(-1, 1, 1).expand(-1, answer_len, 1))


class ToyPolicy(torch.nn.Module):
    """Independent-token softmax policy over short answers (tabular or shared-linear)."""

    def __init__(self, task: ToyTask, kind: str = "tabular", seed: int = 0) -> None:
        super().__init__()
        if kind not in POLICIES:
            raise ValueError(f"policy kind must be one of {POLICIES}, got {kind!r}")
        self.task, self.kind = task, kind
        g = torch.Generator().manual_seed(seed + 7919)
        if kind == "tabular":
            self.table = torch.nn.Parameter(torch.zeros(task.num_prompts, task.answer_len, task.vocab))
        else:
            self.weight = torch.nn.Parameter(
                0.01 * torch.randn(task.answer_len, task.vocab, task.feature_dim, generator=g))
            self.bias = torch.nn.Parameter(torch.zeros(task.answer_len, task.vocab))

    def logits(self, prompts: torch.Tensor | None = None) -> torch.Tensor:
        idx = torch.arange(self.task.num_prompts) if prompts is None else prompts
        if self.kind == "tabular":
            raw = self.table[idx]
        else:
            raw = torch.einsum("lvd,pd->plv", self.weight, self.task.features[idx]) + self.bias
        return raw + self.task.offsets[idx]

    def log_probs(self, prompts: torch.Tensor | None = None) -> torch.Tensor:
        return torch.log_softmax(self.logits(prompts), dim=-1)


def token_accuracy(policy: ToyPolicy) -> torch.Tensor:
    """Per-prompt probability of each answer token being right, shape (P, L)."""
    with torch.no_grad():
        lp = policy.log_probs()
        return lp.gather(2, policy.task.answers.unsqueeze(-1)).squeeze(-1).exp()


def expected_objectives(policy: ToyPolicy, reward: str = "binary") -> dict[str, float]:
    """Exact expected rewards over the whole prompt pool (no sampling noise)."""
    with torch.no_grad():
        lp = policy.log_probs()
        p_ok = lp.gather(2, policy.task.answers.unsqueeze(-1)).squeeze(-1).exp()
        p_style = lp.gather(2, policy.task.style.unsqueeze(-1)).squeeze(-1).exp()
    return {"accuracy": float(p_ok.prod(dim=1).mean()), "partial": float(p_ok.mean()),
            "style": float(p_style.mean())}


@dataclass
class ToyConfig:
    """One GRPO toy run. ``method`` is "grpo" or "copo" (``copo_preset``: "paper" or "released", see
    :data:`lmopt.rl.advantages.COPO_PRESETS`); ``redit_m > 0`` turns ReDit on; ``sampler`` is
    "uniform" (shuffled chunks, as TRL's RepeatSampler) or "mopps"; ``weighting`` is "fixed", "hypervolume"
    or "gradient" (two-objective runs with ``objectives=("partial", "style")``)."""

    steps: int = 200
    batch_prompts: int = 8
    num_generations: int = 8
    lr: float = 0.1
    optimizer: str = "adam"
    reward: str = "binary"
    objectives: tuple[str, ...] = ()
    reward_weights: tuple[float, ...] = ()
    scale_rewards: str = "group"
    method: str = "grpo"
    copo_preset: str = "paper"
    redit_m: float = 0.0
    redit_schedule: str = "constant"
    redit_distribution: str = "gaussian"
    sampler: str = "uniform"
    mopps_lam: float = 1.0
    weighting: str = "fixed"
    weighting_lr: float = 1.0
    policy: str = "tabular"
    task: dict[str, Any] = field(default_factory=dict)
    eval_every: int = 1
    seed: int = 0


def _rewards_for(objective: str, samples: torch.Tensor, task: ToyTask, prompts: torch.Tensor) -> torch.Tensor:
    ok = (samples == task.answers[prompts].unsqueeze(1)).float()  # (B, G, L)
    if objective == "binary":
        return ok.prod(dim=-1)
    if objective == "partial":
        return ok.mean(dim=-1)
    if objective == "style":
        return (samples == task.style[prompts].unsqueeze(1)).float().mean(dim=-1)
    raise ValueError(f"unknown toy objective {objective!r}; choose binary, partial or style")


def run_toy(cfg: ToyConfig) -> dict[str, Any]:
    """Run one seeded GRPO toy experiment and return its per-step curves and summary metrics."""
    if cfg.reward not in REWARDS:
        raise ValueError(f"reward must be one of {REWARDS}, got {cfg.reward!r}")
    if cfg.method not in ("grpo", "copo"):
        raise ValueError(f"method must be 'grpo' or 'copo', got {cfg.method!r}")
    if cfg.sampler not in ("uniform", "mopps"):
        raise ValueError(f"sampler must be 'uniform' or 'mopps', got {cfg.sampler!r}")
    if cfg.weighting not in ("fixed", "hypervolume", "gradient"):
        raise ValueError(f"weighting must be fixed, hypervolume or gradient, got {cfg.weighting!r}")
    if cfg.optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {cfg.optimizer!r}")
    objectives = cfg.objectives or (cfg.reward,)
    k = len(objectives)
    if cfg.weighting != "fixed" and k < 2:
        raise ValueError("dynamic weighting needs at least two objectives (set objectives=('partial', 'style'))")
    weights = torch.tensor(cfg.reward_weights or [1.0 / k] * k, dtype=torch.float32)
    if weights.numel() != k:
        raise ValueError(f"reward_weights has {weights.numel()} entries for {k} objectives")
    task = ToyTask(seed=cfg.seed, **cfg.task)
    if cfg.batch_prompts > task.num_prompts:
        raise ValueError(f"batch_prompts ({cfg.batch_prompts}) exceeds the pool ({task.num_prompts})")
    policy = ToyPolicy(task, cfg.policy, seed=cfg.seed)
    opt = (torch.optim.Adam(policy.parameters(), lr=cfg.lr) if cfg.optimizer == "adam"
           else torch.optim.SGD(policy.parameters(), lr=cfg.lr))
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + 1)
    noise_gen = torch.Generator().manual_seed(cfg.seed * 1000 + 2)
    order_gen = torch.Generator().manual_seed(cfg.seed * 1000 + 3)
    # every prompt a candidate for every batch (the toy pool is small), as in the measured runs
    mopps = (MoPPS(task.num_prompts, lam=cfg.mopps_lam, candidate_ratio=None, seed=cfg.seed * 1000 + 4)
             if cfg.sampler == "mopps" else None)
    hvw = HypervolumeWeighting(weights.tolist()) if cfg.weighting == "hypervolume" else None
    G, L = cfg.num_generations, task.answer_len
    queue: list[int] = []
    curves: dict[str, list[float]] = {"step": [], "accuracy": [], "partial": [], "style": [], "grad_norm": [],
                                      "zero_var_frac": [], "weights": [], "noise_scale": [], "batch_success": []}
    for step in range(cfg.steps):
        if mopps is not None:
            prompts = torch.tensor(mopps.select(cfg.batch_prompts))
        else:
            if len(queue) < cfg.batch_prompts:
                queue = torch.randperm(task.num_prompts, generator=order_gen).tolist()
            prompts, queue = torch.tensor(queue[:cfg.batch_prompts]), queue[cfg.batch_prompts:]
        lp = policy.log_probs(prompts)  # (B, L, V)
        probs = lp.detach().exp()
        samples = torch.multinomial(probs.reshape(-1, task.vocab), G, replacement=True, generator=gen)
        samples = samples.view(cfg.batch_prompts, L, G).permute(0, 2, 1)  # (B, G, L)
        seq_logp = lp.unsqueeze(1).expand(-1, G, -1, -1).gather(3, samples.unsqueeze(-1)).squeeze(-1).sum(-1)
        seq_logp = seq_logp.reshape(-1)  # (B*G,)
        raw = torch.stack([_rewards_for(o, samples, task, prompts).reshape(-1) for o in objectives], dim=1)
        zv = zero_variance_groups((raw * weights).sum(dim=1, keepdim=True), G)
        # a toy run is a few hundred steps: schedules are scaled to it (decay every 100 steps, cosine over the run)
        # instead of the authors' 2000-8000-step milestones and horizon
        scale = noise_scale(cfg.redit_schedule, step, cfg.steps, cfg.redit_m, step_size=100,
                            cosine_horizon=None) if cfg.redit_m > 0 else 0.0
        rewards = dither(raw, scale, 1.0, cfg.redit_distribution, noise_gen) if scale > 0 else raw
        if mopps is not None:
            succ = raw[:, 0].view(-1, G).mean(dim=1)
            mopps.update(prompts.tolist(), succ.tolist(), G)
        if cfg.weighting == "gradient":
            grads = []
            for j in range(k):
                a_j = grpo_advantages(rewards[:, j], G, None, cfg.scale_rewards)
                g_j = torch.autograd.grad(-(a_j * seq_logp).sum() / (seq_logp.numel() * L),
                                          list(policy.parameters()), retain_graph=True)
                grads.append(torch.cat([x.reshape(-1) for x in g_j]))
            weights = gradient_weight_update(weights, grads, cfg.weighting_lr, normaliser="sum-norm")
        if cfg.method == "copo":
            answers = [tuple(s) for s in samples.reshape(-1, L).tolist()]
            adv = copo_advantages(rewards, answers, G, weights, cfg.scale_rewards, **copo_settings(cfg.copo_preset))
        else:
            adv = grpo_advantages(rewards, G, weights, cfg.scale_rewards)
        loss = -(adv * seq_logp).sum() / (seq_logp.numel() * L)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        gnorm = float(torch.sqrt(sum((p.grad**2).sum() for p in policy.parameters())))
        opt.step()
        if hvw is not None:
            weights = hvw.update(raw.mean(dim=0).tolist())
        if step % cfg.eval_every == 0 or step == cfg.steps - 1:
            obj = expected_objectives(policy)
            curves["step"].append(step + 1)
            for key in ("accuracy", "partial", "style"):
                curves[key].append(obj[key])
        curves["grad_norm"].append(gnorm)
        curves["zero_var_frac"].append(float(zv.float().mean()))
        curves["weights"].append([float(w) for w in weights])
        curves["noise_scale"].append(scale)
        curves["batch_success"].append(float(raw[:, 0].mean()))
    gn = torch.tensor(curves["grad_norm"])
    final = expected_objectives(policy)
    summary = {
        "final_accuracy": final["accuracy"], "final_partial": final["partial"], "final_style": final["style"],
        "zero_grad_frac": float((gn <= 1e-12).float().mean()),
        "grad_norm_cv": float(gn.std() / gn.mean()) if gn.numel() > 1 and float(gn.mean()) > 0 else float("nan"),
        "zero_var_group_frac": float(torch.tensor(curves["zero_var_frac"]).mean()),
        "hypervolume": hypervolume([[final["partial"], final["style"]]], [0.0, 0.0]),
    }
    return {"config": cfg.__dict__ | {"objectives": list(objectives)}, "curves": curves, "summary": summary}


def steps_to_threshold(steps: list[int], values: list[float], threshold: float) -> float:
    """First step whose value reaches ``threshold`` (``inf`` if never)."""
    for s, v in zip(steps, values):
        if v >= threshold:
            return float(s)
    return math.inf
