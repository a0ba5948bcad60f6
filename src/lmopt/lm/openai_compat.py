"""A backend for any OpenAI-compatible HTTP server: vLLM, llama.cpp server, Ollama, hosted APIs.

Only the standard library is used: requests run on a pool of ``max_concurrency`` worker threads, each
keeping one HTTP keep-alive connection, and are driven by asyncio (``agenerate`` / ``achat`` / ``ascore``)
with an ``asyncio.Semaphore`` bounding the requests in flight. Timeouts, HTTP 429 and 5xx answers and
dropped connections are retried with exponential backoff (jitter from a seeded RNG, ``Retry-After``
honoured); everything else fails at once with a typed :class:`LMError`.

The API key is read from an environment variable only (``api_key_env``) and is kept out of ``repr``,
``name``, log records, exception messages, pickles, cache entries and recordings; server error bodies are
redacted before they are quoted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import json
import logging
import os
import random
import re
import ssl
import threading
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

from .backend import Backend
from .types import Completion, GenerationConfig, Score

logger = logging.getLogger(__name__)
T = TypeVar("T")

_SNIPPET_CHARS = 200
_SCORE_PROBES: dict[tuple[str, str], bool] = {}  # (base_url, model) -> serves prompt log-probs
_USAGE_PROBES: dict[str, bool] = {}  # base_url -> usage counts one choice only (llama.cpp's llama-server)
USAGE_SCOPES = ("auto", "total", "choice")
_PROBE_LOCK = threading.Lock()
_TOKEN_PATTERNS = (re.compile(r"(?i)(bearer\s+)[^\s\"',]+"), re.compile(r"\bsk-[A-Za-z0-9_\-*.]{4,}"))


class LMError(RuntimeError):
    """Base class of the errors of a remote LM call. ``status`` is the HTTP status (``None`` if no answer);
    ``attempts`` is how many times the request was sent."""

    def __init__(self, message: str, *, status: int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


class LMTimeoutError(LMError):
    """The server did not answer within ``timeout`` seconds (on every attempt)."""


class LMConnectionError(LMError):
    """The server could not be reached, or dropped the connection (on every attempt)."""


class LMRateLimitError(LMError):
    """HTTP 429 on every attempt: the server keeps rate-limiting."""


class LMServerError(LMError):
    """HTTP 5xx on every attempt."""


class LMAuthError(LMError):
    """No API key where one is required, or HTTP 401/403. Never retried."""


class LMRequestError(LMError):
    """The server rejected the request (HTTP 4xx other than 401/403/408/429), e.g. an unknown model."""


class LMResponseError(LMError):
    """The answer was not valid JSON or lacked the expected fields (a short, key-free snippet is quoted)."""


class LMNoLogprobsError(LMResponseError):
    """The server returned no prompt log-probabilities, so it cannot score continuations."""


class _Secret:
    """Holds the API key; prints, reprs and pickles as nothing."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<redacted>"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("the API key is not picklable")


