"""A small GRPO testbed where reward methods can separate: a tiny GPT doing 2-digit addition.

The policy is :class:`lmopt.tinygpt.GPT` over 13 tokens (digits, ``+``, ``=``, end of answer) trained from
scratch: supervised warm-up on sums it will never be asked in RL (a disjoint pool) until its sampled
accuracy on the RL prompts reaches ``warmup_target`` (default 30%), then GRPO with an exact-match reward (1
when the generated digits before the end token are the sum, else 0). The RL pool mixes sums with and
without a carry (a carry-free pool is learnt all at once: every group is then all-right or all-wrong), so
groups of every difficulty occur. Accuracy is greedy exact match on held-out prompts. Every random choice
comes from a seeded generator.

The GRPO step is TRL's default on-policy one written out: ``G`` samples per prompt at temperature 1, the
group advantages of :func:`lmopt.rl.advantages.grpo_advantages` (or COPO's), token-level loss averaged over
all completion tokens of the batch (TRL's ``loss_type="dapo"``; one update per generation, so the ratio is
1 and clipping is inactive), no KL term, Adam, gradient-norm clipping. ReDit dithers the rewards
(:func:`lmopt.rl.redit.dither`), MoPPS chooses the prompts (:class:`lmopt.rl.mopps.MoPPS`), COPO replaces
the advantages.

    from lmopt.rl.addition import AdditionConfig, run_addition
    out = run_addition(AdditionConfig(steps=300, method="grpo", seed=0))
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.nn import functional as F

from lmopt.rl.advantages import copo_advantages, copo_settings, grpo_advantages, zero_variance_groups
from lmopt.rl.mopps import MoPPS
from lmopt.rl.redit import dither
from lmopt.tinygpt import GPT, GPTConfig

PLUS, EQUALS, END = 10, 11, 12
VOCAB_SIZE = 13
PROMPT_LEN = 6  # "ab+cd="
ANSWER_LEN = 4  # up to three digits and the end token


def has_carry(a: int, b: int) -> bool:
    """Whether a + b carries in the units or the tens column."""
    return (a % 10 + b % 10) >= 10 or (a // 10 + b // 10 + (a % 10 + b % 10) // 10) >= 10


def encode_prompt(a: int, b: int) -> list[int]:
    return [a // 10, a % 10, PLUS, b // 10, b % 10, EQUALS]


def encode_answer(a: int, b: int) -> list[int]:
    return [int(c) for c in str(a + b)] + [END]


def decode_answer(tokens: list[int]) -> str:
    """The digits before the first end token ('' when none is generated: an unfinished answer)."""
    out = []
    for t in tokens:
        if t == END:
            return "".join(out)
        out.append(str(t) if t < 10 else "?")
    return ""


@dataclass
class AdditionTask:
    """Disjoint pools of 2-digit sums (10..99 + 10..99): RL training prompts, held-out test prompts and the
    supervised warm-up set (everything else). ``carry_fraction`` of the RL and test prompts carry."""

    n_train: int = 256
    n_test: int = 200
    carry_fraction: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.carry_fraction <= 1.0:
            raise ValueError(f"carry_fraction must lie in [0, 1], got {self.carry_fraction}")
        gen = torch.Generator().manual_seed(10_000 + self.seed)
        pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
        carry = [p for p in pairs if has_carry(*p)]
        plain = [p for p in pairs if not has_carry(*p)]
        carry = [carry[i] for i in torch.randperm(len(carry), generator=gen).tolist()]
        plain = [plain[i] for i in torch.randperm(len(plain), generator=gen).tolist()]
        n_carry = [round(n * self.carry_fraction) for n in (self.n_train, self.n_test)]
        n_plain = [n - c for n, c in zip((self.n_train, self.n_test), n_carry)]
        if sum(n_carry) > len(carry) // 2 or sum(n_plain) > len(plain) // 2:
            raise ValueError("n_train + n_test leaves too few sums for the warm-up set; lower them")
        self.train = carry[:n_carry[0]] + plain[:n_plain[0]]
        self.test = carry[n_carry[0]:sum(n_carry)] + plain[n_plain[0]:sum(n_plain)]
        self.warmup = carry[sum(n_carry):] + plain[sum(n_plain):]


def make_policy(seed: int, n_layer: int = 2, n_embd: int = 64, n_head: int = 4) -> GPT:
    return GPT(GPTConfig(vocab_size=VOCAB_SIZE, block_size=PROMPT_LEN + ANSWER_LEN, n_layer=n_layer, n_head=n_head,
                         n_embd=n_embd), seed=seed)


def _sequences(pairs: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forcing inputs and targets (-1 = ignored) for prompt + answer, padded with end tokens."""
    xs, ys = [], []
    for a, b in pairs:
        ans = encode_answer(a, b)
        seq = encode_prompt(a, b) + ans + [END] * (ANSWER_LEN - len(ans))
        tgt = [-1] * (PROMPT_LEN - 1) + ans + [-1] * (ANSWER_LEN - len(ans) + 1)
        xs.append(seq[:-1])
        ys.append(tgt[:PROMPT_LEN + ANSWER_LEN - 1])
    return torch.tensor(xs), torch.tensor(ys)


