"""Multi-turn generation with the text calculator, as a TRL ``GRPOTrainer(rollout_func=...)``.

TRL's built-in tool loop needs a chat template that renders tool calls (SmolLM2's does not). This rollout
works with any causal LM: it samples until the model closes a ``<calc>...</calc>`` call (or stops), appends
the environment's ``<result>...</result>`` tokens, and continues, up to ``max_calls`` calls and
``max_completion_length`` tokens in all. Result tokens are returned with ``env_mask`` 0, so the policy-gradient
loss never trains the model to produce the tool's output (TRL's ``env_mask`` contract).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .calc import CALL_PATTERN, tool_result

_CLOSE = "</calc>"


class CalcToolRollout:
    """``rollout_func`` for TRL's GRPOTrainer: ``GRPOTrainer(..., rollout_func=CalcToolRollout(max_calls=3))``.

    Sampling follows the trainer's config (``temperature``, ``top_p``, ``top_k``, ``max_completion_length``).
    ``calls`` after each call: the number of tool calls of each completion, in order.
    """

    def __init__(self, max_calls: int = 3) -> None:
        if isinstance(max_calls, bool) or not isinstance(max_calls, int) or max_calls < 0:
            raise ValueError(f"max_calls must be an int >= 0, got {max_calls!r}")
        self.max_calls = max_calls
        self.calls: list[int] = []

    @staticmethod
    def _prompt_ids(tok: Any, prompt: Any) -> list[int]:
        if isinstance(prompt, str):
            return tok(prompt, add_special_tokens=False).input_ids
        text = tok.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
        return tok(text, add_special_tokens=False).input_ids

    @staticmethod
    def _cut(tok: Any, new: list[int], eos: set[int], room: int) -> tuple[list[int], bool, bool]:
        """The tokens of one row up to the first end-of-sequence token (kept) or the first closed call,
        within ``room``; whether it ended, whether a call was closed. Rows that stopped earlier in a batch
        are padded (often with the end-of-sequence id), so the stop is found by decoding, not by length."""
        new = new[:room]
        for k, t in enumerate(new):
            if t in eos:
                return new[: k + 1], True, False
            if ">" in tok.decode([t]) and _CLOSE in tok.decode(new[: k + 1], skip_special_tokens=True):
                complete = bool(CALL_PATTERN.search(tok.decode(new[: k + 1], skip_special_tokens=True)))
                return new[: k + 1], False, complete
        return new, False, False

    def __call__(self, prompts: Sequence[Any], trainer: Any) -> dict[str, Any]:
        import torch

        tok, args = trainer.processing_class, trainer.args
        model = trainer.accelerator.unwrap_model(trainer.model)
        device = next(model.parameters()).device
        eos = set(trainer.eos_token_ids) if hasattr(trainer, "eos_token_ids") else {tok.eos_token_id}
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        limit = int(args.max_completion_length)
        prompt_ids = [self._prompt_ids(tok, p) for p in prompts]
        comp: list[list[int]] = [[] for _ in prompts]
        mask: list[list[int]] = [[] for _ in prompts]
        calls = [0] * len(prompts)
        active = list(range(len(prompts)))
        gen_kw = {"do_sample": True, "temperature": args.temperature, "top_p": args.top_p,
                  "top_k": args.top_k if args.top_k else None, "pad_token_id": pad,
                  "stop_strings": [_CLOSE], "tokenizer": tok}
        was_training = model.training
        model.eval()
        try:
            while active:
                rows = [prompt_ids[i] + comp[i] for i in active]
                width = max(map(len, rows))
                ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
                att = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
                budget = max(limit - len(comp[i]) for i in active)
                with torch.no_grad():
                    out = model.generate(input_ids=ids, attention_mask=att, max_new_tokens=budget, **gen_kw)
                still = []
                for row, i in enumerate(active):
                    new, ended, closed = self._cut(tok, out[row, width:].tolist(), eos, limit - len(comp[i]))
                    comp[i] += new
                    mask[i] += [1] * len(new)
                    if ended or not closed or calls[i] >= self.max_calls or len(comp[i]) >= limit:
                        continue
                    expr = CALL_PATTERN.findall(tok.decode(new, skip_special_tokens=True))[-1]
                    res = tok(tool_result(expr), add_special_tokens=False).input_ids[: limit - len(comp[i])]
                    comp[i] += res
                    mask[i] += [0] * len(res)
                    calls[i] += 1
                    if len(comp[i]) < limit:
                        still.append(i)
                active = still
        finally:
            model.train(was_training)
        self.calls = calls
        return {"prompt_ids": prompt_ids, "completion_ids": comp, "logprobs": None, "env_mask": mask}


__all__ = ["CalcToolRollout"]
