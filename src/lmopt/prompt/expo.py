"""EXPO and EXPO-ES: meta-prompt optimisation for LLM agents in sequential decision making
(Kong, Wang, Shu & Dai, arXiv 2502.00728, Alg. 1 (EXPO) and Alg. 2 (EXPO-ES)).

An LLM agent acts in an environment step by step from a *meta-prompt* = task description + meta-instruction
(+ exemplars: past interactions). Rewards are non-stationary from the prompt's point of view (the history
grows), so EXPO uses an adversarial bandit: every step

1. a neural network (here a 1×100 ReLU MLP, :class:`~lmopt.bandits.NeuralUCB` used for its mean only)
   trained on ``(embedding of the chosen meta-prompt, observed reward)`` pairs predicts a score ``r̂(i)``
   for *every* candidate meta-prompt;
2. the cumulative estimates are updated, ``S_i ← S_i + r̂(i)``, and the meta-prompt is sampled with
   probability ``∝ exp(η S_i)`` (:class:`~lmopt.bandits.ExponentialWeights`);
3. the agent acts with that meta-prompt, the reward is observed and added to the NN's training data.

Candidates are the original task description / meta-instruction plus ``n_descriptions - 1`` /
``n_instructions - 1`` rephrasings by the optimiser LM (every description × instruction pair is an arm).
EXPO-ES (``exemplar_search=True``) also chooses which past interactions are shown: each step
``n_exemplar_sets`` random ordered subsets of the history are drawn, a second NN estimates their scores,
and one is sampled ∝ ``exp(η · r̂)`` (fresh arms each step, so no cumulation; the paper's exact ES
bookkeeping could not be checked offline — a documented approximation). ``eta`` defaults to 0.5: the
paper's tuned values could not be checked offline; with η ≥ 1 the cumulative estimates locked onto an
early lucky arm on 2 of 4 seeds of the test landscape, η = 0.5 on none.

The embedded environment is :class:`BernoulliBandit` — an LLM playing a K-armed bandit, one of the
paper's benchmarks (after Krishnamurthy et al., arXiv 2403.15371). Rewards, arm choices of the agent
(parsed tolerantly; an unparseable answer becomes a logged, seeded random arm) and usage per role are
returned in a :class:`SequentialResult`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..bandits import ExponentialWeights, NeuralUCB
from ..lm.client import LM
from ..lm.types import GenerationConfig
from ..lm.usage import BudgetExceeded
from .base import resolve_progress
from .features import as_matrix, resolve_embedder
from .parsing import parse_proposal


class BernoulliBandit:
    """A K-armed Bernoulli bandit with seeded rewards (``means`` default: one good arm among K)."""

    def __init__(self, means: Sequence[float] = (0.2, 0.2, 0.2, 0.8, 0.2), seed: int = 0) -> None:
        m = [float(x) for x in means]
        if len(m) < 2 or not all(0 <= x <= 1 for x in m):
            raise ValueError(f"means must be >= 2 probabilities in [0, 1], got {means!r}")
        self.means = np.array(m)
        self.rng = np.random.default_rng(seed)

    @property
    def n_arms(self) -> int:
        return len(self.means)

    def pull(self, arm: int) -> float:
        if not 0 <= arm < self.n_arms:
            raise ValueError(f"arm must be in [0, {self.n_arms}), got {arm}")
        return float(self.rng.random() < self.means[arm])

    description = ("You are playing a slot machine game with {k} machines, numbered 0 to {last}. "
                   "Each pull of a machine pays 1 point or 0 points; every machine has its own unknown chance "
                   "of paying. Your goal is to collect as many points as possible over {horizon} pulls.")
    instruction = ("Choose the machine to pull next. Reply with only the machine number between <arm> and "
                   "</arm>, for example <arm>2</arm>.")


def parse_arm(text: str, n_arms: int) -> int | None:
    """``<arm>3</arm>``, else the last integer in range in the text."""
    m = re.findall(r"<\s*arm\s*>\s*(\d+)", text, flags=re.IGNORECASE)
    nums = [int(x) for x in (m or re.findall(r"\b(\d+)\b", text))]
    nums = [x for x in nums if 0 <= x < n_arms]
    return nums[-1] if nums else None


@dataclass
class SequentialResult:
    method: str
    rewards: list[float]
    arms: list[int]
    meta_prompts: list[int]
    candidates: list[dict[str, str]]
    cumulative_regret: list[float]
    parse_failures: int
    usage: dict[str, dict[str, int]]
    wall_time_s: float
    stop_reason: str = "finished"
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total_reward(self) -> float:
        return float(sum(self.rewards))

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["total_reward"] = self.total_reward
        return d


_EXPO_NET = {"standardize": False, "weight_decay": 0.0, "init_each_fit": "fresh"}


class EXPO:
    """EXPO / EXPO-ES for an LLM agent in a :class:`BernoulliBandit` (see the module docstring).

    Args:
        n_descriptions / n_instructions: candidate task descriptions / meta-instructions (original included).
        eta: exponential-weights learning rate η.
        exemplar_search: EXPO-ES; ``n_exemplar_sets`` candidate subsets of ``exemplar_size`` past steps.
        optimize: False = the fixed original meta-prompt (the paper's baseline), same agent and history.
        embedder: features of meta-prompts (``"minilm"``, ``"hash"`` or a callable).
        train_steps: Adam steps of the score network per step.
        action_tokens: new tokens the agent may write per action. Small chat models often write a
            sentence before the number ("You are correct, ... The answer is 2."), which 12 tokens cut off.
        action_mode: ``"generate"`` parses the arm from the agent's text (the paper's agent); ``"score"``
            scores each arm number after ``<arm>`` instead (:meth:`lmopt.lm.LM.choose`: the most likely arm,
            never unparseable); ``"auto"`` (default) scores when the task LM can (a LocalLM).
        seed: all random choices (sampling of meta-prompts, exemplars, fallback arms).
    """

    def __init__(self, *, n_descriptions: int = 4, n_instructions: int = 4, eta: float = 0.5,
                 exemplar_search: bool = False, n_exemplar_sets: int = 8, exemplar_size: int = 10,
                 optimize: bool = True, embedder: Any = "minilm", train_steps: int = 100, action_tokens: int = 40,
                 action_mode: str = "auto", seed: int = 0) -> None:
        if action_mode not in ("auto", "generate", "score"):
            raise ValueError(f"action_mode must be 'auto', 'generate' or 'score', got {action_mode!r}")
        for k, v in (("n_descriptions", n_descriptions), ("n_instructions", n_instructions),
                     ("n_exemplar_sets", n_exemplar_sets), ("exemplar_size", exemplar_size),
                     ("action_tokens", action_tokens)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{k} must be a positive int, got {v!r}")
        self.n_descriptions, self.n_instructions, self.eta = n_descriptions, n_instructions, eta
        self.exemplar_search, self.n_exemplar_sets, self.exemplar_size = exemplar_search, n_exemplar_sets, exemplar_size
        self.optimize, self.embedder, self.train_steps, self.seed = optimize, embedder, train_steps, seed
        self.action_tokens = action_tokens
        self.action_mode = action_mode
        self.name = "fixed" if not optimize else ("expo-es" if exemplar_search else "expo")

    def _rephrase(self, lm: LM, text: str, n: int, what: str, history: list) -> list[str]:
        out = [text]
        if n <= 1:
            return out
        msg = (f"Rewrite the following {what} in different words, keeping its meaning and any format "
               f"requirements. Reply with the rewritten text between <prompt> and </prompt>.\n\n{text}")
        try:
            comps = lm.chat([[{"role": "user", "content": msg}]],
                            GenerationConfig(max_new_tokens=120, temperature=1.0, n=2 * n, seed=self.seed),
                            role="optimizer")[0]
        except BudgetExceeded as exc:  # the agent still runs, with the candidates it has
            history.append({"kind": "budget", "role": "optimizer", "what": what, "reason": str(exc)})
            return out
        for c in comps:
            p = parse_proposal(c.text, "prompt", min_chars=20)
            if p.text is None:
                history.append({"kind": "parse_failure", "what": what, "raw": c.text[:300], "score": 0.0})
            elif p.text not in out:
                out.append(p.text)
            if len(out) >= n:
                break
        return out

    @staticmethod
    def render(description: str, instruction: str, exemplars: Sequence[tuple[int, int, float]],
               n_arms: int, horizon: int, t: int) -> str:
        hist = "\n".join(f"Pull {s + 1}: machine {a} paid {int(r)}" for s, a, r in exemplars) or "(no pulls yet)"
        return f"{description}\n\nPast pulls:\n{hist}\n\nThis is pull {t + 1} of {horizon}. {instruction}"

    def run(self, env: BernoulliBandit, lm: LM, horizon: int = 30, *, optimizer_lm: LM | None = None,
            max_history: int = 30, progress: Any = None) -> SequentialResult:
        """Play ``horizon`` steps of ``env``; ``progress`` as in :meth:`lmopt.prompt.Optimizer.run` (``True``
        prints a line per step to stderr, a callable gets ``(step, horizon, message)``)."""
        if not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"horizon must be a positive int, got {horizon!r}")
        progress = resolve_progress(progress)
        t0 = time.perf_counter()
        before = lm.usage()
        opt_lm = optimizer_lm or lm
        history: list[dict[str, Any]] = []
        rng = np.random.default_rng([self.seed, 7])
        stop = "finished"
        if self.optimize:
            descs = self._rephrase(opt_lm, env.description.format(k=env.n_arms, last=env.n_arms - 1,
                                                                   horizon=horizon),
                                   self.n_descriptions, "task description", history)
            instrs = self._rephrase(opt_lm, env.instruction, self.n_instructions, "instruction", history)
        else:
            descs = [env.description.format(k=env.n_arms, last=env.n_arms - 1, horizon=horizon)]
            instrs = [env.instruction]
        cands = [(d, i) for d in descs for i in instrs]
        embed = resolve_embedder(self.embedder) if self.optimize else None
        feats = as_matrix(embed([f"{d}\n{i}" for d, i in cands]), len(cands)) if embed else None
        # EXPO's score network: a plain regressor on the raw features, re-drawn each round (not EASE's settings)
        net = NeuralUCB(feats.shape[1], hidden_layers=1, nu=0.0, train_steps=self.train_steps, lr=1e-2,
                        seed=self.seed, **_EXPO_NET) if feats is not None else None
        ew = ExponentialWeights(self.eta, seed=self.seed)
        ew.add_arms(len(cands))
        ex_net = None
        interactions: list[tuple[int, int, float]] = []
        rewards, arms, chosen = [], [], []
        failures = sum(h["kind"] == "parse_failure" for h in history)
        if self.action_mode == "score" and not lm.supports_choose:
            raise ValueError("action_mode='score' needs a task LM that can score answers (a LocalLM); "
                             "use action_mode='generate'")
        score_actions = self.action_mode == "score" or (self.action_mode == "auto" and lm.supports_choose)
        for t in range(horizon):
            if net is not None and len(cands) > 1:
                if net.n_observations:
                    net.fit()
                    ew.accumulate(net.mean(feats))
                i = ew.select()
            else:
                i = 0
            exemplars = interactions[-max_history:]
            if self.exemplar_search and self.optimize and len(interactions) > self.exemplar_size:
                exemplars, ex_net = self._choose_exemplars(interactions, embed, ex_net, rng, history)
            prompt = self.render(*cands[i], exemplars, env.n_arms, horizon, t)
            conv = [{"role": "user", "content": prompt}]
            try:
                if score_actions:
                    arm, _ = lm.choose(conv, [str(a) for a in range(env.n_arms)], prefix="<arm>", role="task")
                    text = f"<arm>{arm}</arm>"
                else:
                    cfg = GenerationConfig(max_new_tokens=self.action_tokens)
                    text = lm.chat([conv], cfg, role="task")[0][0].text
            except BudgetExceeded as exc:
                stop = f"LM budget: {exc}"
                break
            arm = parse_arm(text, env.n_arms)
            if arm is None:
                failures += 1
                arm = int(rng.integers(env.n_arms))
                history.append({"kind": "parse_failure", "what": "action", "raw": text[:200], "score": 0.0,
                                "fallback_arm": arm})
            r = env.pull(arm)
            if net is not None:
                net.add_observation(feats[i], r)
            if ex_net is not None:
                ex_net[1].add_observation(ex_net[0], r)
            interactions.append((t, arm, r))
            rewards.append(r)
            arms.append(arm)
            chosen.append(i)
            history.append({"kind": "step", "t": t, "meta_prompt": i, "arm": arm, "reward": r})
            if progress is not None:
                progress(t + 1, horizon, f"{self.name}: meta-prompt {i} pulled arm {arm}, total reward "
                                         f"{sum(rewards):g}")
        spent = [h for h in history if h["kind"] == "budget"]
        if spent and stop == "finished":
            stop = f"finished with {len(cands)} meta-prompt(s): optimizer LM budget: {spent[0]['reason']}"
        best = float(env.means.max())
        regret = list(np.cumsum([best - env.means[a] for a in arms]).round(6).astype(float))
        after = lm.usage()
        usage = {r: {k: after[r][k] - before.get(r, {}).get(k, 0) for k in after[r]} for r in after}
        if opt_lm is not lm:
            usage["optimizer"] = opt_lm.usage().get("optimizer", {})
        return SequentialResult(self.name, rewards, arms, chosen, [{"description": d, "instruction": i}
                                for d, i in cands], regret, failures, usage,
                                round(time.perf_counter() - t0, 3), stop, history)

    def _choose_exemplars(self, interactions: list[tuple[int, int, float]], embed: Any, ex_net: Any,
                          rng: np.random.Generator, history: list) -> tuple[list[tuple[int, int, float]], Any]:
        sets = []
        for _ in range(self.n_exemplar_sets):
            idx = sorted(rng.choice(len(interactions), self.exemplar_size, replace=False).tolist())
            sets.append([interactions[j] for j in idx])
        texts = ["\n".join(f"machine {a} paid {int(r)}" for _, a, r in s) for s in sets]
        X = as_matrix(embed(texts), len(texts))
        net = ex_net[1] if ex_net is not None else NeuralUCB(X.shape[1], hidden_layers=1, nu=0.0,
                                                              train_steps=self.train_steps, lr=1e-2,
                                                              seed=self.seed + 1, **_EXPO_NET)
        if net.n_observations:
            net.fit()
            est = net.mean(X)
        else:
            est = np.zeros(len(sets))
        p = np.exp(self.eta * (est - est.max()))
        p /= p.sum()
        k = int(rng.choice(len(sets), p=p))
        history.append({"kind": "exemplar_set", "size": len(sets[k]), "estimate": float(est[k])})
        return sets[k], (X[k], net)
