"""SPO — Self-Supervised Prompt Optimization (Xiang et al., arXiv 2502.06855, Alg. 1, §3).

No scores are used to search. A fixed sample of ``n_questions`` (3) training inputs is drawn once. Each
round the optimiser LM rewrites the current best prompt given its outputs on those questions (the new
instruction inside ``<prompt>`` tags); the task LM answers the same questions with the new prompt; a judge
LM compares old and new answers pairwise ``n_judgements`` (4) times, and the new prompt replaces the best
one only if it wins a strict majority. About 8 LM calls per round, 10 rounds in the paper.

As in the authors' code, the rewriter and the judge see the task requirement (the task's description, or
its seed instruction when it has none; ``show_requirement``) and the reference answers of the sampled
questions (``show_references``; the released configuration files carry a few question/answer pairs), and
the A/B position of the new answers is drawn at random for each judgement (seeded): a deterministic
alternation would give a position-biased judge exactly half the votes every round, so no rewrite could
ever win a strict majority (``ab_order="alternate"`` keeps that order for comparison).

``judge_mode``: ``"generate"`` parses ``<choose>A</choose>`` from the judge's free text (the authors' way);
``"score"`` scores the two closed answers after ``<choose>`` instead (:meth:`lmopt.lm.LM.choose`), which a
small judge model can always "follow"; ``"auto"`` (default) scores when the judge LM can (a
:class:`~lmopt.lm.LocalLM`), else generates.

Budget: each execution of a new prompt on the question sample spends one evaluation; one evaluation is
reserved to score the final prompt on the validation split (for the report only: the search never sees a
label). A proposal that cannot be parsed after retries is a logged ``parse_failure`` and the round keeps
the current prompt — never an empty prompt (the released code turns a missing tag into an empty prompt).
An unparseable judgement counts as a vote for the old prompt.
"""

from __future__ import annotations

import re

from .base import Optimizer, RunContext, StopRun
from .evaluator import Prompt


