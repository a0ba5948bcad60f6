"""Record every LM call to a JSONL file, and replay a recorded session offline.

Record with ``LM(backend, recorder=JsonlRecorder("session.jsonl"))``; replay with
``LM(ReplayBackend("session.jsonl", name=<the recorded LM's name>))``. Replay recomputes each request's
key with :func:`lmopt.lm.keys.request_key` exactly as :class:`lmopt.lm.client.LM` does, so the same code
run against the replay gets the same answers without a model, a server or a network.

File format: one JSON object per line, ``{"key": ..., "request": {...}, "response": {...}}``; the request
holds the kind, the prompt / messages / continuation, the generation fields and the sample index (never an
API key); the response holds the completion text and token counts, or the score.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .backend import Backend
from .keys import request_key
from .types import Completion, GenerationConfig, Score


class ReplayMissError(LookupError):
    """A request that the recording does not hold; the message names it and says how to fix it."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind

    def __str__(self) -> str:  # LookupError would show the repr of the message
        return str(self.args[0])


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Complete, valid lines of a recording; a torn last line (a killed writer) is skipped with a warning."""
    entries = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    last = len(lines) - 1
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            if i == last:  # no newline after it: the write was cut off
                warnings.warn(f"{path}: ignoring an incomplete last line (the recording was interrupted)",
                              stacklevel=3)
                continue
            raise ValueError(f"{path} line {i + 1} is not valid JSON ({exc}); is this an lmopt recording?") \
                from None
        if not (isinstance(obj, dict) and isinstance(obj.get("key"), str)
                and isinstance(obj.get("request"), dict) and isinstance(obj.get("response"), dict)):
            raise ValueError(f"{path} line {i + 1} is not a recorded call: expected an object with 'key', "
                             "'request' and 'response'")
        entries.append(obj)
    return entries


class JsonlRecorder:
    """Appends one JSON line per distinct call key, flushed at once (``fsync=True`` also syncs to disk).

    Re-opening an existing recording appends to it and keeps skipping keys already written, so a resumed
    run extends its recording instead of duplicating it. Thread-safe. A key recorded twice keeps its first
    response.
    """

    def __init__(self, path: str | Path, *, fsync: bool = False) -> None:
        self.path = Path(path).expanduser()
        if self.path.is_dir():
            raise ValueError(f"recording path {self.path} is a directory; pass a file such as "
                             f"{self.path / 'session.jsonl'}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = bool(fsync)
        self._lock = threading.Lock()
        self._seen: set[str] = set()
        if self.path.exists() and self.path.stat().st_size > 0:
            self._seen = {e["key"] for e in _read_jsonl(self.path)}
            with open(self.path, "rb+") as f:  # cut a torn last line (a killed writer) off the end
                data = f.read()
                if not data.endswith(b"\n"):
                    f.truncate(data.rfind(b"\n") + 1)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def __repr__(self) -> str:
        return f"JsonlRecorder({str(self.path)!r}, {len(self._seen)} calls)"

    def __len__(self) -> int:
        return len(self._seen)

    def record(self, key: str, request: dict[str, Any], response: dict[str, Any]) -> None:
        """Append ``{"key", "request", "response"}`` unless ``key`` is already in the recording."""
        if not isinstance(key, str) or not key:
            raise TypeError(f"record() needs a non-empty string key, got {key!r}")
        line = json.dumps({"key": key, "request": request, "response": response}, ensure_ascii=False,
                          sort_keys=True)
        with self._lock:
            if self._file.closed:
                raise ValueError(f"the recorder for {self.path} is closed")
            if key in self._seen:
                return
            self._file.write(line + "\n")
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())
            self._seen.add(key)

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()

    def __enter__(self) -> JsonlRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _snippet(text: str, n: int = 60) -> str:
    text = text.replace("\n", "\\n")
    return repr(text if len(text) <= n else text[:n] + "…")


def _content(request: dict[str, Any]) -> str:
    """The request without its key: used to tell a model-name mismatch from a genuinely new request."""
    return json.dumps(request, sort_keys=True, ensure_ascii=False)


class ReplayBackend(Backend):
    """Serves ``generate`` / ``chat`` / ``score`` from a recording made with :class:`JsonlRecorder`.

    Args:
        path: the JSONL recording.
        name: the ``name`` of the recorded LM (``LM(...).name``, e.g. ``"openai:gpt-4o-mini@api.openai.com"``
            or ``"scripted"``): it is part of every key, so it must match for the requests to be found.
        split_n: set it when the recorded LM was ``OpenAICompatibleLM(split_n=True)``: its ``n > 1``
            samples were recorded under keys that say so (see :meth:`Backend.key_options`).

    A request that was not recorded raises :class:`ReplayMissError` naming its kind and prompt; re-record
    the session (run once with the real backend and a ``JsonlRecorder``) to add it. ``calls`` counts the
    requests served.
    """

    def __init__(self, path: str | Path, name: str, *, split_n: bool = False) -> None:
        self.split_n = bool(split_n)
        if not isinstance(name, str) or not name:
            raise ValueError("ReplayBackend needs name= equal to the recorded LM's name (LM.name), "
                             f"got {name!r}")
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise FileNotFoundError(f"no recording at {self.path}; record one with "
                                    "LM(backend, recorder=JsonlRecorder(path)) first")
        self.name = name
        self.calls = 0
        self._responses: dict[str, dict[str, Any]] = {}
        self._contents: set[str] = set()
        for e in _read_jsonl(self.path):
            self._responses.setdefault(e["key"], e["response"])
            self._contents.add(_content(e["request"]))

    def key_options(self, config: GenerationConfig) -> dict[str, Any]:
        return {"split_n": True} if self.split_n and config.n > 1 else {}

    def __repr__(self) -> str:
        return f"ReplayBackend({str(self.path)!r}, name={self.name!r}, {len(self._responses)} calls)"

    def __len__(self) -> int:
        return len(self._responses)

    def _lookup(self, key: str, request: dict[str, Any], what: str) -> dict[str, Any]:
        hit = self._responses.get(key)
        if hit is not None:
            return hit
        kind = request["kind"]
        if _content(request) in self._contents:
            raise ReplayMissError(
                f"replay miss: the {kind} request for {what} is in {self.path}, but under another model "
                f"name than {self.name!r}; pass ReplayBackend(path, name=...) the name of the LM that made "
                "the recording", kind)
        raise ReplayMissError(
            f"replay miss: {self.path} holds no {kind} request for {what} (model {self.name!r}"
            + (f", sample {request['sample']}" if "sample" in request else "")
            + "); the code now asks for something the recorded session did not. Re-record the session with "
              "the real backend: LM(backend, recorder=JsonlRecorder(path))", kind)

    def _sampled(self, kind: str, items: Sequence[Any], config: GenerationConfig) -> list[list[Completion]]:
        if not isinstance(config, GenerationConfig):
            raise TypeError(f"config must be a GenerationConfig, got {type(config).__name__}")
        fields = {**config.key_fields(), **self.key_options(config)}
        out = []
        for item in items:
            if kind == "generate":
                payload: dict[str, Any] = {"prompt": item}
                what = f"prompt {_snippet(item)}"
            else:
                payload = {"messages": [list(m) for m in item]}
                what = f"the conversation ending {_snippet(item[-1][1])}" if item else "an empty conversation"
            comps = []
            for j in range(config.n):
                key = request_key(kind, self.name, {**payload, "config": fields}, j)
                request = {"kind": kind, **payload, "config": fields, "sample": j}
                resp = self._lookup(key, request, what)
                try:
                    comps.append(Completion(text=resp["text"], prompt_tokens=int(resp["prompt_tokens"]),
                                            completion_tokens=int(resp["completion_tokens"]),
                                            finish_reason=str(resp.get("finish_reason", "stop"))))
                except (KeyError, TypeError, ValueError) as exc:
                    raise ValueError(f"{self.path}: the recorded {kind} response for {what} is malformed "
                                     f"({exc!r}); re-record the session") from None
            self.calls += 1
            out.append(comps)
        return out

    def generate(self, prompts: Sequence[str], config: GenerationConfig) -> list[list[Completion]]:
        return self._sampled("generate", list(prompts), config)

    def chat(self, conversations: Sequence[tuple[tuple[str, str], ...]],
             config: GenerationConfig) -> list[list[Completion]]:
        return self._sampled("chat", [tuple(tuple(m) for m in c) for c in conversations], config)

    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[Score]:
        if len(prompts) != len(continuations):
            raise ValueError(f"score needs as many prompts as continuations, got {len(prompts)} and "
                             f"{len(continuations)}")
        out = []
        for p, c in zip(prompts, continuations):
            payload = {"prompt": p, "continuation": c}
            resp = self._lookup(request_key("score", self.name, payload), {"kind": "score", **payload},
                                f"prompt {_snippet(p)} and continuation {_snippet(c)}")
            try:
                out.append(Score(logprob=float(resp["logprob"]),
                                 continuation_tokens=int(resp["continuation_tokens"]),
                                 prompt_tokens=int(resp["prompt_tokens"])))
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{self.path}: the recorded score response for prompt {_snippet(p)} is "
                                 f"malformed ({exc!r}); re-record the session") from None
            self.calls += 1
        return out
