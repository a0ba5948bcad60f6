"""OpenAICompatibleLM against a local fake OpenAI-compatible server (no network)."""

from __future__ import annotations

import asyncio
import logging
import pickle
import socket
import traceback
from urllib.parse import urlsplit

import pytest
from fake_openai_server import token_logprob

from lmopt.lm import LM, GenerationConfig
from lmopt.lm.cache import CallCache
from lmopt.lm.openai_compat import (
    LMAuthError,
    LMConnectionError,
    LMError,
    LMNoLogprobsError,
    LMRateLimitError,
    LMRequestError,
    LMResponseError,
    LMServerError,
    LMTimeoutError,
    OpenAICompatibleLM,
)
from lmopt.lm.replay import JsonlRecorder, ReplayBackend

KEY = "sk-test-SECRET-0123456789abcdef"
FAST = (0.01, 2.0, 0.04)  # backoff for tests: initial, factor, maximum seconds


def make(server, **kw) -> OpenAICompatibleLM:
    kw.setdefault("backoff", FAST)
    kw.setdefault("timeout", 5.0)
    return OpenAICompatibleLM("tiny-model", server.url, api_key_env="LMOPT_TEST_KEY", **kw)


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("LMOPT_TEST_KEY", KEY)
    return KEY


# -- happy paths -------------------------------------------------------------------------------------
def test_generate_sends_openai_fields_and_returns_usage(fake_server, key_env):
    lm = make(fake_server)
    cfg = GenerationConfig(max_new_tokens=7, temperature=0.5, top_p=0.9, seed=11, stop=("\n",))
    out = lm.generate(["hello there world", "second prompt"], cfg)
    assert [[c.text for c in o] for o in out] == [["11:0:hello there "], ["11:0:second promp"]]
    assert out[0][0].prompt_tokens == 3 and out[0][0].completion_tokens == 2
    body = fake_server.bodies("/completions")[0]
    assert body["model"] == "tiny-model" and body["max_tokens"] == 7 and body["n"] == 1 and body["seed"] == 11
    assert body["temperature"] == 0.5 and body["top_p"] == 0.9 and body["stop"] == ["\n"]
    assert fake_server.requests[0]["path"] == "/v1/completions"
    assert fake_server.requests[0]["headers"]["authorization"] == f"Bearer {KEY}"
    assert lm.name == f"openai:tiny-model@127.0.0.1:{urlsplit(fake_server.url).port}"
    lm.close()


def test_chat_posts_messages(fake_server):
    lm = make(fake_server)
    out = lm.chat([(("system", "be brief"), ("user", "what is 2+2?"))], GenerationConfig())
    assert out[0][0].text == "0:0:re what is 2+2?" and out[0][0].finish_reason == "stop"
    req = fake_server.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["body"]["messages"] == [{"role": "system", "content": "be brief"},
                                       {"role": "user", "content": "what is 2+2?"}]
    assert "authorization" not in req["headers"]  # no key in the environment: no header


def test_n_samples_are_distinct_ordered_and_cached_separately(fake_server, tmp_path):
    backend = make(fake_server)
    cfg = GenerationConfig(n=3, temperature=0.8, seed=5)
    cache = CallCache(tmp_path / "c.sqlite")
    lm = LM(backend, cache=cache)
    out = lm.generate("abc def", cfg)[0]
    assert [c.text for c in out] == ["5:0:abc def", "5:1:abc def", "5:2:abc def"]  # server reversed them
    assert fake_server.bodies()[0]["n"] == 3
    # usage: 6 completion words in total, split over the samples and summing to the server's total
    assert sum(c.completion_tokens for c in out) == 6 and all(c.prompt_tokens == 2 for c in out)
    assert len(cache) == 3  # one entry per sample
    again = LM(backend, cache=CallCache(tmp_path / "c.sqlite")).generate("abc def", cfg)[0]
    assert [c.text for c in again] == [c.text for c in out] and all(c.cached for c in again)
    assert len(fake_server.requests) == 1


