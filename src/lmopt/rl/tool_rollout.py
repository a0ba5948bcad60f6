"""Multi-turn generation with the text calculator, as a TRL ``GRPOTrainer(rollout_func=...)``.

TRL's built-in tool loop needs a chat template that renders tool calls (SmolLM2's does not). This rollout
works with any causal LM: it samples until the model closes a ``<calc>...</calc>`` call (or stops), appends
the environment's ``<result>...</result>`` tokens, and continues, up to ``max_calls`` calls and
``max_completion_length`` tokens in all. Result tokens are returned with ``env_mask`` 0, so the policy-gradient
loss never trains the model to produce the tool's output (TRL's ``env_mask`` contract).

:func:`tool_generate` is the same loop for evaluation (greedy or sampled, no trainer needed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .calc import CALL_PATTERN, tool_result

_CLOSE = "</calc>"


def _check_stop(stop: Sequence[str]) -> tuple[str, ...]:
    if isinstance(stop, str) or not all(isinstance(s, str) and s for s in stop):
        raise ValueError(f"stop must be a sequence of non-empty strings, got {stop!r}")
    return tuple(stop)


def _prompt_ids(tok: Any, prompt: Any) -> list[int]:
    if isinstance(prompt, str):
        return tok(prompt, add_special_tokens=False).input_ids
    text = tok.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False).input_ids


def _cut(tok: Any, new: list[int], eos: set[int], room: int, stop: tuple[str, ...]) -> tuple[list[int], bool, bool]:
    """The tokens of one row up to the first end-of-sequence token or stop string (kept; the row ends) or the
    first closed call, within ``room``; whether it ended, whether a call was closed. Rows that stopped earlier
    in a batch are padded (often with the end-of-sequence id), so the stop is found by decoding, not by length."""
    new = new[:room]
    last_chars = {s[-1] for s in (_CLOSE, *stop)}
    for k, t in enumerate(new):
        if t in eos:
            return new[: k + 1], True, False
        if not last_chars & set(tok.decode([t])):
            continue
        text = tok.decode(new[: k + 1], skip_special_tokens=True)
        if any(s in text for s in stop):
            return new[: k + 1], True, False
        if _CLOSE in text:
            return new[: k + 1], False, bool(CALL_PATTERN.search(text))
    return new, False, False


def tool_generate(model: Any, tok: Any, prompts: Sequence[Any], *, max_new_tokens: int, max_calls: int = 3,
                  stop: Sequence[str] = (), eos_token_ids: Sequence[int] | None = None,
                  logits_processor: Sequence[Any] = (), **sampling: Any) -> dict[str, Any]:
    """Generate for ``prompts`` (strings or chat messages) with the calculator in the loop.

    ``sampling``: ``generate`` options (``do_sample``, ``temperature``, ``top_p``, ``top_k``); ``stop``: strings
    that end a completion (e.g. ``"\\nQ:"`` for few-shot prompts, whose model would go on to ask the next
    question); ``logits_processor``: extra processors for every segment. Returns ``prompt_ids``,
    ``completion_ids``, ``env_mask`` (0 on tool-result tokens) and ``calls`` per prompt.
    """
    import torch
    import transformers

    if isinstance(max_calls, bool) or not isinstance(max_calls, int) or max_calls < 0:
        raise ValueError(f"max_calls must be an int >= 0, got {max_calls!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    stop = _check_stop(stop)
    device = next(model.parameters()).device
    eos = set(eos_token_ids) if eos_token_ids is not None else {tok.eos_token_id}
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    prompt_ids = [_prompt_ids(tok, p) for p in prompts]
    comp: list[list[int]] = [[] for _ in prompts]
    mask: list[list[int]] = [[] for _ in prompts]
    calls = [0] * len(prompts)
    active = list(range(len(prompts)))
    gen_kw = {**sampling, "pad_token_id": pad, "stop_strings": [_CLOSE, *stop], "tokenizer": tok}
    if logits_processor:
        gen_kw["logits_processor"] = transformers.LogitsProcessorList(list(logits_processor))
    was_training = model.training
    model.eval()
    try:
        while active:
            rows = [prompt_ids[i] + comp[i] for i in active]
            width = max(map(len, rows))
            ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
            att = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
            budget = max(max_new_tokens - len(comp[i]) for i in active)
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=att, max_new_tokens=budget, **gen_kw)
            still = []
            for row, i in enumerate(active):
                new, ended, closed = _cut(tok, out[row, width:].tolist(), eos, max_new_tokens - len(comp[i]), stop)
                comp[i] += new
                mask[i] += [1] * len(new)
                if ended or not closed or calls[i] >= max_calls or len(comp[i]) >= max_new_tokens:
                    continue
                expr = CALL_PATTERN.findall(tok.decode(new, skip_special_tokens=True))[-1]
                res = tok(tool_result(expr), add_special_tokens=False).input_ids[: max_new_tokens - len(comp[i])]
                comp[i] += res
                mask[i] += [0] * len(res)
                calls[i] += 1
                if len(comp[i]) < max_new_tokens:
                    still.append(i)
            active = still
    finally:
        model.train(was_training)
    return {"prompt_ids": prompt_ids, "completion_ids": comp, "env_mask": mask, "calls": calls}


class CalcToolRollout:
    """``rollout_func`` for TRL's GRPOTrainer: ``GRPOTrainer(..., rollout_func=CalcToolRollout(max_calls=3))``.

    Sampling follows the trainer's config (``temperature``, ``top_p``, ``top_k``, ``max_completion_length``);
    ``stop`` as in :func:`tool_generate`. A trainer that sets ``generation_logits_processors`` (a list; HAPO's
    entropy-driven temperature does) has them applied to every segment.
    ``calls`` after each call: the number of tool calls of each completion, in order.
    """

    def __init__(self, max_calls: int = 3, stop: Sequence[str] = ()) -> None:
        if isinstance(max_calls, bool) or not isinstance(max_calls, int) or max_calls < 0:
            raise ValueError(f"max_calls must be an int >= 0, got {max_calls!r}")
        self.max_calls, self.stop = max_calls, _check_stop(stop)
        self.calls: list[int] = []

    def __call__(self, prompts: Sequence[Any], trainer: Any) -> dict[str, Any]:
        args = trainer.args
        out = tool_generate(
            trainer.accelerator.unwrap_model(trainer.model), trainer.processing_class, prompts,
            max_new_tokens=int(args.max_completion_length), max_calls=self.max_calls, stop=self.stop,
            eos_token_ids=getattr(trainer, "eos_token_ids", None),
            logits_processor=getattr(trainer, "generation_logits_processors", None) or (),
            do_sample=True, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k if args.top_k else None)
        self.calls = out.pop("calls")
        return {**out, "logprobs": None}


__all__ = ["CalcToolRollout", "tool_generate"]
