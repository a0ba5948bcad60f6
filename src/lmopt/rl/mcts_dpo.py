"""MCTS-DPO — step-level preference data from Monte Carlo tree search (Xie et al., arXiv 2405.00451; released
code YuxiXie/MCTS-DPO), for TRL's ``DPOTrainer`` or :class:`lmopt.rl.mcts_dpo_trainer.ConfidenceDPOTrainer`.

The search, as released:

* a node is a reasoning step; expanding a node samples ``n_init_actions`` (root) or ``n_actions`` candidate
  next steps from the policy; its prior is ``p = exp(log π(step) / |step|^λ)`` (λ = ``length_penalty`` 1.25);
* each child gets a value from the policy's own **self-evaluation** of the step (the probability it gives the
  "correct" option), divided by ``max(depth - 3, 1)`` (longer chains are discounted); a value of 0 inherits
  the parent's; a terminal step adds the **outcome reward** (+1 right, -1 wrong). The step's reward is
  ``r = value - parent value``, its initial ``Q = V(parent) + r``;
* selection by PUCT, ``Q + w · p · √N(parent) / (1 + N)`` (w = 1); back-propagation sets a leaf's
  ``Q = r + γ V``, a parent's ``V`` to the visit-weighted mean of its children's ``Q`` (weights
  ``max(1, N)``), ``Q = r + γ V`` again;
* since ``r`` telescopes, a step's ``Q`` is the visit-weighted mean of the values at the leaves below it:
  the outcome reward decides wherever the search reaches an answer, the self-evaluation at leaves cut by
  the depth limit and, through the priors and values, which branches get the visits;
* from the root, ``n_iters`` iterations (×4 at the first step), then the search moves to the most visited
  child (ties: higher Q, then V) and searches again, until a terminal step or ``depth_limit``;
* at every step of that path, the candidates sorted by Q give a preference pair: the best against the worst
  (``choose_worst=True``, the released math runs) or against the second best; a chain of single children
  is folded into its first step's text. The pair's **confidence** is ``1 / (1 + N_rejected / max(1,
  N_chosen))`` from visit counts and its DPO label smoothing ``min(1 - confidence, 0.5)`` (the released
  ``conservative`` loss).

Released defaults (math QA script): ``n_iters`` 64, ``depth_limit`` 3, ``n_init_actions`` 2, ``n_actions``
2, ``choose_worst``, β 0.1. Deviations: steps here end at a newline (or ``max_step_tokens``), while the
release cuts steps by a token budget derived from the reference solution's length; the released
"diversity" tie-breaker in the final move (visit count × (variance of grandchildren's Q + 1)) is replaced by
visit count alone; the released self-evaluation prompt shows the reference solution (``hint=True`` here,
default) and reads the probability of the tokens of "B"/"correct" — here the options are scored by
:meth:`lmopt.lm.LM.score` and normalised.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class MCTSConfig:
    n_iters: int = 64
    depth_limit: int = 3
    n_init_actions: int = 2
    n_actions: int = 2
    w_exp: float = 1.0
    gamma: float = 1.0
    length_penalty: float = 1.25
    choose_worst: bool = True
    first_step_factor: int = 4  # the released search iterates 4× more from the initial root

    def __post_init__(self) -> None:
        for k in ("n_iters", "depth_limit", "n_init_actions", "n_actions", "first_step_factor"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{k} must be a positive int, got {v!r}")
        if self.w_exp < 0 or not 0 < self.gamma <= 1:
            raise ValueError(f"need w_exp >= 0 and 0 < gamma <= 1, got {self.w_exp}, {self.gamma}")


@dataclass(frozen=True)
class Step:
    """A candidate step: its text, total log-probability under the policy, token count, and whether it ends
    the solution."""

    text: str
    logprob: float
    n_tokens: int
    terminal: bool


class StepEnvironment(Protocol):
    def propose(self, steps: Sequence[str], n: int) -> list[Step]: ...

    def evaluate(self, steps: Sequence[str], step: Step) -> tuple[float, float | None]:
        """``(self-evaluation confidence in [0, 1], outcome reward or None)`` of ``step`` after ``steps``."""
        ...


@dataclass(eq=False)
class Node:
    step: Step | None
    parent: Node | None = None
    value: float = 0.0
    length_penalty: float = 1.25
    children: list[Node] = field(default_factory=list)
    N: int = 0
    V: float = 0.0
    Q: float = 0.0

    def __post_init__(self) -> None:
        self.Q = (self.parent.V + self.r) if self.parent is not None else self.r

    @property
    def depth(self) -> int:
        return 0 if self.parent is None else self.parent.depth + 1

    @property
    def r(self) -> float:
        return self.value if self.parent is None else self.value - self.parent.value

    @property
    def prior(self) -> float:
        if self.step is None:
            return 1.0
        return math.exp(self.step.logprob / max(1, self.step.n_tokens) ** self.length_penalty)

    @property
    def terminal(self) -> bool:
        return self.step is not None and self.step.terminal

    def path(self) -> list[str]:
        out, node = [], self
        while node is not None and node.step is not None:
            out.append(node.step.text)
            node = node.parent
        return out[::-1]


def step_value(conf: float, outcome: float | None, parent_depth: int, parent_value: float, terminal: bool) -> float:
    """The released value of a new step (see the module docstring)."""
    score = conf / max(parent_depth - 3, 1)
    if score == 0:
        score = parent_value
    if terminal and outcome is not None:
        score += outcome
    return score


class MCTS:
    """The released search over steps of one problem (see the module docstring)."""

    def __init__(self, env: StepEnvironment, config: MCTSConfig | None = None) -> None:
        self.env, self.cfg = env, config or MCTSConfig()
        self.root = Node(None, length_penalty=self.cfg.length_penalty)
        self.evaluations = 0

    def _at_limit(self, node: Node, root: Node) -> bool:
        return node.terminal or node.depth - root.depth >= self.cfg.depth_limit

    def _puct(self, node: Node) -> float:
        return node.Q + self.cfg.w_exp * node.prior * math.sqrt(node.parent.N) / (1 + node.N)

    def _expand(self, node: Node) -> None:
        n = self.cfg.n_init_actions if node.depth == 0 else self.cfg.n_actions
        prefix = node.path()
        for step in self.env.propose(prefix, n):
            conf, outcome = self.env.evaluate(prefix, step)
            self.evaluations += 1
            if not 0.0 <= conf <= 1.0:
                raise ValueError(f"self-evaluation confidence must lie in [0, 1], got {conf!r}")
            value = step_value(conf, outcome, node.depth, node.value, step.terminal)
            node.children.append(Node(step, node, value, self.cfg.length_penalty))

    def _backpropagate(self, path: list[Node]) -> None:
        leaf = path[-1]
        leaf.Q = leaf.r + self.cfg.gamma * leaf.V
        leaf.N += 1
        for node in reversed(path[:-1]):
            w = [max(1, c.N) for c in node.children]
            node.V = sum(wi * c.Q for wi, c in zip(w, node.children)) / sum(w)
            node.N += 1
            if node.step is not None:
                node.Q = node.r + self.cfg.gamma * node.V

    def iterate(self, root: Node) -> list[Node]:
        root.N += 1
        path = [root]
        node = root
        while node.children and not self._at_limit(node, root):  # selection
            node = max(node.children, key=self._puct)
            path.append(node)
        while not self._at_limit(path[-1], root):  # expansion down to a leaf
            if not path[-1].children:  # (a node whose expansion gave nothing is tried again, as released)
                self._expand(path[-1])
            if not path[-1].children:
                break
            path.append(max(path[-1].children, key=self._puct))
        self._backpropagate(path)
        return path

    def run(self) -> list[Node]:
        """Search and move until a terminal step or the depth limit; returns the chosen path's nodes
        (the root first)."""
        root, chosen = self.root, [self.root]
        while True:
            n = self.cfg.n_iters * (self.cfg.first_step_factor if root.depth == 0 else 1)
            for _ in range(n):
                self.iterate(root)
            if not root.children:
                return chosen
            root = max(root.children, key=lambda c: (c.N, c.Q, c.V))
            chosen.append(root)
            if root.terminal or root.depth >= self.cfg.depth_limit:
                return chosen


def _folded(node: Node) -> str:
    """A candidate's text with any chain of single children appended (the released folding)."""
    parts, cur = [node.step.text], node
    while len(cur.children) == 1:
        cur = cur.children[0]
        parts.append(cur.step.text)
    return "".join(parts)