def warm_up(model: GPT, task: AdditionTask, max_steps: int, lr: float = 1e-3, batch: int = 64, seed: int = 0,
            target: float | None = None, check_every: int = 10) -> int:
    """Supervised training on the warm-up sums only (never an RL or test prompt), for ``max_steps`` steps or,
    with ``target``, until the greedy accuracy on the RL pool reaches it (checked every ``check_every``
    steps). Returns the number of steps taken."""
    gen = torch.Generator().manual_seed(20_000 + seed)
    x_all, y_all = _sequences(task.warmup)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for step in range(max_steps):
        if target is not None and step % check_every == 0 and sampled_accuracy(model, task.train, seed) >= target:
            return step
        ix = torch.randint(0, len(x_all), (batch,), generator=gen)
        logits = model(x_all[ix])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), y_all[ix].reshape(-1), ignore_index=-1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return max_steps


@torch.no_grad()
def generate(model: GPT, prompts: torch.Tensor, gen: torch.Generator | None, temperature: float = 1.0) -> torch.Tensor:
    """(N, ANSWER_LEN) completion tokens; greedy when ``gen`` is None. Tokens after an end token are kept
    (masked out of the loss and ignored by :func:`decode_answer`)."""
    seq = prompts
    for _ in range(ANSWER_LEN):
        logits = model(seq)[:, -1, :]
        if gen is None:
            nxt = logits.argmax(dim=-1, keepdim=True)
        else:
            nxt = torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1, generator=gen)
        seq = torch.cat([seq, nxt], dim=1)
    return seq[:, PROMPT_LEN:]


def completion_logprobs(model: GPT, prompts: torch.Tensor, completions: torch.Tensor,
                        temperature: float = 1.0) -> torch.Tensor:
    """(N, ANSWER_LEN) log-probabilities of the completion tokens under ``model`` (teacher forcing)."""
    logits = model(torch.cat([prompts, completions], dim=1)[:, :-1])[:, PROMPT_LEN - 1:, :]
    return torch.log_softmax(logits / temperature, dim=-1).gather(2, completions.unsqueeze(-1)).squeeze(-1)


def completion_mask(completions: torch.Tensor) -> torch.Tensor:
    """1 for the tokens up to and including the first end token, 0 after it."""
    is_end = (completions == END).int()
    before = torch.cumsum(is_end, dim=1) - is_end  # end tokens strictly before each position
    return (before == 0).float()


def exact_match(completions: torch.Tensor, pairs: list[tuple[int, int]]) -> torch.Tensor:
    return torch.tensor([float(decode_answer(c) == str(a + b)) for c, (a, b) in zip(completions.tolist(), pairs)])


def greedy_accuracy(model: GPT, pairs: list[tuple[int, int]]) -> float:
    was = model.training
    model.eval()
    prompts = torch.tensor([encode_prompt(a, b) for a, b in pairs])
    acc = float(exact_match(generate(model, prompts, None), pairs).mean())
    model.train(was)
    return acc


def sampled_accuracy(model: GPT, pairs: list[tuple[int, int]], seed: int = 0, temperature: float = 1.0) -> float:
    """Exact-match rate of one sample per prompt (the expected reward of a GRPO sample)."""
    was = model.training
    model.eval()
    prompts = torch.tensor([encode_prompt(a, b) for a, b in pairs])
    gen = torch.Generator().manual_seed(30_000 + seed)
    acc = float(exact_match(generate(model, prompts, gen, temperature), pairs).mean())
    model.train(was)
    return acc


@dataclass
class AdditionConfig:
    """One GRPO run on the addition testbed. ``method``: "grpo" or "copo" (``copo_preset``); ``redit_m > 0``
    dithers the rewards; ``sampler``: "uniform" (shuffled passes, as TRL's RepeatSampler) or "mopps"."""

    steps: int = 400
    batch_prompts: int = 8
    num_generations: int = 8
    lr: float = 1e-3
    max_grad_norm: float = 0.1
    temperature: float = 1.0
    scale_rewards: str = "group"
    method: str = "grpo"
    copo_preset: str = "released"
    redit_m: float = 0.0
    redit_distribution: str = "uniform"
    sampler: str = "uniform"
    mopps_lam: float = 0.5
    mopps_candidate_ratio: float | None = 4.0
    warmup_target: float = 0.3
    warmup_max_steps: int = 3000
    warmup_lr: float = 1e-3
    n_train: int = 256
    n_test: int = 200
    eval_every: int = 25
    n_layer: int = 2
    n_embd: int = 64
    seed: int = 0


_WARM_CACHE: dict[tuple, dict[str, Any]] = {}


