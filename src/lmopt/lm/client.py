"""``LM``: one object that every optimiser talks to.

It wraps any :class:`~lmopt.lm.backend.Backend` and adds, identically for all of them: a content-addressed
call cache (hits cost nothing), usage accounting per role, hard budgets checked *before* a call (with a
worst-case token estimate: prompt tokens + n × max_new_tokens), and optional recording of every call for
offline replay.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from .backend import Backend
from .keys import request_key
from .types import Completion, GenerationConfig, Message, Score, validate_messages
from .usage import Budget, UsageMeter


class CallStore(Protocol):
    """What the LM needs from a cache: get/put of JSON-able dicts by key."""

    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(self, key: str, value: dict[str, Any]) -> None: ...


class CallRecorder(Protocol):
    def record(self, key: str, request: dict[str, Any], response: dict[str, Any]) -> None: ...


def _as_list(x: str | Sequence[Any], what: str) -> list[Any]:
    if isinstance(x, str):
        return [x]
    items = list(x)
    for i, s in enumerate(items):
        if what != "conversation" and not isinstance(s, str):
            raise TypeError(f"{what} {i} must be a str, got {type(s).__name__}")
    return items


class LM:
    """A language model with caching, usage accounting, budgets and recording.

    Args:
        backend: the model (``LocalLM``, ``OpenAICompatibleLM``, ``ReplayBackend``, ``ScriptedBackend``...).
        cache: a call store such as :class:`lmopt.lm.cache.CallCache`; ``None`` disables caching.
        budget: limits per role; a call that could exceed them raises ``BudgetExceeded`` unspent.
        meter: share one :class:`UsageMeter` between several LMs (e.g. task and optimizer models) so
            that a total budget covers both; default: a new meter with ``budget``.
        recorder: receives every answered call (cache hits included) for later replay.
        chunk_size: uncached requests go to the backend in chunks of this many (for ``score``: this many
            distinct prompts, with all their continuations); the budget is checked per chunk (worst case),
            and every answered request is charged, cached and recorded as soon as the backend hands it
            over, so a failure in the middle of a chunk loses nothing already paid for.
    """

    def __init__(self, backend: Backend, *, cache: CallStore | None = None, budget: Budget | None = None,
                 meter: UsageMeter | None = None, recorder: CallRecorder | None = None,
                 chunk_size: int = 96) -> None:
        if not isinstance(backend, Backend):
            raise TypeError(f"backend must be an lmopt.lm Backend, got {type(backend).__name__}")
        if meter is not None and budget is not None:
            raise ValueError("pass either budget= or a shared meter= (which carries its own budget), not both")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        self.chunk_size = chunk_size
        self.backend = backend
        self.cache = cache
        self.meter = meter or UsageMeter(budget)
        self.recorder = recorder

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def supports_score(self) -> bool:
        return self.backend.supports_score

    def count_tokens(self, text: str) -> int:
        return self.backend.count_tokens(text)

    def usage(self) -> dict[str, dict[str, int]]:
        return self.meter.report()

    # -- generation -------------------------------------------------------------------------------
    def generate(self, prompts: str | Sequence[str], config: GenerationConfig | None = None, *,
                 role: str = "task") -> list[list[Completion]]:
        """Continue raw prompts. Returns ``config.n`` completions per prompt."""
        items = _as_list(prompts, "prompt")
        payloads = [{"prompt": p} for p in items]
        return self._sampled("generate", items, payloads, config or GenerationConfig(), role)

    def chat(self, conversations: Sequence[Message] | Sequence[Sequence[Message]],
             config: GenerationConfig | None = None, *, role: str = "task") -> list[list[Completion]]:
        """Answer chat conversations (one conversation, or a list of them)."""
        convs = list(conversations)
        if convs and isinstance(convs[0], Mapping):  # a single conversation
            convs = [convs]
        items = [validate_messages(c) for c in convs]
        payloads = [{"messages": [list(m) for m in c]} for c in items]
        return self._sampled("chat", items, payloads, config or GenerationConfig(), role)

    def _sampled(self, kind: str, items: list[Any], payloads: list[dict[str, Any]],
                 config: GenerationConfig, role: str) -> list[list[Completion]]:
        _check_role(role)
        fields = {**config.key_fields(), **self.backend.key_options(config)}
        keys = [[request_key(kind, self.name, {**p, "config": fields}, j) for j in range(config.n)]
                for p in payloads]
        results: dict[str, list[Completion]] = {}  # first sample key -> completions
        misses: list[int] = []  # positions of distinct uncached requests
        n_hits = 0
        pending: set[str] = set()
        for i, ks in enumerate(keys):
            if ks[0] in results or ks[0] in pending:  # a duplicate within this batch
                continue
            cached = self._lookup(ks)
            if cached is None:
                pending.add(ks[0])
                misses.append(i)
                continue
            results[ks[0]] = [Completion(**c, cached=True) for c in cached]
            n_hits += 1
            for j, (k, c) in enumerate(zip(ks, cached)):
                self._record(k, {"kind": kind, **payloads[i], "config": fields, "sample": j}, c)
        call = self.backend.generate_each if kind == "generate" else self.backend.chat_each
        for chunk in _chunks(misses, self.chunk_size):
            est_prompt = sum(self._estimate_tokens(items[i]) for i in chunk)
            self.meter.check(role, len(chunk), est_prompt, len(chunk) * config.n * config.max_new_tokens)

            def done(pos: int, comps: list[Completion], chunk: list[int] = chunk) -> None:
                # charged, cached and recorded as each request finishes: a later failure in the same chunk
                # (a server that dies) loses nothing already paid for
                if not 0 <= pos < len(chunk) or len(comps) != config.n or keys[chunk[pos]][0] in results:
                    raise RuntimeError(f"backend {self.name!r} returned a wrong or repeated result ({pos}, "
                                       f"{len(comps)} completions) for a chunk of {len(chunk)} x n={config.n}")
                i = chunk[pos]
                self.meter.charge(role, 1, comps[0].prompt_tokens if comps else 0,
                                  sum(c.completion_tokens for c in comps))
                results[keys[i][0]] = comps
                for j, (k, c) in enumerate(zip(keys[i], comps)):
                    val = {"text": c.text, "prompt_tokens": c.prompt_tokens,
                           "completion_tokens": c.completion_tokens, "finish_reason": c.finish_reason}
                    if self.cache is not None:
                        self.cache.put(k, val)
                    self._record(k, {"kind": kind, **payloads[i], "config": fields, "sample": j}, val)

            call([items[i] for i in chunk], config, done)
            if any(keys[i][0] not in results for i in chunk):
                raise RuntimeError(f"backend {self.name!r} returned a wrong number of completions")
        self.meter.charge(role, 0, 0, 0, cached_calls=n_hits)
        return [list(results[ks[0]]) for ks in keys]

    # -- scoring ----------------------------------------------------------------------------------
    def score(self, prompts: str | Sequence[str], continuations: str | Sequence[str], *,
              role: str = "task") -> list[Score]:
        """Log-probability of each continuation after its prompt (one prompt may pair with many)."""
        _check_role(role)
        ps = _as_list(prompts, "prompt")
        cs = _as_list(continuations, "continuation")
        if len(ps) == 1 and len(cs) > 1:
            ps = ps * len(cs)
        if len(ps) != len(cs):
            raise ValueError(f"score needs as many prompts as continuations (or one prompt), "
                             f"got {len(ps)} and {len(cs)}")
        keys = [request_key("score", self.name, {"prompt": p, "continuation": c}) for p, c in zip(ps, cs)]
        out: list[Score | None] = [None] * len(ps)
        todo: dict[str, int] = {}
        for i, k in enumerate(keys):
            hit = self.cache.get(k) if self.cache is not None else None
            if hit is not None:
                out[i] = Score(**hit, cached=True)
                self._record(k, {"kind": "score", "prompt": ps[i], "continuation": cs[i]}, hit)
            elif k not in todo:
                todo[k] = i
        n_hits = sum(o is not None for o in out)
        fresh: dict[str, Score] = {}
        for idx in _prompt_chunks(list(todo.values()), ps, self.chunk_size):
            est = sum(self.backend.count_tokens(ps[i]) + self.backend.count_tokens(cs[i]) for i in idx)
            self.meter.check(role, len(idx), est, 0)

            def done(pos: int, s: Score, idx: list[int] = idx) -> None:  # as in _sampled: kept as it arrives
                if not 0 <= pos < len(idx) or keys[idx[pos]] in fresh:
                    raise RuntimeError(f"backend {self.name!r} returned a wrong or repeated score ({pos}) for "
                                       f"{len(idx)} requests")
                i = idx[pos]
                self.meter.charge(role, 1, s.prompt_tokens + s.continuation_tokens, 0)
                val = {"logprob": s.logprob, "continuation_tokens": s.continuation_tokens,
                       "prompt_tokens": s.prompt_tokens}
                if self.cache is not None:
                    self.cache.put(keys[i], val)
                self._record(keys[i], {"kind": "score", "prompt": ps[i], "continuation": cs[i]}, val)
                fresh[keys[i]] = s

            self.backend.score_each([ps[i] for i in idx], [cs[i] for i in idx], done)
            if any(keys[i] not in fresh for i in idx):
                raise RuntimeError(f"backend {self.name!r} returned too few scores for {len(idx)} requests")
        self.meter.charge(role, 0, 0, 0, cached_calls=n_hits)
        return [o if o is not None else fresh[k] for o, k in zip(out, keys)]

    @property
    def supports_choose(self) -> bool:
        return self.backend.supports_choose

    def choose(self, conversation: Sequence[Message], options: Sequence[str], *, prefix: str = "",
               role: str = "task") -> tuple[int, list[float]]:
        """Answer a conversation with one of ``options`` by scoring them instead of generating: each option
        (after ``prefix``, e.g. an opening tag) is scored as the start of the reply; returns the index of the
        most likely one (ties: the first) and every option's log-probability. Cached and budgeted as scores.

        For closed answer sets (a judge's A/B, an arm number) this replaces parsing free text that small
        models rarely format as asked.
        """
        opts = [str(o) for o in options]
        if len(opts) < 2 or any(not o for o in opts):
            raise ValueError("choose needs at least two non-empty options")
        if not self.backend.supports_choose:
            raise NotImplementedError(f"backend {self.name!r} cannot score a conversation's answers; "
                                      "generate and parse instead (LocalLM and ScriptedBackend can)")
        prompt = self.backend.render_chat(validate_messages(conversation)) + prefix
        scores = self.score([prompt] * len(opts), opts, role=role)
        logps = [s.logprob for s in scores]
        return max(range(len(opts)), key=lambda i: (logps[i], -i)), logps

    def hidden_states(self, texts: Sequence[str], **kwargs: Any) -> Any:
        """Hidden states from a white-box backend (e.g. ``LocalLM``); not cached, not budgeted."""
        fn = getattr(self.backend, "hidden_states", None)
        if fn is None:
            raise NotImplementedError(f"backend {self.name!r} exposes no hidden states; use a LocalLM")
        return fn(texts, **kwargs)

    # -- helpers ----------------------------------------------------------------------------------
    def _estimate_tokens(self, item: Any) -> int:
        if isinstance(item, str):
            return self.backend.count_tokens(item)
        return sum(self.backend.count_tokens(c) + 4 for _, c in item)

    def _lookup(self, keys: list[str]) -> list[dict[str, Any]] | None:
        if self.cache is None:
            return None
        vals = []
        for k in keys:
            v = self.cache.get(k)
            if v is None:
                return None
            vals.append(v)
        return vals

    def _record(self, key: str, request: dict[str, Any], response: dict[str, Any]) -> None:
        if self.recorder is not None:
            self.recorder.record(key, request, response)


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i: i + size] for i in range(0, len(items), size)]


def _prompt_chunks(items: list[int], prompts: list[str], size: int) -> list[list[int]]:
    """Chunks of at most ``size`` distinct prompts, all continuations of a prompt in the same chunk (a
    backend scores them together, and prefix reuse shares more within one call)."""
    by_prompt: dict[str, list[int]] = {}
    for i in items:
        by_prompt.setdefault(prompts[i], []).append(i)
    groups = list(by_prompt.values())
    return [[i for g in groups[k: k + size] for i in g] for k in range(0, len(groups), size)]


def _check_role(role: str) -> None:
    if not isinstance(role, str) or not role:
        raise ValueError(f"role must be a non-empty string such as 'task', 'optimizer' or 'judge', got {role!r}")