def confidence(n_chosen: int, n_rejected: int) -> float:
    """``1 / (1 + N_rejected / max(1, N_chosen))`` — high when the chosen step was visited far more."""
    return 1.0 / (1.0 + n_rejected / max(1, n_chosen))


def preference_pairs(path: Sequence[Node], choose_worst: bool = True) -> list[dict[str, Any]]:
    """One pair per step of the chosen ``path`` that has two or more candidates: ``prompt_steps`` (the steps
    before), ``chosen`` / ``rejected`` texts, their Q and visit counts, ``confidence`` and
    ``label_smoothing``."""
    out = []
    for node in path:
        cands = sorted(node.children, key=lambda c: (c.Q, c.prior, c.r, c.value, c.N))
        if len(cands) < 2:
            continue
        best, worst = cands[-1], (cands[0] if choose_worst else cands[-2])
        conf = confidence(best.N, worst.N)
        out.append({"prompt_steps": node.path(), "chosen": _folded(best), "rejected": _folded(worst),
                    "chosen_q": best.Q, "rejected_q": worst.Q, "chosen_visits": best.N, "rejected_visits": worst.N,
                    "confidence": conf, "label_smoothing": min(1.0 - conf, 0.5)})
    return out


EVAL_TEMPLATE = ("Question: {question}\n{hint}Proposed solution so far:\n{steps}\nNew step: {step}\n"
                 "Is the new step (A) incorrect or (B) correct?\nAnswer: (")


