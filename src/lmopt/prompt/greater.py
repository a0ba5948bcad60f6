"""GReaTer (Das et al., arXiv 2412.09722): a small model optimises its own prompt from token gradients.

White-box, on :class:`lmopt.lm.LocalLM`. The prompt is a list of tokens; each step works on one position
(left to right, as released in psunlpgroup/GreaTer, ``llm_opt/gcg/greater_opt.py``):

1. **Candidates from the model itself.** For every minibatch example the task model's next-token
   distribution at that position (given everything before it) gives its ``top_k`` tokens; the candidate set
   is the union of ``n_intersections`` intersections of the top-k sets of ``intersect_size`` random examples;
   ``top_k`` grows by 2 until there are at least ``2 · n_select`` candidates. Special tokens, non-ASCII or
   unprintable tokens (``allow_non_ascii=False``) and the token at the previous position are excluded; the
   current token is always a candidate.
2. **Ranking by the gradient through the reasoning.** The loss of one example is the cross-entropy of the
   gold answer's tokens (logits divided by ``answer_temperature``, 0.2) after the prompt, the input and — in
   reasoning mode — the model's own generated reasoning followed by an extraction phrase ("Therefore, the
   final answer is"), plus ``fluency_weight`` (0.2) × the prompt's own mean token NLL. Its gradient with
   respect to the one-hot vector of the token at the position, summed over the minibatch, ranks the
   candidates; the ``n_select`` (3) with the most negative gradient go on.
3. **Selection on the minibatch.** Each of them is scored by ``mistake rate + fluency_weight / 10 · prompt
   NLL`` (the mistake rate is the task's own metric on the minibatch, through the same evaluator as
   validation); the lowest wins (ties: the later one, as released). As released, a candidate containing
   "." at a position past half the initial length is taken at once (the prompt may end there).
4. The next step moves to the next position. At the end of the prompt: if the last token holds a ".", the
   next pass starts again at the first position; otherwise a filler token ("_") is appended and optimised
   next (``grow=True``, up to ``max_prompt_tokens``).

Every prompt that changed is scored on validation (:meth:`RunContext.evaluate`); the result is the best
validation prompt. ``reasoning="auto"`` uses reasoning for generation tasks and label scoring (no reasoning,
the answer's label tokens right after the prompt, as the evaluator scores them) for classification tasks.

Differences from the released code (scaling for a CPU and lmopt's budget):

- Budget: every white-box pass over one example (the gradient pass, each selection candidate, the
  reasoning generation) is charged as one task-model call (``1/n_val`` of an evaluation), like every other
  optimiser's calls. The candidate proposal and the gradient come from one forward/backward pass (the
  gradient with respect to the one-hot over the whole vocabulary, restricted to the candidates afterwards,
  is the released gradient over the candidates: the embedding is linear in the one-hot).
- ``batch_size`` (8) training examples, resampled every step; the released code uses all of its 50 training
  examples at every step.
- The start is the task's seed instruction rather than twenty "!" tokens (``init_prompt`` sets another).
- A position with nothing before it (prompt at the very start, no BOS token) has no next-token
  distribution and is skipped.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .base import Optimizer, RunContext, StopRun
from .evaluator import Prompt

_MARK = "\x00PROMPT\x00"


@dataclass
class _Row:
    ids: list[int]
    start: int  # index of the first prompt token in ids
    answer: tuple[int, int]  # [begin, end) of the gold answer's tokens in ids


def candidate_tokens(top_sets: Sequence[Sequence[int]], intersect_size: int, n_intersections: int,
                     rng: random.Random) -> set[int]:
    """The released rule: the union over ``n_intersections`` draws of the intersection of the top-k sets of
    ``intersect_size`` random examples."""
    k = min(intersect_size, len(top_sets))
    out: set[int] = set()
    for _ in range(n_intersections):
        picked = rng.sample(range(len(top_sets)), k)
        inter = set(top_sets[picked[0]])
        for i in picked[1:]:
            inter &= set(top_sets[i])
        out |= inter
    return out


def propose_candidates(logprobs: Any, top_k: int, intersect_size: int, n_intersections: int, min_candidates: int,
                       rng: random.Random, banned: Any) -> list[int]:
    """Candidate tokens from per-example next-token log-probs ``[B, V]`` (banned tokens masked): the
    intersection rule with ``top_k`` growing by 2 until ``min_candidates`` tokens are found."""
    lp = logprobs.masked_fill(banned, -math.inf)
    allowed = int((~banned).sum())
    k = top_k
    while True:
        tops = [row.topk(min(k, allowed)).indices.tolist() for row in lp]
        cands = candidate_tokens(tops, intersect_size, n_intersections, rng)
        if len(cands) >= min_candidates or k >= allowed:
            return sorted(cands)
        k += 2


def rank_by_gradient(grad: Any, candidates: Sequence[int], n: int) -> list[int]:
    """The ``n`` candidates whose one-hot gradient, summed over the examples (``grad``: ``[B, V]``), is most
    negative: the first-order estimate of the largest loss decrease (ties: the lower token id)."""
    g = grad.sum(0)
    return sorted(candidates, key=lambda c: (float(g[c]), c))[:n]


class GReaTer(Optimizer):
    """GReaTer (see the module docstring for the algorithm and every difference from the released code).

    Args:
        top_k / intersect_size / n_intersections: the candidate rule (10 / 5 / 5 as released: ``topk`` 10,
            ``topq`` 5 intersections of 5 examples).
        n_select: candidates kept by the gradient and scored on the minibatch (3).
        answer_temperature: divides the logits of the answer loss (0.2).
        fluency_weight: weight of the prompt's NLL in the gradient loss (0.2; a tenth of it in selection).
        batch_size: training examples per step (8, resampled each step).
        reasoning: ``"auto"``, True (generate reasoning, then the extraction phrase and the answer) or False
            (the answer right after the prompt; classification tasks).
        extraction: the phrase between the reasoning and the answer.
        grow / max_prompt_tokens: append a filler token at the end of a prompt that does not end a sentence.
        stop_at_period: the released shortcut that takes a "."-candidate past half the initial length.
        allow_non_ascii: allow non-ASCII or unprintable tokens as candidates.
        init_prompt: start from this text instead of the seed instruction.
        max_steps: stop after this many positions (None: when the budget is spent).
    """

    name = "greater"
    paper = "arXiv 2412.09722 (GReaTer), §3; psunlpgroup/GreaTer"

    def __init__(self, top_k: int = 10, intersect_size: int = 5, n_intersections: int = 5, n_select: int = 3,
                 answer_temperature: float = 0.2, fluency_weight: float = 0.2, batch_size: int = 8,
                 reasoning: bool | str = "auto", extraction: str = " Therefore, the final answer is",
                 grow: bool = True, max_prompt_tokens: int = 48, stop_at_period: bool = True,
                 allow_non_ascii: bool = False, init_prompt: str | None = None, max_steps: int | None = None,
                 max_reasoning_tokens: int | None = None) -> None:
        for k, v in (("top_k", top_k), ("intersect_size", intersect_size), ("n_intersections", n_intersections),
                     ("n_select", n_select), ("batch_size", batch_size), ("max_prompt_tokens", max_prompt_tokens)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{k} must be an int >= 1, got {v!r}")
        if not answer_temperature > 0:
            raise ValueError(f"answer_temperature must be > 0, got {answer_temperature!r}")
        if not fluency_weight >= 0:
            raise ValueError(f"fluency_weight must be >= 0, got {fluency_weight!r}")
        if reasoning not in ("auto", True, False):
            raise ValueError(f"reasoning must be 'auto', True or False, got {reasoning!r}")
        if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
            raise ValueError(f"max_steps must be None or an int >= 1, got {max_steps!r}")
        super().__init__(top_k=top_k, intersect_size=intersect_size, n_intersections=n_intersections,
                         n_select=n_select, answer_temperature=answer_temperature, fluency_weight=fluency_weight,
                         batch_size=batch_size, reasoning=reasoning, extraction=extraction, grow=bool(grow),
                         max_prompt_tokens=max_prompt_tokens, stop_at_period=bool(stop_at_period),
                         allow_non_ascii=bool(allow_non_ascii), init_prompt=init_prompt, max_steps=max_steps,
                         max_reasoning_tokens=max_reasoning_tokens)
        self._banned_cache: dict[int, Any] = {}

    # -- white-box plumbing ------------------------------------------------------------------------
    @staticmethod
    def _backend(ctx: RunContext) -> Any:
        from ..lm.local import LocalLM

        backend = ctx.lm.backend
        if not isinstance(backend, LocalLM):
            raise TypeError("GReaTer is white-box: the task LM must be an lmopt.lm.LocalLM (its gradients are "
                            f"needed), got a {type(backend).__name__} backend")
        return backend

    def banned_tokens(self, backend: Any) -> Any:
        """Boolean mask over the vocabulary of tokens never proposed."""
        import torch

        key = id(backend.tokenizer)
        if key not in self._banned_cache:
            tok = backend.tokenizer
            vocab = backend.model.get_input_embeddings().weight.shape[0]
            n_tok = min(len(tok), vocab)
            banned = torch.ones(vocab, dtype=torch.bool)  # rows past the tokenizer's vocabulary stay banned
            texts = tok.batch_decode([[i] for i in range(n_tok)])
            special = set(tok.all_special_ids)
            allow = self.hparams["allow_non_ascii"]
            for i, s in enumerate(texts):
                banned[i] = i in special or (not allow and (not s.strip() or not (s.isascii() and s.isprintable())))
            self._banned_cache[key] = banned
        return self._banned_cache[key]

    def split_template(self, ctx: RunContext, example: Any) -> tuple[str, str]:
        text = Prompt(_MARK).render(ctx.task, example)
        if text.count(_MARK) != 1:
            raise ValueError(f"task {ctx.task.name!r}: its template must place {{instruction}} exactly once for "
                             "GReaTer to optimise it")
        before, after = text.split(_MARK)
        return before, after

    def build_row(self, ctx: RunContext, backend: Any, prompt_ids: list[int], example: Any,
                  reasoning: str | None) -> _Row:
        from ..lm.local import with_bos

        before, after = self.split_template(ctx, example)
        head = with_bos(backend._encode(before) if before else [], backend._bos)
        ids = head + list(prompt_ids) + backend._encode(after)
        if reasoning is not None:
            ids += backend._encode(" " + reasoning.strip() + self.hparams["extraction"])
        answer = backend._encode(" " + str(example.target).strip())
        if not answer:
            raise ValueError(f"example {example.input[:40]!r} has an empty target")
        return _Row(ids + answer, len(head), (len(ids), len(ids) + len(answer)))

    def token_gradient(self, backend: Any, rows: Sequence[_Row], pos: int, n_prompt: int) -> tuple[Any, Any, Any]:
        """One forward/backward pass over ``rows`` with the token at prompt position ``pos`` as a one-hot
        vector over the vocabulary. Returns (gradient of the summed loss w.r.t. each row's one-hot ``[B, V]``,
        next-token log-probs at the position ``[B, V]``, per-row loss ``[B]``)."""
        import torch

        model = backend.model
        emb = model.get_input_embeddings()
        weight = emb.weight.detach()
        n, width = len(rows), max(len(r.ids) for r in rows)
        pad = backend.tokenizer.pad_token_id if backend.tokenizer.pad_token_id is not None else 0
        ids = torch.full((n, width), pad, dtype=torch.long, device=weight.device)
        mask = torch.zeros((n, width), dtype=torch.long, device=weight.device)
        for b, r in enumerate(rows):
            ids[b, : len(r.ids)] = torch.tensor(r.ids)
            mask[b, : len(r.ids)] = 1
        at = torch.tensor([r.start + pos for r in rows], device=weight.device)
        flags = [p.requires_grad for p in model.parameters()]
        try:
            for p in model.parameters():
                p.requires_grad_(False)
            with torch.enable_grad():
                onehot = torch.zeros((n, weight.shape[0]), dtype=weight.dtype, device=weight.device)
                onehot[torch.arange(n), ids[torch.arange(n), at]] = 1.0
                onehot.requires_grad_(True)
                x = emb(ids).detach().clone()
                x[torch.arange(n), at] = onehot @ weight
                logits = model(inputs_embeds=x, attention_mask=mask).logits
                logp = torch.log_softmax(logits.to(torch.float64 if weight.dtype == torch.float64
                                                   else torch.float32), dim=-1)
                losses = []
                temp = self.hparams["answer_temperature"]
                for b, r in enumerate(rows):
                    a0, a1 = r.answer
                    tgt = ids[b, a0:a1]
                    ans = torch.nn.functional.cross_entropy(logits[b, a0 - 1: a1 - 1].to(logp.dtype) / temp, tgt)
                    # the prompt's own NLL: every prompt token that has something before it
                    p0 = max(r.start, 1)
                    p1 = r.start + n_prompt
                    ctrl = (-logp[b, p0 - 1: p1 - 1].gather(1, ids[b, p0:p1, None]).mean() if p1 > p0
                            else logp.new_zeros(()))
                    losses.append(ans + self.hparams["fluency_weight"] * ctrl)
                loss = torch.stack(losses)
                loss.sum().backward()
            prev = torch.stack([logp[b, r.start + pos - 1] for b, r in enumerate(rows)]).detach()
            return onehot.grad.detach(), prev, loss.detach()
        finally:
            for p, f in zip(model.parameters(), flags):
                p.requires_grad_(f)

    def prompt_nll(self, backend: Any, rows: Sequence[_Row], prompt_ids: list[int]) -> float:
        """Mean NLL of the prompt's tokens given what precedes them (the fluency term), over ``rows``."""
        import torch

        total, count = 0.0, 0
        with torch.inference_mode():
            for r in rows[:1] if self._prompt_first(rows) else rows:
                seq = r.ids[: r.start] + list(prompt_ids)
                if len(seq) < 2 or r.start + len(prompt_ids) <= max(r.start, 1):
                    continue
                logits = backend.model(input_ids=torch.tensor([seq])).logits[0].float()
                logp = torch.log_softmax(logits, -1)
                p0 = max(r.start, 1)
                idx = torch.arange(p0, len(seq))
                total += float(-logp[idx - 1, torch.tensor(seq)[idx]].sum())
                count += len(idx)
        return total / count if count else 0.0

    @staticmethod
    def _prompt_first(rows: Sequence[_Row]) -> bool:
        """Whether every row has the same tokens before the prompt (then the prompt's NLL is one number)."""
        return all(r.ids[: r.start] == rows[0].ids[: rows[0].start] for r in rows)

    # -- the search ----------------------------------------------------------------------------------
    def _optimize(self, ctx: RunContext) -> None:
        h = self.hparams
        backend = self._backend(ctx)
        train = ctx.splits.train
        if not train:
            raise ValueError("GReaTer learns from training examples; set split n_train >= 1")
        reasoning = h["reasoning"]
        if reasoning == "auto":  # label scoring exactly when the evaluator scores labels
            label_scored = (ctx.task.is_classification and ctx.eval_kwargs.get("mode") != "generate"
                            and not ctx.eval_kwargs.get("chat"))
            reasoning = not label_scored
        seed = ctx.best[1]
        exemplars = seed.exemplars
        text = h["init_prompt"] if h["init_prompt"] is not None else seed.instruction
        prompt_ids = backend._encode(text)
        if not prompt_ids:
            raise ValueError("GReaTer needs a non-empty starting prompt")
        initial_len = len(prompt_ids)
        filler = backend._encode("_")[-1]
        banned = self.banned_tokens(backend)
        rng = random.Random(int(ctx.rng("greater").integers(2**31)))
        tok = backend.tokenizer
        if h["init_prompt"] is not None:
            ctx.evaluate(Prompt(tok.decode(prompt_ids), exemplars), source="greater init")
        pos, step = 0, 0
        while h["max_steps"] is None or step < h["max_steps"]:
            batch = [train[i] for i in rng.sample(range(len(train)), min(h["batch_size"], len(train)))]
            probe = self.build_row(ctx, backend, prompt_ids, batch[0], None)
            if probe.start + pos == 0:  # nothing before this token: no next-token distribution
                pos = 1 if len(prompt_ids) > 1 else pos
                if probe.start + pos == 0:
                    raise ValueError("GReaTer cannot optimise a one-token prompt with nothing before it")
            step += 1
            current = Prompt(tok.decode(prompt_ids), exemplars)
            reasons: list[str | None] = [None] * len(batch)
            if reasoning:
                res = ctx.run_batch(current, batch, source=f"greater step {step} reasoning")
                reasons = list(res.get("raw") or res["predictions"])
            rows = [self.build_row(ctx, backend, prompt_ids, e, r) for e, r in zip(batch, reasons)]
            ctx.charge_examples(len(rows))
            grad, prev_logp, _ = self.token_gradient(backend, rows, pos, len(prompt_ids))
            ban = banned.clone()
            if pos > 0:
                ban[prompt_ids[pos - 1]] = True  # as released: not the token just before
            cands = propose_candidates(prev_logp, h["top_k"], h["intersect_size"], h["n_intersections"],
                                       2 * h["n_select"], rng, ban)
            if prompt_ids[pos] not in cands:
                cands.append(prompt_ids[pos])
            ranked = rank_by_gradient(grad, cands, h["n_select"])
            chosen, best_loss, scored = self._select(ctx, backend, rows, prompt_ids, pos, ranked, batch, exemplars,
                                                     initial_len, step)
            old_token = prompt_ids[pos]
            prompt_ids[pos] = chosen
            ctx.log("greater_step", step=step, position=pos, candidates=len(cands), ranked=ranked,
                    selection=scored, chosen=chosen, old=old_token, prompt=tok.decode(prompt_ids),
                    prompt_tokens=len(prompt_ids))
            if chosen != old_token:
                ctx.evaluate(Prompt(tok.decode(prompt_ids), exemplars), source=f"greater step {step}")
            pos += 1
            if pos >= len(prompt_ids):
                if "." in tok.decode([prompt_ids[-1]]) or not h["grow"] or len(prompt_ids) >= h["max_prompt_tokens"]:
                    pos = 0
                else:
                    prompt_ids.append(filler)

    def _select(self, ctx: RunContext, backend: Any, rows: Sequence[_Row], prompt_ids: list[int], pos: int,
                ranked: Sequence[int], batch: Sequence[Any], exemplars: Any, initial_len: int,
                step: int) -> tuple[int, float, list[dict[str, Any]]]:
        """Score each ranked candidate on the minibatch: mistake rate + fluency_weight/10 · prompt NLL."""
        h = self.hparams
        tok = backend.tokenizer
        best, best_loss, scored = prompt_ids[pos], math.inf, []
        for c in ranked:
            trial = list(prompt_ids)
            trial[pos] = c
            try:
                res = ctx.run_batch(Prompt(tok.decode(trial), exemplars), list(batch),
                                    source=f"greater step {step} candidate")
            except StopRun:
                if scored:  # keep what the budget allowed; the next step will stop the run
                    break
                raise
            nll = self.prompt_nll(backend, rows, trial)
            loss = (1.0 - float(res["score"])) + h["fluency_weight"] / 10 * nll
            scored.append({"token": c, "text": tok.decode([c]), "mistakes": 1.0 - float(res["score"]),
                           "nll": nll, "loss": loss})
            if loss <= best_loss:  # ties: the later candidate, as released
                best, best_loss = c, loss
            if h["stop_at_period"] and "." in tok.decode([c]) and pos >= 0.5 * initial_len:
                best, best_loss = c, loss
                break
        return best, best_loss, scored