def test_server_ignoring_n_is_detected_and_split_n_works(fake_server):
    fake_server.ignore_n = True
    cfg = GenerationConfig(n=3, temperature=1.0, seed=7)
    with pytest.raises(LMResponseError, match="split_n=True"):
        make(fake_server).generate(["p"], cfg)
    out = make(fake_server, split_n=True).generate(["p"], cfg)[0]
    assert [c.text for c in out] == ["7:0:p", "8:0:p", "9:0:p"]
    assert sorted(b["seed"] for b in fake_server.bodies()[1:]) == [7, 8, 9]
    assert all(b["n"] == 1 for b in fake_server.bodies()[1:])


def test_usage_split_over_samples_sums_to_total(fake_server):
    doc = {"choices": [{"index": 0, "text": "a b c d e f", "finish_reason": "length"},
                       {"index": 1, "text": "x", "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 4, "completion_tokens": 9}}
    fake_server.push(200, doc)
    out = make(fake_server).generate(["q"], GenerationConfig(n=2, temperature=1.0))[0]
    assert [c.completion_tokens for c in out] == [8, 1]  # 9 tokens split by length 12:2
    assert [c.finish_reason for c in out] == ["length", "stop"]


def test_bounded_concurrency_and_keep_alive(fake_server):
    fake_server.delay = 0.2
    lm = make(fake_server, max_concurrency=3)
    out = lm.generate([f"prompt {i}" for i in range(9)], GenerationConfig())
    assert [o[0].text for o in out] == [f"0:0:prompt {i}" for i in range(9)]
    assert 2 <= fake_server.max_in_flight <= 3
    assert len(fake_server.clients) <= 3  # each worker thread kept its connection open
    lm.close()
    with pytest.raises(LMError, match="closed"):
        lm.generate(["x"], GenerationConfig())


def test_sync_call_inside_running_event_loop_and_async_api(fake_server):
    lm = make(fake_server)

    async def main():
        inner = lm.generate(["from a loop"], GenerationConfig())  # sync API inside a running loop
        a, b = await asyncio.gather(lm.agenerate(["x"], GenerationConfig()),
                                    lm.achat([(("user", "hi"),)], GenerationConfig()))
        return inner, a, b

    inner, a, b = asyncio.run(main())
    assert inner[0][0].text == "0:0:from a loop" and a[0][0].text == "0:0:x" and b[0][0].text == "0:0:re hi"


# -- retries and typed errors ------------------------------------------------------------------------
def test_429_retried_with_backoff_then_success(fake_server, caplog):
    fake_server.push(429, {"error": {"message": "slow down"}}, times=2)
    lm = make(fake_server, seed=3)
    with caplog.at_level(logging.WARNING, logger="lmopt.lm.openai_compat"):
        out = lm.generate(["retry me"], GenerationConfig())
    assert out[0][0].text == "0:0:retry me"
    assert len(fake_server.requests) == 3
    delays = [r.lm_retry_delay for r in caplog.records]
    assert len(delays) == 2
    # retry k waits min(max, initial * factor**k) * jitter, jitter in [0.5, 1]
    assert 0.005 <= delays[0] <= 0.01 and 0.01 <= delays[1] <= 0.02
    # the jitter comes from the seeded RNG: same seed, same delays
    fake_server.push(429, b"{}", times=2)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lmopt.lm.openai_compat"):
        make(fake_server, seed=3).generate(["retry me"], GenerationConfig())
    assert [r.lm_retry_delay for r in caplog.records] == delays


def test_retry_after_header_raises_the_wait(fake_server, caplog):
    fake_server.push(429, b"{}", headers={"Retry-After": "0.03"})
    with caplog.at_level(logging.WARNING, logger="lmopt.lm.openai_compat"):
        make(fake_server).generate(["x"], GenerationConfig())
    assert caplog.records[0].lm_retry_delay == pytest.approx(0.03)


def test_rate_limit_gives_up_typed(fake_server):
    fake_server.push(429, b'{"error": "busy"}', times=3)
    with pytest.raises(LMRateLimitError, match="HTTP 429") as ei:
        make(fake_server, max_retries=2).generate(["x"], GenerationConfig())
    assert ei.value.status == 429 and ei.value.attempts == 3 and len(fake_server.requests) == 3


def test_5xx_retried_then_typed_error(fake_server):
    fake_server.push(500, b"oops")
    assert make(fake_server).generate(["x"], GenerationConfig())[0][0].text == "0:0:x"
    fake_server.push(503, b"overloaded", times=3)
    with pytest.raises(LMServerError, match="HTTP 503.*overloaded.*gave up after 3 attempts") as ei:
        make(fake_server, max_retries=2).generate(["x"], GenerationConfig())
    assert ei.value.attempts == 3 and len(fake_server.requests) == 2 + 3


def test_timeout_typed_and_retried(fake_server):
    fake_server.push(200, b"{}", delay=1.0)
    with pytest.raises(LMTimeoutError, match="timeout=0.2") as ei:
        make(fake_server, timeout=0.2, max_retries=0).generate(["slow"], GenerationConfig())
    assert ei.value.status is None
    fake_server.push(200, b"{}", delay=1.0)  # slow once, then answered
    out = make(fake_server, timeout=0.2, max_retries=1).generate(["slow"], GenerationConfig())
    assert out[0][0].text == "0:0:slow"


def test_malformed_json_and_missing_fields(fake_server):
    fake_server.push(200, b"{not json at all")
    with pytest.raises(LMResponseError, match="malformed JSON.*not json at all") as ei:
        make(fake_server).generate(["x"], GenerationConfig())
    assert ei.value.attempts == 1 and len(fake_server.requests) == 1  # not retried
    fake_server.push(200, {"result": "no choices here"})
    with pytest.raises(LMResponseError, match="no 'choices' list"):
        make(fake_server).generate(["x"], GenerationConfig())
    fake_server.push(200, {"choices": [{"index": 0, "message": {"role": "assistant"}}]})
    with pytest.raises(LMResponseError, match="'text'"):
        make(fake_server).generate(["x"], GenerationConfig())


def test_request_error_not_retried(fake_server):
    fake_server.push(404, {"error": {"message": "model tiny-model does not exist"}})
    with pytest.raises(LMRequestError, match="HTTP 404.*does not exist.*tiny-model"):
        make(fake_server).generate(["x"], GenerationConfig())
    assert len(fake_server.requests) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_refused_typed():
    port = _free_port()
    lm = OpenAICompatibleLM("m", f"http://127.0.0.1:{port}/v1", max_retries=1, backoff=FAST)
    with pytest.raises(LMConnectionError, match="is the server running") as ei:
        lm.generate(["x"], GenerationConfig())
    assert ei.value.attempts == 2


# -- secrets -----------------------------------------------------------------------------------------
def _echo_auth(headers):
    return ('{"error": {"message": "Incorrect API key provided: ' + headers.get("authorization", "")
            + '"}}').encode()


def test_auth_error_typed_not_retried_and_key_free(fake_server, key_env, caplog, tmp_path):
    fake_server.push(401, _echo_auth)  # the server quotes the header back, as some do
    lm = make(fake_server)
    with caplog.at_level(logging.DEBUG), pytest.raises(LMAuthError) as ei:
        lm.generate(["x"], GenerationConfig())
    assert len(fake_server.requests) == 1
    exc = ei.value
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    assert "HTTP 401" in str(exc) and "LMOPT_TEST_KEY" in str(exc) and "Bearer ***" in str(exc)
    for s in (str(exc), repr(exc), text, repr(exc.args), repr(lm), lm.name, str(vars(lm)), caplog.text):
        assert KEY not in s and KEY[3:15] not in s


def test_key_never_in_logs_pickles_cache_or_recording(fake_server, key_env, caplog, tmp_path):
    fake_server.push(500, _echo_auth, times=2)  # retried server errors quoting the key
    backend = make(fake_server)
    rec_path = tmp_path / "rec.jsonl"
    lm = LM(backend, cache=CallCache(tmp_path / "c.sqlite"), recorder=JsonlRecorder(rec_path))
    with caplog.at_level(logging.DEBUG):
        lm.generate(["x y"], GenerationConfig(n=2, temperature=1.0))
        lm.chat([{"role": "user", "content": "hi"}])
    assert fake_server.requests[-1]["headers"]["authorization"] == f"Bearer {KEY}"
    assert sum(r.name == "lmopt.lm.openai_compat" for r in caplog.records) == 2 and KEY not in caplog.text
    blob = pickle.dumps(backend)
    assert KEY.encode() not in blob
    assert pickle.loads(blob).generate(["x y"], GenerationConfig())[0][0].text == "0:0:x y"
    lm.cache.close()
    lm.recorder.close()
    for f in tmp_path.iterdir():  # database, WAL and recording
        assert KEY.encode() not in f.read_bytes() and b"Bearer" not in f.read_bytes()


def test_require_key_and_bad_arguments(monkeypatch):
    monkeypatch.delenv("LMOPT_TEST_KEY", raising=False)
    with pytest.raises(LMAuthError, match="LMOPT_TEST_KEY is unset"):
        OpenAICompatibleLM("m", api_key_env="LMOPT_TEST_KEY", require_key=True)
    with pytest.raises(ValueError, match="credentials"):
        OpenAICompatibleLM("m", "http://user:pw@localhost:8000/v1")
    with pytest.raises(ValueError, match="http"):
        OpenAICompatibleLM("m", "localhost:8000")
    with pytest.raises(ValueError, match="max_concurrency"):
        OpenAICompatibleLM("m", max_concurrency=0)
    with pytest.raises(ValueError, match="backoff"):
        OpenAICompatibleLM("m", backoff=(1.0, 0.5, 10.0))
    assert OpenAICompatibleLM("gpt-x").name == "openai:gpt-x@api.openai.com"


# -- scoring ---------------------------------------------------------------------------------------
def test_score_from_prompt_logprobs(fake_server):
    lm = make(fake_server)
    s1, s2 = lm.score(["The capital is", "x abc"], [" Paris today", "def"])
    assert s1.logprob == pytest.approx(token_logprob(" Paris") + token_logprob(" today"))
    assert (s1.continuation_tokens, s1.prompt_tokens) == (2, 3)
    # a token straddling the boundary (" abcdef") counts as continuation
    assert s2.logprob == pytest.approx(token_logprob(" abcdef")) and s2.continuation_tokens == 1
    body = fake_server.bodies()[0]
    assert body["echo"] is True and body["logprobs"] == 0 and body["max_tokens"] == 0
    assert LM(lm).score("The capital is", [" Paris today", " Rome"])[1].continuation_tokens == 1


def test_score_without_logprobs_is_a_typed_error(fake_server):
    fake_server.no_logprobs = True
    with pytest.raises(LMNoLogprobsError, match="no prompt log-probs.*vLLM"):
        make(fake_server).score(["a b"], [" c"])
    with pytest.raises(ValueError, match="non-empty"):
        make(fake_server).score([""], [" c"])


def test_record_from_server_then_replay_offline(fake_server, tmp_path):
    backend = make(fake_server)
    rec = tmp_path / "session.jsonl"
    cfg = GenerationConfig(n=2, temperature=0.7, seed=1)
    live = LM(backend, recorder=JsonlRecorder(rec))
    a = live.generate(["one", "two"], cfg)
    b = live.score("q", [" r s"])
    live.recorder.close()
    n_requests = len(fake_server.requests)
    fake_server.stop()
    replay = LM(ReplayBackend(rec, name=backend.name))
    assert replay.generate(["one", "two"], cfg) == a and replay.score("q", [" r s"]) == b
    assert len(fake_server.requests) == n_requests


def test_base_url_without_v1_gets_a_hint(fake_server):
    root = fake_server.url.removesuffix("/v1")
    lm = OpenAICompatibleLM("tiny-model", root, api_key_env="LMOPT_TEST_KEY", backoff=FAST, timeout=5.0)
    # llama-server answers its own native API at /completions: a JSON object without 'choices'
    fake_server.push(200, {"content": "Paris", "stop": True})
    with pytest.raises(LMResponseError, match=r"no 'choices' list; base_url .* has no /v1.*base_url='http.*/v1'"):
        lm.generate(["x"], GenerationConfig())
    fake_server.push(404, {"error": "not found"})
    with pytest.raises(LMRequestError, match="has no /v1"):
        lm.generate(["x"], GenerationConfig())
    fake_server.push(404, {"error": "not found"})  # with /v1 the 404 is about something else: no hint
    with pytest.raises(LMRequestError) as ei:
        make(fake_server).generate(["x"], GenerationConfig())
    assert "has no /v1" not in str(ei.value)


# -- a server that dies in the middle of a batch -----------------------------------------------------
@pytest.mark.parametrize("n", [1, 2])
def test_calls_answered_before_the_server_dies_are_cached_and_charged(fake_server, tmp_path, n):
    prompts = [f"prompt number {i}" for i in range(96)]
    config = GenerationConfig(max_new_tokens=8, temperature=1.0, n=n, seed=3)
    fake_server.delay = 0.01
    fake_server.die_after = 24
    cache = CallCache(tmp_path / "c.sqlite")
    lm = LM(make(fake_server, max_concurrency=8, max_retries=1), cache=cache)  # one chunk of 96
    with pytest.raises(LMConnectionError, match="gave up after 2 attempts"):
        lm.generate(prompts, config)
    assert len(cache) == 24 * n  # every answered request is kept, whatever happened to the rest of its chunk
    usage = lm.usage()["task"]
    assert usage["calls"] == 24
    assert usage["completion_tokens"] == 2 * 24 * n  # the fake server counts words: "3:0:prompt numbe"
    answered = {r["body"]["prompt"] for r in fake_server.requests}

    fake_server.die_after = None  # the server is back: a re-run pays only for what was not done
    before = len(fake_server.requests)
    lm2 = LM(make(fake_server), cache=cache)
    out = lm2.generate(prompts, config)
    resent = [r["body"]["prompt"] for r in fake_server.requests[before:]]
    assert len(resent) == 72 and not answered & set(resent)
    assert lm2.usage()["task"]["cached_calls"] == 24
    assert [c.text for c in out[0]] == [f"3:{j}:{prompts[0][:12]}" for j in range(n)]


def test_scores_answered_before_the_server_dies_are_kept(fake_server, tmp_path):
    fake_server.die_after = 5
    cache = CallCache(tmp_path / "c.sqlite")
    lm = LM(make(fake_server, max_concurrency=4, max_retries=0), cache=cache)
    with pytest.raises(LMConnectionError):
        lm.score([f"the prompt {i}" for i in range(20)], [" one more word"] * 20)
    assert len(cache) == 5 and lm.usage()["task"]["calls"] == 5


def test_other_requests_finish_when_one_is_rejected(fake_server, tmp_path):
    fake_server.push(400, {"error": {"message": "bad prompt"}})  # the first request fails at once
    cache = CallCache(tmp_path / "c.sqlite")
    lm = LM(make(fake_server, max_concurrency=2), cache=cache)
    with pytest.raises(LMRequestError):
        lm.generate([f"p{i}" for i in range(6)], GenerationConfig(max_new_tokens=4))
    assert len(cache) == 5  # the other five were answered and paid: kept, not cancelled


# -- options that change outputs are in the cache key ------------------------------------------------
def test_split_n_is_part_of_the_key_of_multi_sample_requests(fake_server, tmp_path):
    cache = CallCache(tmp_path / "c.sqlite")
    cfg4 = GenerationConfig(max_new_tokens=4, temperature=1.0, n=4, seed=7)
    joint = LM(make(fake_server), cache=cache).generate(["same prompt"], cfg4)[0]
    split = LM(make(fake_server, split_n=True), cache=cache).generate(["same prompt"], cfg4)[0]
    assert [c.text for c in joint] == [f"7:{j}:same prompt" for j in range(4)]
    assert [c.text for c in split] == [f"{7 + j}:0:same prompt" for j in range(4)]
    assert not any(c.cached for c in split)
    cfg1 = GenerationConfig(max_new_tokens=4, temperature=1.0, n=1, seed=7)
    LM(make(fake_server), cache=cache).generate(["one sample"], cfg1)
    again = LM(make(fake_server, split_n=True), cache=cache).generate(["one sample"], cfg1)[0]
    assert again[0].cached  # n=1 requests are the same with or without split_n: the key is shared


def test_split_n_recording_replays_with_split_n(fake_server, tmp_path):
    rec = tmp_path / "rec.jsonl"
    cfg = GenerationConfig(max_new_tokens=4, temperature=1.0, n=3, seed=1)
    backend = make(fake_server, split_n=True)
    with JsonlRecorder(rec) as r:
        want = LM(backend, recorder=r).generate(["p"], cfg)[0]
    got = LM(ReplayBackend(rec, name=backend.name, split_n=True)).generate(["p"], cfg)[0]
    assert [c.text for c in got] == [c.text for c in want]
    with pytest.raises(Exception, match="replay miss"):
        LM(ReplayBackend(rec, name=backend.name)).generate(["p"], cfg)


# -- score support is probed, not assumed ------------------------------------------------------------
def test_score_support_is_probed_once_per_server(fake_server, caplog):
    fake_server.no_logprobs = True
    with caplog.at_level(logging.WARNING):
        assert make(fake_server).supports_score is False
        assert LM(make(fake_server)).supports_score is False  # a second object: no second probe
    assert len(fake_server.bodies("/completions")) == 1
    assert "evaluations in mode 'auto' use generation" in caplog.text
    assert make(fake_server, supports_logprobs=True).supports_score is True  # stated, not probed
    assert len(fake_server.bodies("/completions")) == 1


def test_auto_mode_evaluates_by_generation_on_a_server_without_logprobs(fake_server):
    from lmopt.data import load_task
    from lmopt.prompt.evaluator import evaluate_prompt

    fake_server.no_logprobs = True
    task = load_task("tweets", per_class=2)
    res = evaluate_prompt(LM(make(fake_server)), task, task.instruction, task.examples[:3])
    assert res.mode == "generate"
    probe = make(fake_server.__class__().start())  # a server with log-probs scores
    try:
        assert probe.supports_score is True
    finally:
        probe.close()


def test_errors_are_not_chained_to_the_event_loop_check():
    port = _free_port()
    lm = OpenAICompatibleLM("m", f"http://127.0.0.1:{port}/v1", max_retries=0)
    with pytest.raises(LMConnectionError) as info:
        lm.generate(["x"], GenerationConfig(max_new_tokens=2))
    assert "no running event loop" not in "".join(traceback.format_exception(info.value))


# -- completion tokens of n > 1 answers --------------------------------------------------------------
def test_a_server_whose_usage_counts_one_choice_is_counted_per_choice(fake_server):
    fake_server.llamacpp = True
    cfg = GenerationConfig(max_new_tokens=8, temperature=1.0, n=3, seed=2)
    lm = LM(make(fake_server))
    comps = lm.generate(["count these words"], cfg)[0]
    words = [len(c.text.split()) for c in comps]
    assert [c.completion_tokens for c in comps] == words  # from each choice's token list
    assert lm.usage()["task"]["completion_tokens"] == sum(words)  # not the first choice's count alone
    assert fake_server.bodies("/completions")[0]["logprobs"] == 1
    chat = LM(make(fake_server)).chat([{"role": "user", "content": "a b c"}], cfg)[0]
    assert fake_server.bodies("/chat/completions")[0]["logprobs"] is True
    assert [c.completion_tokens for c in chat] == [len(c.text.split()) for c in chat]
    assert fake_server.gets == ["/v1/models"]  # asked once per server
    LM(make(fake_server)).generate(["one sample"], GenerationConfig(max_new_tokens=8))
    assert "logprobs" not in fake_server.bodies("/completions")[-1]  # n=1: its usage is exact already


def test_usage_scope_total_keeps_the_openai_convention(fake_server):
    fake_server.llamacpp = True  # told otherwise: the total is split, no logprobs asked, no probe
    comps = make(fake_server, usage_scope="total").generate(["count these words"],
                                                           GenerationConfig(temperature=1.0, n=3))[0]
    assert sum(c.completion_tokens for c in comps) == len(comps[0].text.split())
    assert "logprobs" not in fake_server.bodies("/completions")[0] and not fake_server.gets
    with pytest.raises(ValueError, match="usage_scope"):
        make(fake_server, usage_scope="per-choice")
