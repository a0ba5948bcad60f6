"""PROMST (Chen et al., arXiv 2402.08702): prompt optimisation for multi-step tasks from rule-based feedback,
with a learned score model that skips unpromising candidates.

On a :class:`lmopt.data.MultiStepTask` (e.g. the embedded ``number_walk``), as released in
yongchao98/PROMST (``*_func.py``, ``Tree.evolve_tree``):

1. A prompt's episodes are run (its validation evaluation); every failed episode carries an error category
   and a rule-written feedback from the environment (what a human would say about that kind of failure).
2. The failures are grouped by category (``categorize="rules"``: the environment's category, as released;
   ``"lm"``: the optimiser LM assigns each failure to one of the task's categories, falling back to the
   environment's when its reply names none); each group's feedback, cut to ``max_feedback_chars``, is
   summarised by one optimiser call (``summarize=True``, the released SumLLM).
3. From the prompt's ancestry (the prompts from the root to it) and the summaries, the optimiser LM writes
   ``n_children`` new prompts (8); each is scored and the ``n_selected`` best (2) are expanded in turn,
   depth first. Expansion stops at a prompt without failures, and — after ``min_level`` levels (2) — once
   the best score per expanded level has fallen three times in a row (the released rule); ``max_level``
   bounds the depth and the evaluation budget the whole search.
4. **Score model** (``score_model=True``; the paper's, left empty in the released code): a ridge regression
   on embeddings of the prompts (``embedder``, hashed n-grams by default) fitted to every score seen so far.
   Once ``score_model_min`` prompts are scored, only the ``score_model_keep`` fraction of each level's
   children with the highest predicted score is evaluated; the others are logged as ``promst_skipped``
   with their prediction, so the evaluations saved are counted, and the predictions of the evaluated ones
   are logged too (``promst_child``) so the model's accuracy can be measured.

Differences from the released code: prompts are scored on the validation split (the released code scores
and collects feedback on its training set: here the test split stays unseen, and the validation
episodes provide both score and feedback); the children of one prompt share one summary per category
(the released code re-summarises for every child; with greedy summaries the results are the same); the
children are sampled together at temperature 1 (one call with ``n``); a child is the text between
``<prompt>`` tags, or the reply's first line when there are none (the released code takes the whole reply).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from ..data.multistep import MultiStepTask
from ..lm.types import GenerationConfig
from .base import Optimizer, RunContext, StopRun
from .evaluator import Prompt
from .features import as_matrix, embedder_identity, resolve_embedder
from .parsing import extract_tag


class RidgeScoreModel:
    """Predicts a prompt's score from its embedding: ridge regression around the mean score."""

    def __init__(self, embed: Any, alpha: float = 1.0) -> None:
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha!r}")
        self.embed, self.alpha = embed, float(alpha)
        self.w: np.ndarray | None = None
        self.mean = 0.0

    def fit(self, texts: list[str], scores: list[float]) -> RidgeScoreModel:
        x = as_matrix(self.embed(texts), len(texts)).astype(np.float64)
        y = np.asarray(scores, dtype=np.float64)
        self.mean = float(y.mean())
        a = x.T @ x + self.alpha * np.eye(x.shape[1])
        self.w = np.linalg.solve(a, x.T @ (y - self.mean))
        return self

    def predict(self, texts: list[str]) -> np.ndarray:
        if self.w is None:
            raise RuntimeError("fit the score model before predicting")
        x = as_matrix(self.embed(texts), len(texts)).astype(np.float64)
        return x @ self.w + self.mean