class LMStepEnvironment:
    """Steps and self-evaluations from a :class:`lmopt.lm.LM` (any backend that can generate and score).

    ``propose`` samples ``n`` continuations of ``question`` + the steps so far, each cut at the first newline
    (one step; ``max_step_tokens`` at most) and scored for its log-probability; a step that contains
    ``answer_marker`` or ends generation is terminal. ``evaluate`` scores the options "A" and "B" after the
    evaluation prompt (with the reference ``solution`` as a hint when ``hint``) and returns P(B) normalised
    over the two, plus the outcome reward (+1 / -1: ``answer_fn(step) == answer``) on terminal steps.
    """

    def __init__(self, lm: Any, question: str, answer: str, *, solution: str = "", hint: bool = True,
                 answer_fn: Callable[[str], str] | None = None, answer_marker: str = "The answer is",
                 max_step_tokens: int = 64, temperature: float = 1.0, seed: int = 0) -> None:
        from .answers import final_answer

        self.lm, self.question, self.answer = lm, question, str(answer)
        self.solution, self.hint = solution, hint
        self.answer_fn = answer_fn or final_answer
        self.marker, self.max_step_tokens = answer_marker, max_step_tokens
        self.temperature, self.seed = temperature, seed
        self._calls = 0

    def prompt(self, steps: Sequence[str]) -> str:
        return f"Question: {self.question}\nAnswer step by step, one step per line.\n" + "".join(steps)

    def propose(self, steps: Sequence[str], n: int) -> list[Step]:
        from ..lm import GenerationConfig

        prompt = self.prompt(steps)
        self._calls += 1
        cfg = GenerationConfig(max_new_tokens=self.max_step_tokens, temperature=self.temperature, n=n,
                               stop=("\n",), seed=self.seed * 100003 + self._calls)
        comps = self.lm.generate(prompt, cfg)[0]
        texts = [c.text.split("\n")[0].rstrip() + "\n" for c in comps]
        scores = self.lm.score([prompt] * len(texts), texts)
        # terminal: the step states the answer, or the model had nothing more to write
        return [Step(t, s.logprob, s.continuation_tokens, self.marker.lower() in t.lower() or not t.strip())
                for t, s in zip(texts, scores)]

    def evaluate(self, steps: Sequence[str], step: Step) -> tuple[float, float | None]:
        hint = f"Reference solution: {self.solution}\n" if self.hint and self.solution else ""
        prompt = EVAL_TEMPLATE.format(question=self.question, hint=hint, steps="".join(steps) or "(none)\n",
                                      step=step.text.strip())
        a, b = self.lm.score([prompt, prompt], ["A", "B"])
        pb = 1.0 / (1.0 + math.exp(a.logprob - b.logprob))
        outcome = None
        if step.terminal:
            outcome = 1.0 if self.answer_fn("".join(steps) + step.text) == self.answer else -1.0
        return pb, outcome


def mcts_preference_data(lm: Any, problems: Sequence[dict[str, str]], config: MCTSConfig | None = None,
                         **env_kwargs: Any) -> list[dict[str, Any]]:
    """Preference rows for TRL's DPOTrainer from ``problems`` (dicts with ``question``, ``answer`` and
    optionally ``solution``): ``prompt`` (question + steps so far), ``chosen``, ``rejected``, plus
    ``label_smoothing``, ``confidence`` and the search statistics. Budgets and caching come from ``lm``."""
    rows = []
    for i, p in enumerate(problems):
        if "question" not in p or "answer" not in p:
            raise ValueError(f"problem {i} needs 'question' and 'answer' keys, got {sorted(p)}")
        env = LMStepEnvironment(lm, p["question"], p["answer"], solution=p.get("solution", ""), seed=i,
                                **env_kwargs)
        search = MCTS(env, config)
        path = search.run()
        for pair in preference_pairs(path, (config or MCTSConfig()).choose_worst):
            rows.append({"prompt": env.prompt(pair["prompt_steps"]), "chosen": pair["chosen"],
                         "rejected": pair["rejected"], "label_smoothing": pair["label_smoothing"],
                         "confidence": pair["confidence"], "chosen_q": pair["chosen_q"],
                         "rejected_q": pair["rejected_q"], "problem": i})
    return rows


__all__ = ["EVAL_TEMPLATE", "LMStepEnvironment", "MCTS", "MCTSConfig", "Node", "Step", "StepEnvironment",
           "confidence", "mcts_preference_data", "preference_pairs", "step_value"]