class SPO(Optimizer):
    name = "spo"
    paper = "arXiv 2502.06855 (SPO), Alg. 1"

    def __init__(self, rounds: int = 10, n_questions: int = 3, n_judgements: int = 4, temperature: float = 0.7,
                 max_output_chars: int = 600, show_requirement: bool = True, show_references: bool = True,
                 ab_order: str = "random", judge_mode: str = "auto") -> None:
        for k, v in (("rounds", rounds), ("n_questions", n_questions), ("n_judgements", n_judgements)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{k} must be a positive int, got {v!r}")
        if ab_order not in ("random", "alternate"):
            raise ValueError(f"ab_order must be 'random' or 'alternate', got {ab_order!r}")
        if judge_mode not in ("auto", "generate", "score"):
            raise ValueError(f"judge_mode must be 'auto', 'generate' or 'score', got {judge_mode!r}")
        super().__init__(rounds=rounds, n_questions=n_questions, n_judgements=n_judgements,
                         temperature=temperature, max_output_chars=max_output_chars,
                         show_requirement=show_requirement, show_references=show_references, ab_order=ab_order,
                         judge_mode=judge_mode)

    def _qa(self, qs: list, outs: list[str]) -> str:
        m = self.hparams["max_output_chars"]
        return "\n\n".join(f"Question: {q.input}\nAnswer: {o.strip()[:m]}" for q, o in zip(qs, outs))

    def _context(self, ctx: RunContext, qs: list) -> str:
        """The requirement and reference answers shown to the rewriter and the judge ('' when both are off)."""
        parts = []
        if self.hparams["show_requirement"]:
            parts.append(f"Task requirement:\n{ctx.task.description or ctx.task.instruction}")
        if self.hparams["show_references"]:
            refs = "\n\n".join(f"Question: {q.input}\nReference answer: {q.target}" for q in qs)
            parts.append(f"Reference answers:\n{refs}")
        return "".join(p + "\n\n" for p in parts)

    def _optimize(self, ctx: RunContext) -> None:
        h = self.hparams
        rng = ctx.rng("spo")
        pool = ctx.splits.train or ctx.splits.validation
        k = min(h["n_questions"], len(pool))
        qs = [pool[int(i)] for i in rng.choice(len(pool), k, replace=False)]
        best = ctx.best[1] if ctx.best is not None else Prompt(ctx.task.instruction)
        self._final = best
        if ctx.evaluations_left <= 1:
            return
        best_out = ctx.outputs(best, qs)
        for r in range(h["rounds"]):
            if ctx.evaluations_left <= 1:  # keep one evaluation for the final validation score
                break
            msg = ("You improve prompts. Here is the current prompt and the answers it produced.\n\n"
                   f"{self._context(ctx, qs)}"
                   f"Current prompt:\n{best.instruction}\n\n{self._qa(qs, best_out)}\n\n"
                   "Write an improved prompt that would make the answers more correct, complete and "
                   "well-formatted. Reply with the new prompt between <prompt> and </prompt>.")
            props = ctx.propose([{"role": "user", "content": msg}], tag="prompt", temperature=h["temperature"],
                                seed=r, what="prompt", max_new_tokens=160)
            if not props or props[0] == best.instruction:
                ctx.log("spo_round", round=r, accepted=False, reason="no new prompt")
                continue
            cand = Prompt(props[0], best.exemplars)
            cand_out = ctx.outputs(cand, qs)
            wins = self._judge(ctx, qs, best_out, cand_out, r)
            accepted = wins * 2 > h["n_judgements"]
            ctx.log("spo_round", round=r, accepted=accepted, new_wins=wins, prompt=cand.to_dict())
            if accepted:
                best, best_out = cand, cand_out
                self._final = best

    def _judge(self, ctx: RunContext, qs: list, old: list[str], new: list[str], r: int) -> int:
        wins = 0
        rng = ctx.rng(f"spo-judge-{r}")
        for j in range(self.hparams["n_judgements"]):
            if self.hparams["ab_order"] == "alternate":
                new_is_a = j % 2 == 1
            else:  # a random side per judgement: a position-biased judge then votes at random, not 50/50
                new_is_a = bool(rng.integers(2))
            a, b = (new, old) if new_is_a else (old, new)
            msg = ("Compare two sets of answers to the same questions and decide which set is better "
                   "(more correct, complete and clear).\n\n"
                   f"{self._context(ctx, qs)}"
                   f"Answers A:\n{self._qa(qs, a)}\n\nAnswers B:\n{self._qa(qs, b)}\n\n"
                   "Reply with <choose>A</choose> or <choose>B</choose>.")
            conv = [{"role": "user", "content": msg}]
            if self._scores_judgements(ctx):
                choice: str | None = "AB"[ctx.choose(conv, ["A", "B"], prefix="<choose>", role="judge")]
            else:
                text = ctx.complete([conv], _judge_cfg(r * 10 + j), role="judge")[0][0]
                choice = _parse_choice(text)
                if choice is None:
                    ctx.parse_failures += 1
                    ctx.log("parse_failure", what="judgement", raw=text[:300], score=0.0)
                    continue
            wins += int((choice == "A") == new_is_a)
        return wins

    def _scores_judgements(self, ctx: RunContext) -> bool:
        mode = self.hparams["judge_mode"]
        if mode == "score" and not ctx.can_choose("judge"):
            raise ValueError("judge_mode='score' needs a judge LM that can score answers (a LocalLM); "
                             "use judge_mode='generate'")
        return mode == "score" or (mode == "auto" and ctx.can_choose("judge"))

    def _finalize(self, ctx: RunContext) -> None:
        final = getattr(self, "_final", None)
        if final is None:
            return
        score = ctx.score_of(final)
        if score is None:
            try:
                score = ctx.evaluate(final, source="spo final")
            except StopRun:
                return
        ctx.best = (score, final)


def _judge_cfg(seed: int):
    from ..lm.types import GenerationConfig

    return GenerationConfig(max_new_tokens=32, temperature=0.7, seed=seed)


def _parse_choice(text: str) -> str | None:
    m = re.findall(r"<\s*choose\s*>\s*([AB])\b", text, flags=re.IGNORECASE)
    if m:
        return m[-1].upper()
    m = re.findall(r"\b(?:answer|set|choice|choose)\s*:?\s*([AB])\b", text, flags=re.IGNORECASE)
    if m:
        return m[-1].upper()
    m = re.fullmatch(r"\s*([AB])\s*[.!]?\s*", text)
    return m.group(1).upper() if m else None