class OpenAICompatibleLM(Backend):
    """A model served behind an OpenAI-compatible ``/completions`` and ``/chat/completions`` API.

    Args:
        model: the model name the server knows (``"gpt-4o-mini"``, ``"Qwen/Qwen2.5-7B-Instruct"``...).
        base_url: the API root including ``/v1`` (vLLM: ``http://localhost:8000/v1``, llama.cpp server:
            ``http://localhost:8080/v1``, Ollama: ``http://localhost:11434/v1``).
        api_key_env: the environment variable holding the API key (read once, at construction). Local
            servers usually need none: without the variable no ``Authorization`` header is sent.
        max_concurrency: requests in flight at once (also the number of worker threads).
        timeout: seconds to wait for the connection and for each read of the answer.
        max_retries: retries after the first attempt for timeouts, dropped connections, 429 and 5xx.
        backoff: ``(initial, factor, maximum)`` seconds: retry ``k`` (0-based) waits
            ``min(maximum, initial * factor**k)`` scaled by a jitter in [0.5, 1] drawn from
            ``random.Random(seed)``; a ``Retry-After`` header raises the wait (up to ``maximum``).
        seed: seed of the jitter RNG.
        require_key: raise :class:`LMAuthError` at construction when ``$api_key_env`` is unset or empty.
        split_n: send ``n`` separate requests (``n=1``, seed ``seed + j`` for sample ``j``) instead of one
            request with ``n``; needed for servers that ignore ``n`` (Ollama). Part of the cache key of
            ``n > 1`` requests, since the samples differ.
        supports_logprobs: whether the server returns prompt log-probs for ``score``; ``None`` (default)
            probes it once (see :attr:`supports_score`).
        usage_scope: what the answer's ``usage.completion_tokens`` covers when ``n > 1``: ``"total"`` (all
            choices: OpenAI, vLLM), ``"choice"`` (one choice: llama.cpp's llama-server, which honours ``n``),
            or ``"auto"`` (default): ``"choice"`` when ``GET /models`` says the models are owned by
            ``llamacpp``, else ``"total"`` (asked once per server).

    ``generate`` posts ``/completions`` with ``prompt, max_tokens, temperature, top_p, n, seed`` and
    ``stop`` (when set); ``chat`` posts ``/chat/completions``. Token counts come from the answer's
    ``usage``; with ``n > 1`` a total is split over the samples in proportion to their lengths, and on a
    server whose usage counts one choice, each choice's generated tokens are counted from its log-prob
    list (requested with ``logprobs`` for that purpose). ``score`` posts ``/completions`` with
    ``echo=True, logprobs=0, max_tokens=0`` (vLLM supports it) and sums the log-probs of the tokens that end
    after the prompt; a server without prompt log-probs raises :class:`LMNoLogprobsError`.

    The synchronous methods can be called from plain code and from inside a running event loop (they then
    run on a helper thread); in async code prefer ``await lm.agenerate(...)``.
    """

    def __init__(self, model: str, base_url: str = "https://api.openai.com/v1",
                 api_key_env: str = "OPENAI_API_KEY", max_concurrency: int = 8, timeout: float = 60.0,
                 max_retries: int = 5, backoff: tuple[float, float, float] = (0.5, 2.0, 30.0), *,
                 seed: int = 0, require_key: bool = False, split_n: bool = False,
                 supports_logprobs: bool | None = None, usage_scope: str = "auto") -> None:
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"model must be the non-empty model name the server serves, got {model!r}")
        if not isinstance(base_url, str):
            raise TypeError(f"base_url must be a str such as 'http://localhost:8000/v1', got {base_url!r}")
        parts = urlsplit(base_url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http(s) URL such as 'http://localhost:8000/v1', "
                             f"got {_redact_url(base_url)!r}")
        if parts.username or parts.password or parts.query:
            raise ValueError("base_url must not carry credentials or a query string; put the API key in the "
                             f"environment variable named by api_key_env ({api_key_env!r})")
        if not isinstance(api_key_env, str) or not api_key_env:
            raise ValueError(f"api_key_env must name an environment variable, got {api_key_env!r}")
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"max_concurrency must be a positive int, got {max_concurrency!r}")
        if not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        try:
            initial, factor, maximum = (float(b) for b in backoff)
        except (TypeError, ValueError):
            raise ValueError(f"backoff must be (initial, factor, maximum) seconds, got {backoff!r}") from None
        if not (initial >= 0 and factor >= 1 and maximum >= initial):
            raise ValueError("backoff needs initial >= 0, factor >= 1 and maximum >= initial, "
                             f"got {backoff!r}")
        if not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")

        self.model = model
        self.base_url = base_url.strip().rstrip("/")
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff = (initial, factor, maximum)
        self.seed = seed
        self.require_key = bool(require_key)
        self.split_n = bool(split_n)
        if supports_logprobs is not None and not isinstance(supports_logprobs, bool):
            raise ValueError(f"supports_logprobs must be True, False or None (probe), got {supports_logprobs!r}")
        self.supports_logprobs = supports_logprobs
        if usage_scope not in USAGE_SCOPES:
            raise ValueError(f"usage_scope must be one of {USAGE_SCOPES}, got {usage_scope!r}")
        self.usage_scope = usage_scope

        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        self.name = f"openai:{model}@{host}" + (f":{parts.port}" if parts.port else "")

        raw = os.environ.get(api_key_env, "").strip()
        if self.require_key and not raw:
            raise LMAuthError(f"no API key: the environment variable {api_key_env} is unset or empty; "
                              f"export {api_key_env}=... (or pass api_key_env= naming the variable to read)")
        self._key: _Secret | None = _Secret(raw) if raw else None

        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._conns: list[http.client.HTTPConnection] = []
        self._sems: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = \
            weakref.WeakKeyDictionary()
        self._closed = False

    def __repr__(self) -> str:
        return (f"OpenAICompatibleLM(model={self.model!r}, base_url={self.base_url!r}, "
                f"api_key_env={self.api_key_env!r}, key={'set' if self._key else 'unset'})")

    def __getstate__(self) -> dict[str, Any]:
        """Pickles the settings only; the copy re-reads the key from its own environment."""
        return {"args": (self.model, self.base_url, self.api_key_env, self.max_concurrency, self.timeout,
                         self.max_retries, self.backoff),
                "kwargs": {"seed": self.seed, "require_key": self.require_key, "split_n": self.split_n,
                           "supports_logprobs": self.supports_logprobs, "usage_scope": self.usage_scope}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(*state["args"], **state["kwargs"])  # type: ignore[misc]

    @property
    def supports_score(self) -> bool:
        """Whether the server returns prompt log-probs (``echo`` with ``logprobs``), which ``score`` needs.
        Probed once per server and model with a two-word request (the answer is kept for this process), unless
        ``supports_logprobs`` was given; a server that cannot be reached raises its typed error."""
        if self.supports_logprobs is not None:
            return self.supports_logprobs
        where = (self.base_url, self.model)
        with _PROBE_LOCK:
            known = _SCORE_PROBES.get(where)
        if known is None:
            try:
                self._run(lambda: self._score_one("Hello", " world"))
                known = True
            except (LMNoLogprobsError, LMRequestError) as exc:
                known = False
                logger.warning("%s cannot score continuations (%s); evaluations in mode 'auto' use generation",
                               self.name, type(exc).__name__)
            with _PROBE_LOCK:
                _SCORE_PROBES[where] = known
        return known

    def key_options(self, config: GenerationConfig) -> dict[str, Any]:
        # split_n sends n requests with seeds seed+j instead of one with n: other samples, other keys
        return {"split_n": True} if self.split_n and config.n > 1 else {}

    # -- transport (worker threads) ---------------------------------------------------------------
    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise LMError(f"{self.name} is closed; create a new OpenAICompatibleLM")
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(self.max_concurrency,
                                                                       thread_name_prefix="lmopt-http")
            return self._executor

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        with self._lock:
            sem = self._sems.get(loop)
            if sem is None:
                sem = self._sems[loop] = asyncio.Semaphore(self.max_concurrency)
            return sem

    def _new_connection(self) -> http.client.HTTPConnection:
        if self._https:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout, context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        with self._lock:
            self._conns.append(conn)
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()
            with self._lock:
                if conn in self._conns:
                    self._conns.remove(conn)

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "lmopt"}
        if self._key is not None:
            h["Authorization"] = "Bearer " + self._key.reveal()
        return h

    def _post_blocking(self, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """One POST on this thread's keep-alive connection; a stale reused connection is reopened once."""
        for fresh in (False, True):
            conn = getattr(self._local, "conn", None)
            reused = conn is not None and not fresh
            if conn is None or fresh:
                self._drop_connection()
                conn = self._local.conn = self._new_connection()
            try:
                conn.request("POST", self._prefix + path, body=body, headers=self._headers())
                resp = conn.getresponse()
                data = resp.read()
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self._drop_connection()
                if not reused:
                    raise
            except BaseException:
                self._drop_connection()
                raise
        raise AssertionError("unreachable")

    # -- one request with retries (event loop) ----------------------------------------------------
    def _redact(self, text: str) -> str:
        if self._key is not None and len(self._key.reveal()) >= 4:
            text = text.replace(self._key.reveal(), "***")
        for pat in _TOKEN_PATTERNS:
            text = pat.sub(lambda m: (m.group(1) if m.groups() else "") + "***", text)
        return text

    def _snippet(self, data: bytes | str) -> str:
        text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
        text = self._redact(text)
        text = " ".join(text.split())
        return repr(text if len(text) <= _SNIPPET_CHARS else text[:_SNIPPET_CHARS] + "…")

    def _where(self, path: str) -> str:
        return f"POST {self._prefix}{path} on {self.name}"

    def _http_error(self, status: int, headers: dict[str, str], data: bytes, path: str) -> LMError:
        where, snip = self._where(path), self._snippet(data)
        if status in (401, 403):
            return LMAuthError(f"authentication failed (HTTP {status}) for {where}: {snip}; check the key in "
                               f"${self.api_key_env} and that it may use model {self.model!r}", status=status)
        if status == 429:
            return LMRateLimitError(f"rate limited (HTTP 429) by {where}: {snip}; lower max_concurrency or "
                                    "raise max_retries / backoff", status=status)
        if status == 408:
            return LMTimeoutError(f"the server timed out the request (HTTP 408): {where}", status=status)
        if status >= 500:
            return LMServerError(f"server error (HTTP {status}) from {where}: {snip}", status=status)
        return LMRequestError(f"the server rejected the request (HTTP {status}) at {where}: {snip}; check "
                              f"the model name {self.model!r}, base_url and the generation settings"
                              f"{self._v1_hint() if status in (404, 405) else ''}", status=status)

    def _v1_hint(self) -> str:
        """A hint when ``base_url`` lacks the ``/v1`` API root that OpenAI-compatible servers use."""
        if "/v1/" in urlsplit(self.base_url).path + "/":
            return ""
        return (f"; base_url {self.base_url!r} has no /v1: OpenAI-compatible servers (OpenAI, vLLM, llama.cpp's "
                f"llama-server, Ollama) serve the API under it, e.g. base_url={self.base_url + '/v1'!r}")

    def _retry_delay(self, retry: int, headers: dict[str, str] | None) -> float:
        initial, factor, maximum = self.backoff
        with self._lock:
            jitter = 0.5 + 0.5 * self._rng.random()
        delay = min(maximum, initial * factor**retry) * jitter
        after = (headers or {}).get("retry-after")
        if after is not None:
            try:
                delay = max(delay, min(maximum, float(after)))
            except ValueError:
                pass  # an HTTP-date: keep the exponential delay
        return delay

    async def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        loop = asyncio.get_running_loop()
        sem = self._semaphore()
        retry = 0
        while True:
            headers: dict[str, str] | None = None
            async with sem:
                try:
                    status, headers, data = await loop.run_in_executor(self._pool(), self._post_blocking,
                                                                       path, body)
                    err: LMError | None = None
                except TimeoutError:
                    err = LMTimeoutError(f"no answer within timeout={self.timeout:g} s from "
                                         f"{self._where(path)}; raise timeout= or check the server")
                except (OSError, http.client.HTTPException) as exc:
                    err = LMConnectionError(f"cannot reach {self._where(path)}: {type(exc).__name__}: "
                                            f"{self._redact(str(exc))}; is the server running at "
                                            f"{self.base_url}?")
            if err is None:
                assert headers is not None
                if 200 <= status < 300:
                    try:
                        doc = json.loads(data)
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        raise LMResponseError(f"malformed JSON (HTTP {status}) from {self._where(path)}: "
                                              f"{self._snippet(data)}", status=status,
                                              attempts=retry + 1) from None
                    if not isinstance(doc, dict):
                        raise LMResponseError(f"expected a JSON object from {self._where(path)}, got "
                                              f"{self._snippet(data)}", status=status, attempts=retry + 1)
                    return doc
                err = self._http_error(status, headers, data, path)
            err.attempts = retry + 1
            retryable = isinstance(err, (LMTimeoutError, LMConnectionError, LMRateLimitError, LMServerError))
            if not retryable or retry >= self.max_retries:
                if retryable and retry > 0:
                    err.args = (f"{err.args[0]} (gave up after {retry + 1} attempts)",)
                raise err
            delay = self._retry_delay(retry, headers)
            logger.warning("%s: %s; retry %d/%d in %.2f s", self.name, type(err).__name__, retry + 1,
                           self.max_retries, delay, extra={"lm_retry_delay": delay, "lm_status": err.status})
            await asyncio.sleep(delay)
            retry += 1

    # -- response parsing -------------------------------------------------------------------------
    def _bad(self, path: str, what: str, doc: Any) -> LMResponseError:
        return LMResponseError(f"unexpected answer from {self._where(path)}: {what}; got "
                               f"{self._snippet(json.dumps(doc, ensure_ascii=False))}")

    def _choices(self, path: str, doc: dict[str, Any], n: int, chat: bool) -> list[tuple[str, str]]:
        choices = doc.get("choices")
        if not isinstance(choices, list) or not choices or not all(isinstance(c, dict) for c in choices):
            raise self._bad(path, "no 'choices' list" + self._v1_hint(), doc)
        choices = _sorted_choices(doc)
        if len(choices) != n:
            raise LMResponseError(f"{self._where(path)} returned {len(choices)} choice(s) for n={n}; this "
                                  "server ignores n (Ollama does): pass split_n=True")
        out = []
        for c in choices:
            if chat:
                msg = c.get("message")
                text = msg.get("content") if isinstance(msg, dict) else None
                if isinstance(msg, dict) and text is None:
                    text = ""  # a refusal or a tool call: no text
            else:
                text = c.get("text")
            if not isinstance(text, str):
                raise self._bad(path, "a choice without " + ("'message.content'" if chat else "'text'"), doc)
            out.append((text, str(c.get("finish_reason") or "stop")))
        return out

    def _usage(self, doc: dict[str, Any], prompt_estimate: Callable[[], int],
               texts: list[str], per_choice: list[int | None] | None = None) -> tuple[int, list[int]]:
        """Prompt tokens and per-sample completion tokens: ``per_choice`` counts where the server listed each
        choice's tokens, else the reported total split in proportion to the lengths."""
        usage = doc.get("usage") if isinstance(doc.get("usage"), dict) else {}
        pt, ct = usage.get("prompt_tokens"), usage.get("completion_tokens")
        prompt_tokens = int(pt) if isinstance(pt, int) and pt >= 0 else prompt_estimate()
        if per_choice is not None and all(c is not None for c in per_choice):
            return prompt_tokens, [int(c) for c in per_choice]  # type: ignore[arg-type]
        if not (isinstance(ct, int) and ct >= 0):  # no usage reported: estimate per sample
            return prompt_tokens, [self.count_tokens(t) if t else 0 for t in texts]
        if len(texts) == 1:
            return prompt_tokens, [ct]
        if per_choice is not None:  # one choice's count only and no token lists: estimate each choice
            return prompt_tokens, [self.count_tokens(t) if t else 0 for t in texts]
        weights = [len(t) + 1 for t in texts]
        shares = [ct * w / sum(weights) for w in weights]
        counts = [int(s) for s in shares]
        order = sorted(range(len(texts)), key=lambda i: (counts[i] - shares[i], i))
        for i in order[: ct - sum(counts)]:  # largest remainders get the leftover tokens
            counts[i] += 1
        return prompt_tokens, counts

    def _usage_per_choice(self) -> bool:
        """Whether ``usage.completion_tokens`` of an ``n > 1`` answer counts one choice (llama-server)."""
        if self.usage_scope != "auto":
            return self.usage_scope == "choice"
        with _PROBE_LOCK:
            known = _USAGE_PROBES.get(self.base_url)
        if known is None:
            known = False
            try:
                conn = self._new_connection()
                try:
                    conn.request("GET", self._prefix + "/models", headers=self._headers())
                    resp = conn.getresponse()
                    doc = json.loads(resp.read()) if resp.status == 200 else {}
                finally:
                    conn.close()
                    with self._lock:
                        if conn in self._conns:
                            self._conns.remove(conn)
                data = doc.get("data") if isinstance(doc, dict) else None
                known = isinstance(data, list) and any(isinstance(m, dict) and m.get("owned_by") == "llamacpp"
                                                       for m in data)
            except (OSError, http.client.HTTPException, ValueError):
                pass  # no model list: assume the OpenAI convention (usage totals all choices)
            with _PROBE_LOCK:
                _USAGE_PROBES[self.base_url] = known
        return known

    async def _sample(self, path: str, base: dict[str, Any], config: GenerationConfig,
                      prompt_estimate: Callable[[], int]) -> list[Completion]:
        chat = path == "/chat/completions"
        payload = {"model": self.model, **base, "max_tokens": config.max_new_tokens,
                   "temperature": config.temperature, "top_p": config.top_p}
        if config.stop:
            payload["stop"] = list(config.stop)
        if self.split_n and config.n > 1:
            docs = await asyncio.gather(*(self._post(path, {**payload, "n": 1, "seed": config.seed + j})
                                          for j in range(config.n)))
            out = []
            for doc in docs:
                (text, finish), = self._choices(path, doc, 1, chat)
                pt, (ct,) = self._usage(doc, prompt_estimate, [text])
                out.append(Completion(text, pt, ct, finish))
            return out
        per_choice = config.n > 1 and await asyncio.get_running_loop().run_in_executor(
            self._pool(), self._usage_per_choice)
        if per_choice:  # each choice's token list is the only per-choice count such a server gives
            payload["logprobs"] = True if chat else 1
        doc = await self._post(path, {**payload, "n": config.n, "seed": config.seed})
        choices = self._choices(path, doc, config.n, chat)
        counts = [_listed_tokens(c) for c in _sorted_choices(doc)] if per_choice else None
        pt, cts = self._usage(doc, prompt_estimate, [t for t, _ in choices], counts)
        return [Completion(text, pt, ct, finish) for (text, finish), ct in zip(choices, cts)]

    # -- public async API -------------------------------------------------------------------------
    async def _each(self, coros: list[Awaitable[T]], on_result: Callable[[int, T], None] | None) -> list[T]:
        """Run all requests concurrently; each result goes to ``on_result`` as soon as it arrives. A failed
        request does not cancel the others (they may already be paid for): the first error (in request
        order) is raised once every request has finished."""
        async def one(i: int, coro: Awaitable[T]) -> T:
            result = await coro
            if on_result is not None:
                on_result(i, result)
            return result

        results = await asyncio.gather(*(one(i, c) for i, c in enumerate(coros)), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return results  # type: ignore[return-value]

    async def agenerate(self, prompts: Sequence[str], config: GenerationConfig,
                        on_result: Callable[[int, list[Completion]], None] | None = None) -> list[list[Completion]]:
        """Async :meth:`generate`: all prompts are sent concurrently (at most ``max_concurrency`` at once)."""
        prompts = _check_texts(prompts, "prompts")
        _check_config(config)
        return await self._each([
            self._sample("/completions", {"prompt": p}, config, lambda p=p: self.count_tokens(p))
            for p in prompts], on_result)

    async def achat(self, conversations: Sequence[tuple[tuple[str, str], ...]], config: GenerationConfig,
                    on_result: Callable[[int, list[Completion]], None] | None = None) -> list[list[Completion]]:
        """Async :meth:`chat`."""
        _check_config(config)
        convs = [_check_conversation(c, i) for i, c in enumerate(conversations)]
        return await self._each([
            self._sample("/chat/completions", {"messages": [{"role": r, "content": t} for r, t in c]}, config,
                         lambda c=c: sum(self.count_tokens(t) + 4 for _, t in c))
            for c in convs], on_result)

    async def ascore(self, prompts: Sequence[str], continuations: Sequence[str],
                     on_result: Callable[[int, Score], None] | None = None) -> list[Score]:
        """Async :meth:`score`."""
        prompts = _check_texts(prompts, "prompts")
        continuations = _check_texts(continuations, "continuations")
        if len(prompts) != len(continuations):
            raise ValueError(f"score needs as many prompts as continuations, got {len(prompts)} and "
                             f"{len(continuations)}")
        for i, (p, c) in enumerate(zip(prompts, continuations)):
            if not p or not c:
                raise ValueError(f"score pair {i}: prompt and continuation must both be non-empty (the first "
                                 "token of a text has no log-probability)")
        return await self._each([self._score_one(p, c) for p, c in zip(prompts, continuations)], on_result)

    async def _score_one(self, prompt: str, continuation: str) -> Score:
        path = "/completions"
        full = prompt + continuation
        doc = await self._post(path, {"model": self.model, "prompt": full, "max_tokens": 0, "echo": True,
                                      "logprobs": 0, "temperature": 0.0})
        choices = doc.get("choices")
        lp = choices[0].get("logprobs") if isinstance(choices, list) and choices and \
            isinstance(choices[0], dict) else None
        no_lp = (f"{self.name} returned no prompt log-probs for echo=True, logprobs=0, max_tokens=0, so it "
                 "cannot score continuations; use a server that supports echo with logprobs (vLLM does; "
                 "llama.cpp server, Ollama and chat-only hosted APIs do not) or a LocalLM")
        if not isinstance(lp, dict) or not isinstance(lp.get("token_logprobs"), list) \
                or not lp["token_logprobs"]:
            raise LMNoLogprobsError(no_lp)
        token_lps = lp["token_logprobs"]
        offsets = lp.get("text_offset")
        if not (isinstance(offsets, list) and len(offsets) == len(token_lps)):
            tokens = lp.get("tokens")  # rebuild offsets when the tokens spell out the text
            if isinstance(tokens, list) and len(tokens) >= 1 and all(isinstance(t, str) for t in tokens) \
                    and "".join(tokens).startswith(full) and len(tokens) == len(token_lps):
                offsets, pos = [], 0
                for t in tokens:
                    offsets.append(pos)
                    pos += len(t)
            else:
                raise LMNoLogprobsError(no_lp + " (no usable 'text_offset')")
        lo, hi = len(prompt), len(full)
        total, n_cont, n_prompt = 0.0, 0, 0
        for i, (off, tlp) in enumerate(zip(offsets, token_lps)):
            if not isinstance(off, int) or off >= hi:
                break  # generated tokens (if the server ignored max_tokens=0) start at the end of the text
            end = min(offsets[i + 1], hi) if i + 1 < len(offsets) and isinstance(offsets[i + 1], int) else hi
            if end <= lo:
                n_prompt += 1
                continue
            if not isinstance(tlp, (int, float)):
                raise LMNoLogprobsError(f"{self.name} gave no log-prob for continuation token {n_cont} of "
                                        f"{continuation[:40]!r} (got {tlp!r}); it cannot score this pair")
            total += float(tlp)
            n_cont += 1
        if n_cont == 0:
            raise self._bad(path, "no echoed token covers the continuation", doc)
        return Score(total, n_cont, n_prompt)

    # -- synchronous Backend API ------------------------------------------------------------------
    def _run(self, make: Callable[[], Awaitable[T]]) -> T:
        async def main() -> T:
            return await make()

        try:
            asyncio.get_running_loop()
            in_loop = True
        except RuntimeError:
            in_loop = False
        if not in_loop:  # outside the except block: errors are not chained to "no running event loop"
            return asyncio.run(main())
        # inside a running event loop (Jupyter, an async app): run on a fresh loop in a helper thread
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lmopt-sync") as ex:
            return ex.submit(asyncio.run, main()).result()

    def generate(self, prompts: Sequence[str], config: GenerationConfig) -> list[list[Completion]]:
        return self._run(lambda: self.agenerate(prompts, config))

    def chat(self, conversations: Sequence[tuple[tuple[str, str], ...]],
             config: GenerationConfig) -> list[list[Completion]]:
        return self._run(lambda: self.achat(conversations, config))

    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[Score]:
        return self._run(lambda: self.ascore(prompts, continuations))

    def generate_each(self, prompts: Sequence[str], config: GenerationConfig,
                      on_result: Callable[[int, list[Completion]], None]) -> None:
        self._run(lambda: self.agenerate(prompts, config, on_result))

    def chat_each(self, conversations: Sequence[tuple[tuple[str, str], ...]], config: GenerationConfig,
                  on_result: Callable[[int, list[Completion]], None]) -> None:
        self._run(lambda: self.achat(conversations, config, on_result))

    def score_each(self, prompts: Sequence[str], continuations: Sequence[str],
                   on_result: Callable[[int, Score], None]) -> None:
        self._run(lambda: self.ascore(prompts, continuations, on_result))

    def close(self) -> None:
        """Close the connections and stop the worker threads; later calls raise :class:`LMError`."""
        with self._lock:
            self._closed = True
            ex, self._executor = self._executor, None
            conns, self._conns = self._conns, []
        if ex is not None:
            ex.shutdown(wait=True)
        for c in conns:
            c.close()

    def __enter__(self) -> OpenAICompatibleLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sorted_choices(doc: dict[str, Any]) -> list[dict[str, Any]]:
    choices = doc["choices"]
    if all(isinstance(c.get("index"), int) for c in choices):
        choices = sorted(choices, key=lambda c: c["index"])
    return choices


def _listed_tokens(choice: dict[str, Any]) -> int | None:
    """The number of generated tokens a choice's log-prob list shows (chat format ``content`` or the
    completions format ``tokens``), or None when it lists none."""
    lp = choice.get("logprobs")
    if not isinstance(lp, dict):
        return None
    for key in ("content", "tokens"):
        if isinstance(lp.get(key), list):
            return len(lp[key])
    return None


def _redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password or parts.username:
        return url.replace(parts.netloc, parts.hostname or "***")
    return url


def _check_config(config: Any) -> None:
    if not isinstance(config, GenerationConfig):
        raise TypeError(f"config must be a GenerationConfig, got {type(config).__name__}")


def _check_texts(texts: Sequence[str], what: str) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"{what} must be a list of strings, got a single str; wrap it in a list")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"{what}[{i}] must be a str, got {type(t).__name__}")
    return out


def _check_conversation(conv: Any, i: int) -> tuple[tuple[str, str], ...]:
    try:
        out = tuple((str(r), c) for r, c in conv)
    except (TypeError, ValueError):
        raise TypeError(f"conversation {i} must be a sequence of (role, content) pairs; LM.chat validates "
                        "dict messages for you") from None
    if not out or not all(isinstance(c, str) for _, c in out):
        raise ValueError(f"conversation {i} must be non-empty with str contents")
    return out