def warm_policy(cfg: AdditionConfig, task: AdditionTask) -> tuple[GPT, int]:
    """The warmed-up policy of ``cfg.seed`` and its warm-up steps (computed once per process and setting,
    then copied)."""
    key = (cfg.seed, cfg.warmup_target, cfg.warmup_max_steps, cfg.warmup_lr, cfg.n_layer, cfg.n_embd,
           cfg.n_train, cfg.n_test)
    model = make_policy(cfg.seed, cfg.n_layer, cfg.n_embd)
    if key not in _WARM_CACHE:
        steps = warm_up(model, task, cfg.warmup_max_steps, cfg.warmup_lr, seed=cfg.seed, target=cfg.warmup_target)
        _WARM_CACHE[key] = {"state": copy.deepcopy(model.state_dict()), "steps": steps}
    model.load_state_dict(_WARM_CACHE[key]["state"])
    return model, _WARM_CACHE[key]["steps"]


def run_addition(cfg: AdditionConfig) -> dict[str, Any]:
    """Run one seeded GRPO experiment; returns the config, curves (held-out greedy accuracy every
    ``eval_every`` steps, per-step batch reward and tied-group fraction) and a summary."""
    if cfg.method not in ("grpo", "copo"):
        raise ValueError(f"method must be 'grpo' or 'copo', got {cfg.method!r}")
    if cfg.sampler not in ("uniform", "mopps"):
        raise ValueError(f"sampler must be 'uniform' or 'mopps', got {cfg.sampler!r}")
    if cfg.num_generations < 2 or cfg.batch_prompts < 1 or cfg.steps < 1:
        raise ValueError("need num_generations >= 2, batch_prompts >= 1 and steps >= 1")
    task = AdditionTask(cfg.n_train, cfg.n_test, seed=cfg.seed)
    if cfg.batch_prompts > len(task.train):
        raise ValueError(f"batch_prompts ({cfg.batch_prompts}) exceeds the RL pool ({len(task.train)})")
    policy, warmup_steps = warm_policy(cfg, task)
    copo = copo_settings(cfg.copo_preset) if cfg.method == "copo" else None
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + 1)
    noise_gen = torch.Generator().manual_seed(cfg.seed * 1000 + 2)
    order_gen = torch.Generator().manual_seed(cfg.seed * 1000 + 3)
    mopps = (MoPPS(len(task.train), lam=cfg.mopps_lam, candidate_ratio=cfg.mopps_candidate_ratio,
                   seed=cfg.seed * 1000 + 4) if cfg.sampler == "mopps" else None)
    G = cfg.num_generations
    queue: list[int] = []
    curves: dict[str, list[float]] = {"step": [0], "test_accuracy": [greedy_accuracy(policy, task.test)],
                                      "batch_reward": [], "zero_var_frac": [], "grad_norm": []}
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        if mopps is not None:
            chosen = mopps.select(cfg.batch_prompts)
        else:
            if len(queue) < cfg.batch_prompts:
                queue = torch.randperm(len(task.train), generator=order_gen).tolist()
            chosen, queue = queue[:cfg.batch_prompts], queue[cfg.batch_prompts:]
        pairs = [task.train[i] for i in chosen for _ in range(G)]
        prompts = torch.tensor([encode_prompt(a, b) for a, b in pairs])
        policy.eval()
        completions = generate(policy, prompts, gen, cfg.temperature)
        policy.train()
        raw = exact_match(completions, pairs)
        if mopps is not None:
            mopps.update(chosen, raw.view(-1, G).mean(dim=1).tolist(), G)
        rewards = dither(raw, cfg.redit_m, 1.0, cfg.redit_distribution, noise_gen) if cfg.redit_m > 0 else raw
        if copo is not None:
            answers = [decode_answer(c) for c in completions.tolist()]
            adv = copo_advantages(rewards, answers, G, None, cfg.scale_rewards, **copo)
        else:
            adv = grpo_advantages(rewards, G, None, cfg.scale_rewards)
        mask = completion_mask(completions)
        logp = completion_logprobs(policy, prompts, completions, cfg.temperature)
        loss = -(adv.unsqueeze(1) * logp * mask).sum() / mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm))
        opt.step()
        curves["batch_reward"].append(float(raw.mean()))
        curves["zero_var_frac"].append(float(zero_variance_groups(raw, G).float().mean()))
        curves["grad_norm"].append(gnorm)
        if (step + 1) % cfg.eval_every == 0 or step == cfg.steps - 1:
            curves["step"].append(step + 1)
            curves["test_accuracy"].append(greedy_accuracy(policy, task.test))
    seconds = time.perf_counter() - t0
    summary = {"warmup_steps": warmup_steps, "initial_test_accuracy": curves["test_accuracy"][0],
               "final_test_accuracy": curves["test_accuracy"][-1],
               "best_test_accuracy": max(curves["test_accuracy"]),
               "zero_var_group_frac": sum(curves["zero_var_frac"]) / len(curves["zero_var_frac"]),
               "seconds_per_step": seconds / cfg.steps}
    return {"config": asdict(cfg), "curves": curves, "summary": summary}

