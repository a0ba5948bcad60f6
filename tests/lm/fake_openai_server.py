"""A small OpenAI-compatible HTTP server for tests: deterministic answers plus scripted failures.

Default answers:
- ``POST /v1/completions``: ``n`` choices with text ``"<seed>:<index>:<first 12 chars of the prompt>"``;
  with ``echo`` it returns prompt log-probs over whitespace-led tokens (``-0.1 * len(token)`` each, the
  first token ``None``) with ``text_offset``.
- ``POST /v1/chat/completions``: ``n`` choices with content ``"<seed>:<index>:re <last message>"``.
- ``usage``: prompt tokens = whitespace words of the prompt (or of all messages); completion tokens = the
  words of all choices.

``push(...)`` queues one-off answers (status, body, headers, delay) that are served first, in order.
``llamacpp = True`` behaves like llama.cpp's llama-server: ``GET /v1/models`` says ``owned_by: llamacpp``,
``usage.completion_tokens`` counts the first choice only, and ``logprobs`` lists each choice's tokens (words).
``die_after = k`` answers k more requests, then drops every connection unanswered (a server that died).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Body = bytes | dict | Callable[[dict[str, str]], bytes]


@dataclass
class Scripted:
    status: int = 200
    body: Body = b"{}"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


def echo_tokens(text: str) -> list[str]:
    """The fake tokenizer: runs of whitespace stick to the following word."""
    return re.findall(r"\s*\S+", text)


def token_logprob(token: str) -> float:
    return -0.1 * len(token)


class FakeOpenAIServer:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.scripted: list[Scripted] = []
        self.ignore_n = False  # behave like servers that always return one choice
        self.no_logprobs = False  # behave like servers without echo/logprobs
        self.delay = 0.0  # added to every default answer
        self.die_after: int | None = None
        self.llamacpp = False
        self.gets: list[str] = []
        self.answered = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.clients: set[tuple[str, int]] = set()
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _make_handler(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def push(self, status: int = 200, body: Body = b"{}", headers: dict[str, str] | None = None,
             delay: float = 0.0, times: int = 1) -> None:
        with self._lock:
            for _ in range(times):
                self.scripted.append(Scripted(status, body, dict(headers or {}), delay))

    def bodies(self, path_end: str = "") -> list[dict[str, Any]]:
        return [r["body"] for r in self.requests if r["path"].endswith(path_end)]

    # -- default answers --------------------------------------------------------------------------
    def answer(self, path: str, req: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        n = 1 if self.ignore_n else int(req.get("n", 1))
        seed = req.get("seed", 0)
        if path.endswith("/chat/completions"):
            msgs = req["messages"]
            texts = [f"{seed}:{i}:re {msgs[-1]['content']}" for i in range(n)]
            choices = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                       for i, t in enumerate(texts)]
            prompt_words = sum(len(m["content"].split()) for m in msgs)
        elif path.endswith("/completions"):
            prompt = req["prompt"]
            prompt_words = len(prompt.split())
            if req.get("echo"):
                toks = echo_tokens(prompt)
                offsets, pos = [], 0
                for t in toks:
                    offsets.append(pos)
                    pos += len(t)
                lp = None if self.no_logprobs else {
                    "tokens": toks, "text_offset": offsets,
                    "token_logprobs": [None] + [token_logprob(t) for t in toks[1:]], "top_logprobs": None}
                choices = [{"index": 0, "text": prompt, "logprobs": lp, "finish_reason": "length"}]
                texts = []
            else:
                texts = [f"{seed}:{i}:{prompt[:12]}" for i in range(n)]
                choices = [{"index": i, "text": t, "finish_reason": "stop"} for i, t in enumerate(texts)]
        else:
            return 404, {"error": {"message": f"no route {path}"}}
        if self.llamacpp and req.get("logprobs") and texts:
            for c, t in zip(choices, texts):
                c["logprobs"] = {"content": [{"token": w, "logprob": -1.0} for w in t.split()]}
        choices.reverse()  # clients must order choices by index
        counted = texts[:1] if self.llamacpp else texts
        usage = {"prompt_tokens": prompt_words, "completion_tokens": sum(len(t.split()) for t in counted)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return 200, {"id": "x", "object": "text_completion", "model": req.get("model"), "choices": choices,
                     "usage": usage}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that time out close their sockets; nothing to report


def _make_handler(server: FakeOpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802 - http.server API
            length = int(self.headers.get("Content-Length", 0))
            raw = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                body = json.loads(raw)
            except json.JSONDecodeError:
                body = {"_raw": raw.decode("utf-8", "replace")}
            with server._lock:
                dead = server.die_after is not None and server.answered >= server.die_after
                if not dead:
                    server.answered += 1
            if dead:
                self.close_connection = True  # no answer at all: the client sees a dropped connection
                return
            with server._lock:
                server.requests.append({"path": self.path, "headers": headers, "body": body})
                server.clients.add(self.client_address)
                scripted = server.scripted.pop(0) if server.scripted else None
                server.in_flight += 1
                server.max_in_flight = max(server.max_in_flight, server.in_flight)
            try:
                if scripted is not None:
                    time.sleep(scripted.delay)
                    b = scripted.body
                    if callable(b):
                        data = b(headers)
                    else:
                        data = b if isinstance(b, bytes) else json.dumps(b).encode()
                    self._send(scripted.status, data, scripted.headers)
                else:
                    time.sleep(server.delay)
                    status, doc = server.answer(self.path, body)
                    self._send(status, json.dumps(doc).encode(), {})
            finally:
                with server._lock:
                    server.in_flight -= 1

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            with server._lock:
                server.gets.append(self.path)  # kept apart from the POSTs in ``requests``
            if self.path.endswith("/models"):
                owner = "llamacpp" if server.llamacpp else "fake"
                self._send(200, json.dumps({"object": "list", "data": [{"id": "tiny-model", "owned_by": owner}]})
                           .encode(), {})
            else:
                self._send(404, b'{"error": "no route"}', {})

        def _send(self, status: int, data: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

    return Handler