class PROMST(Optimizer):
    """PROMST's tree search (see the module docstring).

    Args:
        n_children / n_selected / min_level / max_level: the tree (8 / 2 / 2 as released; ``max_level`` 6).
        summarize: one summary call per error category (else the cut feedback itself goes to the prompt LM).
        categorize: ``"rules"`` or ``"lm"``.
        max_feedback_chars: feedback per category before summarising (the released token limit's role).
        score_model / score_model_min / score_model_keep / embedder: the score model.
        temperature / max_new_tokens: sampling of the children.
    """

    name = "promst"
    paper = "arXiv 2402.08702 (PROMST), §3"

    def __init__(self, n_children: int = 8, n_selected: int = 2, min_level: int = 2, max_level: int = 6,
                 summarize: bool = True, categorize: str = "rules", max_feedback_chars: int = 3000,
                 score_model: bool = True, score_model_min: int = 6, score_model_keep: float = 0.5,
                 embedder: Any = "hash", temperature: float = 1.0, max_new_tokens: int = 256) -> None:
        for k, v in (("n_children", n_children), ("n_selected", n_selected), ("min_level", min_level),
                     ("max_level", max_level), ("score_model_min", score_model_min),
                     ("max_new_tokens", max_new_tokens), ("max_feedback_chars", max_feedback_chars)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{k} must be an int >= 1, got {v!r}")
        if categorize not in ("rules", "lm"):
            raise ValueError(f"categorize must be 'rules' or 'lm', got {categorize!r}")
        if not 0 < score_model_keep <= 1:
            raise ValueError(f"score_model_keep must lie in (0, 1], got {score_model_keep!r}")
        super().__init__(n_children=n_children, n_selected=n_selected, min_level=min_level, max_level=max_level,
                         summarize=bool(summarize), categorize=categorize, max_feedback_chars=max_feedback_chars,
                         score_model=bool(score_model), score_model_min=score_model_min,
                         score_model_keep=score_model_keep, embedder=embedder_identity(embedder),
                         temperature=temperature, max_new_tokens=max_new_tokens)
        self._embedder = embedder

    # -- feedback ------------------------------------------------------------------------------------
    def failures(self, ctx: RunContext, prompt: Prompt) -> list[dict[str, Any]]:
        ev = ctx.evaluation(prompt) or {}
        out = []
        for p in ev.get("predictions") or []:
            ep = json.loads(p)
            if ep["category"] != "success":
                out.append(ep)
        return out

    def grouped(self, ctx: RunContext, prompt: Prompt, fails: list[dict[str, Any]]) -> dict[str, list[str]]:
        """Failure feedback by category, in the task's category order, each group cut to the limit."""
        cats = list(ctx.task.categories)
        groups: dict[str, list[str]] = {c: [] for c in cats}
        rng = ctx.rng(f"promst-shuffle:{prompt.instruction}")
        for i in rng.permutation(len(fails)):  # as released: a random order before the length cut
            ep = fails[int(i)]
            cat = self._categorize(ctx, ep, cats) if self.hparams["categorize"] == "lm" else ep["category"]
            group = groups.setdefault(cat, [])
            if sum(len(f) + 1 for f in group) + len(ep["feedback"]) <= self.hparams["max_feedback_chars"]:
                group.append(ep["feedback"])
        return {c: g for c, g in groups.items() if g}

    def _categorize(self, ctx: RunContext, ep: dict[str, Any], cats: list[str]) -> str:
        listing = "\n".join(f"- {c}: {ctx.task.categories[c]}" for c in cats)
        ask = (f"An agent failed an episode of a multi-step task. What went wrong:\n{ep['feedback']}\n\n"
               f"Which of these error types is it?\n{listing}\n\nAnswer with the type's name between <type> "
               "and </type>.")
        reply = ctx.complete([[{"role": "user", "content": ask}]], GenerationConfig(max_new_tokens=16))[0][0]
        name = (extract_tag(reply, "type") or reply).strip().lower()
        return next((c for c in cats if c == name), ep["category"])

    def error_summary(self, ctx: RunContext, prompt: Prompt, groups: dict[str, list[str]]) -> str:
        parts = []
        for k, (cat, fbs) in enumerate(groups.items(), 1):
            text = "\n".join(fbs)
            if self.hparams["summarize"]:
                ask = (f"A prompt for a multi-step task:\n{prompt.instruction}\n\nEpisodes under it failed this "
                       f"way ({cat}: {ctx.task.categories.get(cat, cat)}):\n{text}\n\nSummarise in a few "
                       "sentences what went wrong and what the prompt should say to prevent it.")
                text = ctx.complete([[{"role": "user", "content": ask}]],
                                    GenerationConfig(max_new_tokens=self.hparams["max_new_tokens"]))[0][0].strip()
            parts.append(f"Error type {k} ({cat}):\n{text}")
        return "\n\n".join(parts)

    # -- the search ------------------------------------------------------------------------------------
    def _optimize(self, ctx: RunContext) -> None:
        if not isinstance(ctx.task, MultiStepTask):
            raise TypeError(f"PROMST optimises prompts of multi-step tasks (lmopt.data.MultiStepTask, e.g. "
                            f"load_task('number_walk')); {ctx.task.name!r} is a {type(ctx.task).__name__}")
        self._embed = resolve_embedder(self._embedder)
        self._best_per_level: list[float] = []
        self._saved = 0
        self._expansions = 0
        root = ctx.best[1]
        self._expand(ctx, [root], 1)
        ctx.log("promst_summary", evaluations_saved=self._saved)

    def _expand(self, ctx: RunContext, lineage: list[Prompt], level: int) -> None:
        h = self.hparams
        bpl = self._best_per_level
        if level >= h["min_level"] and len(bpl) >= 3 and bpl[-1] < bpl[-2] < bpl[-3]:
            return
        if level > h["max_level"]:
            return
        node = lineage[-1]
        fails = self.failures(ctx, node)
        if not fails:
            ctx.log("promst_leaf", prompt=node.instruction, reason="no failures")
            return
        ctx.log("promst_expand", prompt=node.instruction, level=level, failures=len(fails))
        summary = self.error_summary(ctx, node, self.grouped(ctx, node, fails))
        history = "\n".join(f"{i + 1}: {p.instruction}" for i, p in enumerate(lineage))
        ask = ("You write the prompt that an agent follows in a multi-step task. The prompts tried so far on "
               f"this line, oldest first:\n{history}\n\nThe latest one still fails. Its errors, by type:\n"
               f"{summary}\n\nWrite an improved prompt that prevents these errors. Put it between <prompt> and "
               "</prompt>.")
        # plain: the released code takes the whole reply as the new prompt; a tag is used when there is one
        children = ctx.propose([{"role": "user", "content": ask}], tag="prompt", plain=True,
                               temperature=h["temperature"], n=h["n_children"], seed=len(ctx.history),
                               what="prompt", max_new_tokens=h["max_new_tokens"])
        children = [c for c in dict.fromkeys(children) if c != node.instruction]
        if not children:
            return
        self._expansions += 1
        scored = self._score_children(ctx, [Prompt(c) for c in children], level)
        if not scored:
            return
        selected = sorted(scored, key=lambda x: -x[0])[: h["n_selected"]]
        bpl.append(selected[0][0])
        for _, child in selected:
            self._expand(ctx, lineage + [child], level + 1)

    def _score_children(self, ctx: RunContext, children: list[Prompt], level: int) -> list[tuple[float, Prompt]]:
        h = self.hparams
        preds: list[float | None] = [None] * len(children)
        order = list(range(len(children)))
        if h["score_model"] and len(ctx.scores) >= h["score_model_min"]:
            seen = list(ctx.scores)
            model = RidgeScoreModel(self._embed).fit([ctx.prompts[k].instruction for k in seen],
                                                     [ctx.scores[k] for k in seen])
            preds = [float(v) for v in model.predict([c.instruction for c in children])]
            keep = max(1, math.ceil(h["score_model_keep"] * len(children)))
            order = sorted(order, key=lambda i: -preds[i])
            for i in order[keep:]:
                ctx.log("promst_skipped", prompt=children[i].instruction, predicted=preds[i], level=level,
                        expansion=self._expansions)
                self._saved += 1
            order = order[:keep]
        out = []
        for i in order:
            try:
                score = ctx.evaluate(children[i], source=f"promst level {level}")
            except StopRun:
                if out:
                    break
                raise
            ctx.log("promst_child", prompt=children[i].instruction, level=level, val_score=score,
                    predicted=preds[i], expansion=self._expansions)
            out.append((score, children[i]))
        return out
