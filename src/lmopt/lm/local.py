"""``LocalLM``: a transformers causal LM on this machine (any Hugging Face id or local folder).

With no model given it loads the embedded SmolLM2-135M-Instruct (see :mod:`lmopt.assets`). Generation
uses its own KV-cached decoding loop so that every sampled row draws from its own ``torch.Generator``
seeded by (seed, prompt, sample index): sample i of a prompt is the same whatever else is in the batch,
and the global RNG is never touched.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._deps import require
from .backend import Backend
from .types import Completion, GenerationConfig, Score

EMBEDDED = "embedded:smollm2-135m-instruct"


def _row_seed(seed: int, text: str, sample: int) -> int:
    h = hashlib.sha256(f"{seed}\x00{sample}\x00{text}".encode()).digest()
    return int.from_bytes(h[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


class LocalLM(Backend):
    """A local causal language model.

    Args:
        model: a Hugging Face model id, a local model folder, or None for the embedded SmolLM2-135M-Instruct.
        device: torch device ("cpu", "cuda", ...).
        dtype: torch dtype of the weights (default float32).
        batch_size: rows per forward pass in ``generate``/``score``/``hidden_states``.
        model_obj / tokenizer: pass an already loaded model and tokenizer instead of loading ``model``.
    """

    def __init__(self, model: str | Path | None = None, *, device: str = "cpu", dtype: Any = None,
                 batch_size: int = 8, model_obj: Any = None, tokenizer: Any = None,
                 trust_remote_code: bool = False) -> None:
        import torch
        transformers = require("transformers", "hf")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.dtype = dtype or torch.float32
        if model_obj is not None:
            if tokenizer is None:
                raise ValueError("model_obj needs its tokenizer= too")
            self.model, self.tokenizer = model_obj, tokenizer
            ident = str(model or getattr(model_obj.config, "_name_or_path", "") or "custom")
        else:
            if model is None:
                from ..assets import smollm2_dir

                path, ident = str(smollm2_dir()), EMBEDDED
            else:
                path = ident = str(model)
            try:
                self.tokenizer = tokenizer or transformers.AutoTokenizer.from_pretrained(
                    path, trust_remote_code=trust_remote_code)
                self.model = transformers.AutoModelForCausalLM.from_pretrained(
                    path, dtype=self.dtype, trust_remote_code=trust_remote_code)
            except (OSError, ValueError) as exc:
                raise OSError(
                    f"could not load model {ident!r}: it is neither a local model folder nor reachable on the "
                    "Hugging Face hub (offline?). Pass an existing folder, download the model first, or use "
                    f"LocalLM() for the embedded SmolLM2. Cause: {str(exc).splitlines()[0][:200]}"
                ) from exc
            self.model.to(self.device)
        self.model.eval()
        self.name = f"local:{ident}:{str(self.dtype).replace('torch.', '')}"
        tok = self.tokenizer
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) | {tok.eos_token_id}
        self._eos = sorted(i for i in eos_ids if i is not None)
        # transformers >= 5.2x renamed past_key_values to cache (input and output); support both.
        import inspect

        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    # -- tokens -----------------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def _left_pad(self, rows: list[list[int]]) -> tuple[Any, Any]:
        import torch
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                ids[i, width - len(r):] = torch.tensor(r)
                mask[i, width - len(r):] = 1
        return ids.to(self.device), mask.to(self.device)

    # -- generation -------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], config: GenerationConfig) -> list[list[Completion]]:
        rows = [(p, self._encode(p), j) for p in prompts for j in range(config.n)]
        for _p, ids, _ in rows:
            if not ids:
                raise ValueError("cannot generate from an empty prompt; give at least one token of text")
        out: list[Completion] = []
        for start in range(0, len(rows), self.batch_size):
            out.extend(self._decode_batch(rows[start: start + self.batch_size], config))
        return [out[i * config.n: (i + 1) * config.n] for i in range(len(prompts))]

    def chat(self, conversations: Sequence[tuple[tuple[str, str], ...]],
             config: GenerationConfig) -> list[list[Completion]]:
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ValueError(f"model {self.name!r} has no chat template; use generate() with a raw prompt")
        texts = [self.tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in conv],
                                                    tokenize=False, add_generation_prompt=True)
                 for conv in conversations]
        return self.generate(texts, config)

    def _decode_batch(self, rows: list[tuple[str, list[int], int]], config: GenerationConfig) -> list[Completion]:
        import torch
        ids, mask = self._left_pad([r[1] for r in rows])
        b = len(rows)
        gens = None
        if not config.greedy:
            gens = []
            for p, _, j in rows:
                g = torch.Generator(device=self.device)
                g.manual_seed(_row_seed(config.seed, p, j))
                gens.append(g)
        eos = torch.tensor(self._eos, device=self.device)
        done = torch.zeros(b, dtype=torch.bool, device=self.device)
        new_tokens: list[list[int]] = [[] for _ in range(b)]
        finish = ["length"] * b
        past = None
        cur_ids, cur_mask = ids, mask
        with torch.inference_mode():
            for _ in range(config.max_new_tokens):
                pos = (cur_mask.cumsum(-1) - 1).clamp(min=0)
                if past is not None:
                    pos = pos[:, -1:]
                out = self.model(input_ids=cur_ids, attention_mask=cur_mask, position_ids=pos,
                                 use_cache=True, **{self._cache_kw: past})
                past = getattr(out, self._cache_kw)
                logits = out.logits[:, -1, :].float()
                nxt = self._pick(logits, config, gens)
                for i in range(b):
                    if done[i]:
                        continue
                    t = int(nxt[i])
                    if t in self._eos:
                        done[i] = True
                        finish[i] = "stop"
                        continue
                    new_tokens[i].append(t)
                    if config.stop:
                        text = self.tokenizer.decode(new_tokens[i], skip_special_tokens=True)
                        if any(s in text for s in config.stop):
                            done[i] = True
                            finish[i] = "stop"
                if bool(done.all()):
                    break
                nxt = torch.where(done, eos[0], nxt)
                cur_ids = nxt[:, None]
                cur_mask = torch.cat([cur_mask, torch.ones((b, 1), dtype=cur_mask.dtype, device=self.device)], 1)
        comps = []
        for i, (_, prompt_ids, _) in enumerate(rows):
            text = self.tokenizer.decode(new_tokens[i], skip_special_tokens=True)
            for s in config.stop:
                text = text.split(s, 1)[0]
            comps.append(Completion(text, len(prompt_ids), len(new_tokens[i]), finish[i]))
        return comps

    @staticmethod
    def _pick(logits: Any, config: GenerationConfig, gens: list[Any] | None) -> Any:
        import torch
        if config.greedy:
            return logits.argmax(-1)
        probs = torch.softmax(logits / config.temperature, dim=-1)
        if config.top_p < 1.0:
            sp, si = probs.sort(dim=-1, descending=True)
            keep = sp.cumsum(-1) - sp < config.top_p  # smallest set whose mass reaches top_p
            sp = sp * keep
            probs = torch.zeros_like(probs).scatter(-1, si, sp)
            probs = probs / probs.sum(-1, keepdim=True)
        return torch.stack([torch.multinomial(probs[i], 1, generator=gens[i])[0] for i in range(len(gens))])

    # -- scoring ----------------------------------------------------------------------------------
    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[Score]:
        """Sum of log p(continuation tokens | prompt).

        Prompt and continuation are tokenized separately (so the boundary is exact) and concatenated.
        Continuations of the same prompt (class labels, typically) share one forward pass of the prompt:
        single-token ones are read from its last position; when a prompt has several multi-token
        continuations (" 10", " father-in-law"), its KV cache is reused for all of them in one batch.
        """
        import torch
        pairs = []
        for p, c in zip(prompts, continuations):
            pi, ci = self._encode(p), self._encode(c)
            if not pi or not ci:
                raise ValueError("score needs a non-empty prompt and a non-empty continuation")
            pairs.append((pi, ci))
        results: list[Score | None] = [None] * len(pairs)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (pi, _) in enumerate(pairs):
            groups.setdefault(tuple(pi), []).append(i)
        by_prompt: dict[tuple[int, ...], list[int]] = {}
        general = []
        with torch.inference_mode():
            for prompt_ids, members in groups.items():
                multi = [i for i in members if len(pairs[i][1]) > 1]
                if len(multi) >= 2:
                    lps = self._score_shared_prompt(list(prompt_ids), [pairs[i][1] for i in members])
                    for i, lp in zip(members, lps):
                        results[i] = Score(lp, len(pairs[i][1]), len(prompt_ids))
                    continue
                general += multi
                single = [i for i in members if len(pairs[i][1]) == 1]
                if single:
                    by_prompt[prompt_ids] = single
            shared = list(by_prompt)
            for rows, logp in self._last_logprobs([list(p) for p in shared]):
                for r, lp in zip(rows, logp):
                    for i in by_prompt[shared[r]]:
                        results[i] = Score(float(lp[pairs[i][1][0]]), 1, len(pairs[i][0]))
            # Sort by length so batches pad little; results are put back in order.
            general.sort(key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
            for start in range(0, len(general), self.batch_size):
                idx = general[start: start + self.batch_size]
                ids, mask = self._left_pad([pairs[i][0] + pairs[i][1] for i in idx])
                logits = self._forward(ids, mask).logits
                logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
                tok_lp = logp.gather(-1, ids[:, 1:, None])[..., 0]
                width = ids.shape[1]
                for row, i in enumerate(idx):
                    n_c = len(pairs[i][1])
                    results[i] = Score(tok_lp[row, width - 1 - n_c:].sum().item(), n_c, len(pairs[i][0]))
        return results  # type: ignore[return-value]

    def _score_shared_prompt(self, prompt: list[int], conts: list[list[int]]) -> list[float]:
        """log p(c | prompt) for each continuation from one prompt forward and one batched continuation
        forward over the prompt's KV cache (repeated per continuation; right padding is never attended)."""
        import torch
        ids = torch.tensor([prompt], device=self.device)
        out = self.model(input_ids=ids, use_cache=True)
        first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        totals = [float(first[c[0]]) for c in conts]
        width = max(len(c) for c in conts) - 1  # tokens fed after the prompt: each continuation minus its last
        k, n = len(conts), len(prompt)
        cache = out.past_key_values
        cache.batch_repeat_interleave(k)
        feed = torch.full((k, width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((k, n + width), dtype=torch.long)
        mask[:, :n] = 1
        for j, c in enumerate(conts):
            feed[j, : len(c) - 1] = torch.tensor(c[:-1])
            mask[j, n: n + len(c) - 1] = 1
        pos = torch.arange(n, n + width).expand(k, width)
        logits = self.model(input_ids=feed.to(self.device), attention_mask=mask.to(self.device),
                            position_ids=pos.to(self.device), past_key_values=cache).logits
        logp = torch.log_softmax(logits.float(), dim=-1)
        for j, c in enumerate(conts):
            totals[j] += sum(float(logp[j, t, c[t + 1]]) for t in range(len(c) - 1))
        return totals

    def _forward(self, ids: Any, mask: Any, **kwargs: Any) -> Any:
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        return self.model(input_ids=ids, attention_mask=mask, position_ids=pos, **kwargs)

    def _last_logprobs(self, seqs: list[list[int]]) -> Any:
        """Yield (row indices, log-softmax at the last position) for batches of token sequences."""
        import torch
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start: start + self.batch_size]
            ids, mask = self._left_pad([seqs[i] for i in idx])
            logits = self._forward(ids, mask).logits[:, -1, :].float()
            yield idx, torch.log_softmax(logits, dim=-1).cpu()

    # -- white-box access -------------------------------------------------------------------------
    def hidden_states(self, texts: Sequence[str], layer: int = -1, pool: str = "last") -> Any:
        """Hidden state of ``layer`` for each text, pooled over tokens: ``last`` token or ``mean``.

        Returns a float32 CPU tensor of shape (len(texts), hidden_size).
        """
        import torch
        if pool not in ("last", "mean"):
            raise ValueError(f"pool must be 'last' or 'mean', got {pool!r}")
        enc = [self._encode(t) for t in texts]
        if any(not e for e in enc):
            raise ValueError("hidden_states needs non-empty texts")
        out = []
        with torch.inference_mode():
            for start in range(0, len(enc), self.batch_size):
                ids, mask = self._left_pad(enc[start: start + self.batch_size])
                hs = self._forward(ids, mask, output_hidden_states=True).hidden_states
                if not -len(hs) <= layer < len(hs):
                    raise ValueError(f"layer {layer} out of range for a model with {len(hs)} hidden-state layers")
                h = hs[layer].float()
                if pool == "last":
                    out.append(h[:, -1, :])
                else:
                    m = mask[..., None].float()
                    out.append((h * m).sum(1) / m.sum(1))
        return torch.cat(out).cpu()
