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
from .._hub import hub_access, quiet_loading
from .backend import Backend
from .types import Completion, GenerationConfig, Score

EMBEDDED = "embedded:smollm2-135m-instruct"


def bos_to_prepend(tokenizer: Any) -> int | None:
    """The BOS id when ``tokenizer`` puts one in front of a text by default (Gemma, Llama), else None.

    Prompts are encoded without special tokens (so that continuations join them exactly); a model trained
    with a leading BOS then needs it added back, or its outputs degrade (a Gemma model answered every
    prompt the same way without it).
    """
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    try:
        ids = tokenizer("a", add_special_tokens=True).input_ids
    except Exception:  # noqa: BLE001 - a tokenizer without special-token handling adds nothing
        return None
    return bos if ids[:1] == [bos] else None


def with_bos(ids: list[int], bos: int | None) -> list[int]:
    """``ids`` with ``bos`` in front unless it is None or already there (a chat template may write it)."""
    if bos is None or (ids and ids[0] == bos):
        return ids
    return [bos, *ids]


def _row_seed(seed: int, text: str, sample: int) -> int:
    h = hashlib.sha256(f"{seed}\x00{sample}\x00{text}".encode()).digest()
    return int.from_bytes(h[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


class LocalLM(Backend):
    """A local causal language model.

    Args:
        model: a Hugging Face model id, a local model folder, None for the embedded SmolLM2-135M-Instruct,
            or ``"embedded:gemma3-270m"`` for the optional Gemma 3 270M base model (:func:`lmopt.assets.gemma3_dir`).
        device: torch device ("cpu", "cuda", ...).
        dtype: torch dtype of the weights (default float32).
        batch_size: rows per forward pass in ``generate``/``score``/``hidden_states``.
        model_obj / tokenizer: pass an already loaded model and tokenizer instead of loading ``model``.
        prefix_reuse: compute the token prefix shared by all prompts of a ``generate``/``score`` call once
            and feed only each prompt's remainder over a copy of its KV cache (the idea behind vLLM's
            automatic prefix caching and SGLang's RadixAttention). Few-shot evaluation renders the same
            instruction and exemplars before every example, so this removes most of the work; results
            equal the full computation up to float rounding. ``False`` computes every prompt in full.
    """

    def __init__(self, model: str | Path | None = None, *, device: str = "cpu", dtype: Any = None,
                 batch_size: int = 8, model_obj: Any = None, tokenizer: Any = None,
                 trust_remote_code: bool = False, prefix_reuse: bool = True) -> None:
        import torch
        transformers = require("transformers", "hf")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.batch_size = batch_size
        self.prefix_reuse = bool(prefix_reuse)
        self.device = torch.device(device)
        self.dtype = dtype or torch.float32
        if model_obj is not None:
            if tokenizer is None:
                raise ValueError("model_obj needs its tokenizer= too")
            self.model, self.tokenizer = model_obj, tokenizer
            ident = str(model or getattr(model_obj.config, "_name_or_path", "") or "custom")
        else:
            if model is None or str(model).startswith("embedded:"):
                from ..assets import EMBEDDED_MODELS

                ident = EMBEDDED if model is None else str(model)
                if ident not in EMBEDDED_MODELS:
                    raise ValueError(f"unknown embedded model {ident!r}; known: {sorted(EMBEDDED_MODELS)}")
                path = str(EMBEDDED_MODELS[ident]())
            else:
                path = ident = str(model)
            with hub_access(path) as offline, quiet_loading():
                try:
                    self.tokenizer = tokenizer or transformers.AutoTokenizer.from_pretrained(
                        path, trust_remote_code=trust_remote_code)
                    self.model = transformers.AutoModelForCausalLM.from_pretrained(
                        path, dtype=self.dtype, trust_remote_code=trust_remote_code)
                except (OSError, ValueError) as exc:
                    where = (f"the hub was not tried ({offline}) and it is not in the local Hugging Face cache"
                             if offline else "it is neither a local model folder nor a model on the hub")
                    raise OSError(
                        f"could not load model {ident!r}: {where}. Pass an existing folder, download the model "
                        f"first, or use LocalLM() for the embedded SmolLM2. Cause: {str(exc).splitlines()[0][:200]}"
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
        self._bos = bos_to_prepend(tok)
        # transformers >= 5.2x renamed past_key_values to cache (input and output); support both.
        import inspect

        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        # Only the last positions' logits are ever read: skip the vocabulary projection elsewhere.
        self._keep_kw = "logits_to_keep" if "logits_to_keep" in params else None

    def _keep(self, n: int) -> dict[str, int]:
        return {self._keep_kw: n} if self._keep_kw else {}

    # -- tokens -----------------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def _encode_prompt(self, text: str) -> list[int]:
        """A prompt's tokens, with the model's BOS in front when its tokenizer adds one by default."""
        return with_bos(self._encode(text), self._bos)

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

    # -- shared prefix ----------------------------------------------------------------------------
    def _prefix_len(self, rows: Sequence[Sequence[int]], cap: int) -> int:
        """Length of the token prefix common to all ``rows`` (at most ``cap``); 0 when reuse is off."""
        if not self.prefix_reuse or len(rows) < 1 or cap < 1:
            return 0
        first = rows[0]
        n = min(cap, min(len(r) for r in rows))
        for r in rows[1:]:
            i = 0
            while i < n and r[i] == first[i]:
                i += 1
            n = i
            if n == 0:
                break
        return n

    def _prefix_cache(self, prefix: list[int]) -> Any:
        """KV cache of ``prefix`` (batch 1), or None for an empty prefix."""
        import torch
        if not prefix:
            return None
        out = self.model(input_ids=torch.tensor([prefix], device=self.device), use_cache=True, **self._keep(1))
        return getattr(out, self._cache_kw)

    @staticmethod
    def _expanded(cache: Any, b: int) -> Any:
        """A copy of a batch-1 cache repeated to batch ``b`` (the forward pass extends it in place)."""
        import copy
        if cache is None:
            return None
        c = copy.deepcopy(cache)
        if b > 1:
            c.batch_repeat_interleave(b)
        return c

    def _forward_after(self, rows: list[list[int]], n_prefix: int, cache: Any, use_cache: bool = False,
                       keep: int = 1) -> Any:
        """Forward of left-padded ``rows`` placed after a cached prefix of ``n_prefix`` tokens; logits of the
        last ``keep`` positions only. Returns the model output and the full attention mask.

        The attention mask covers prefix + padding + row, so padding sits between the prefix and each row
        and is never attended; positions count only real tokens, hence equal those of the full sequence.
        """
        import torch
        ids, mask = self._left_pad(rows)
        if n_prefix:
            mask = torch.cat([torch.ones((len(rows), n_prefix), dtype=mask.dtype, device=mask.device), mask], 1)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, n_prefix:]
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=use_cache or cache is not None,
                         **{self._cache_kw: self._expanded(cache, len(rows))}, **self._keep(keep))
        return out, mask

    # -- generation -------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], config: GenerationConfig) -> list[list[Completion]]:
        rows = [(p, self._encode_prompt(p), j) for p in prompts for j in range(config.n)]
        for _p, ids, _ in rows:
            if not ids:
                raise ValueError("cannot generate from an empty prompt; give at least one token of text")
        if not rows:
            return [[] for _ in prompts]
        import torch
        # Each row keeps at least its last prompt token outside the prefix: its logits start the decoding.
        n_prefix = self._prefix_len([r[1] for r in rows], cap=min(len(r[1]) for r in rows) - 1)
        with torch.inference_mode():
            cache = self._prefix_cache(rows[0][1][:n_prefix])
        out: list[Completion] = []
        for start in range(0, len(rows), self.batch_size):
            out.extend(self._decode_batch(rows[start: start + self.batch_size], config, n_prefix, cache))
        return [out[i * config.n: (i + 1) * config.n] for i in range(len(prompts))]

    def chat(self, conversations: Sequence[tuple[tuple[str, str], ...]],
             config: GenerationConfig) -> list[list[Completion]]:
        return self.generate([self.render_chat(conv) for conv in conversations], config)

    def render_chat(self, conversation: tuple[tuple[str, str], ...]) -> str:
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ValueError(f"model {self.name!r} has no chat template; use generate() with a raw prompt")
        return self.tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in conversation],
                                                  tokenize=False, add_generation_prompt=True)

    def _decode_batch(self, rows: list[tuple[str, list[int], int]], config: GenerationConfig,
                      n_prefix: int = 0, prefix_cache: Any = None) -> list[Completion]:
        import torch
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
        with torch.inference_mode():
            out, cur_mask = self._forward_after([r[1][n_prefix:] for r in rows], n_prefix, prefix_cache,
                                                use_cache=True)
            past = getattr(out, self._cache_kw)
            cur_ids = None  # after the first step: the token just chosen per row
            for step in range(config.max_new_tokens):
                if step:
                    pos = cur_mask.sum(-1, keepdim=True) - 1
                    out = self.model(input_ids=cur_ids, attention_mask=cur_mask, position_ids=pos,
                                     use_cache=True, **{self._cache_kw: past}, **self._keep(1))
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
        One row is fed per distinct prompt for all its single-token continuations (class labels,
        typically: read from its last position) and one row per multi-token continuation (prompt +
        continuation minus its last token). With ``prefix_reuse`` the prefix common to all rows of the
        call (instruction and exemplars; or the prompt itself when one prompt has many continuations) is
        computed once and every row feeds only what follows it.
        """
        import torch
        pairs = []
        for p, c in zip(prompts, continuations):
            pi, ci = self._encode_prompt(p), self._encode(c)
            if not pi or not ci:
                raise ValueError("score needs a non-empty prompt and a non-empty continuation")
            pairs.append((pi, ci))
        if not pairs:
            return []
        # rows: (tokens fed, prompt length, [(pair index, continuation)]) — single-token ones grouped.
        rows: list[tuple[list[int], int, list[int]]] = []
        single: dict[tuple[int, ...], int] = {}
        for i, (pi, ci) in enumerate(pairs):
            if len(ci) == 1:
                key = tuple(pi)
                if key not in single:
                    single[key] = len(rows)
                    rows.append((pi, len(pi), []))
                rows[single[key]][2].append(i)
            else:
                rows.append((pi + ci[:-1], len(pi), [i]))
        # The prefix stops before each row's last prompt token, whose logits score the first continuation token.
        n_prefix = self._prefix_len([r[0] for r in rows], cap=min(r[1] for r in rows) - 1)
        results: list[Score | None] = [None] * len(pairs)
        order = sorted(range(len(rows)), key=lambda r: len(rows[r][0]))  # similar lengths pad little
        with torch.inference_mode():
            cache = self._prefix_cache(rows[0][0][:n_prefix])
            for start in range(0, len(order), self.batch_size):
                batch = [rows[r] for r in order[start: start + self.batch_size]]
                k = max(len(pairs[m[0]][1]) if len(m) == 1 else 1 for _, _, m in batch)
                logits = self._forward_after([r[0][n_prefix:] for r in batch], n_prefix, cache, keep=k)[0].logits
                logp = torch.log_softmax(logits[:, -k:].float(), dim=-1)  # position -1 predicts the next token
                for row, (_, n_p, members) in enumerate(batch):
                    for i in members:
                        c = pairs[i][1]
                        # the last len(c) positions of the row predict c[0], ..., c[-1]
                        lp = logp[row, k - len(c) + torch.arange(len(c)), torch.tensor(c)].sum().item()
                        results[i] = Score(lp, len(c), n_p)
        return results  # type: ignore[return-value]

    def _forward(self, ids: Any, mask: Any, **kwargs: Any) -> Any:
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        return self.model(input_ids=ids, attention_mask=mask, position_ids=pos, **kwargs)

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
        enc = [with_bos(e, self._bos) for e in enc]
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
