"""Record a session with JsonlRecorder and replay it offline with ReplayBackend."""

from __future__ import annotations

import json

import pytest

from lmopt.lm import LM, GenerationConfig, ScriptedBackend
from lmopt.lm.cache import CallCache
from lmopt.lm.replay import JsonlRecorder, ReplayBackend, ReplayMissError


def respond(prompt, cfg, j):
    return f"{prompt[-12:][::-1]} #{j} t={cfg.temperature}"


def score_fn(prompt, continuation):
    return -0.5 * len(continuation) - 0.01 * len(prompt)


def session(lm):
    """A little workload that touches every kind of call."""
    sampled = GenerationConfig(n=3, temperature=0.8, seed=4, max_new_tokens=10)
    return {
        "greedy": lm.generate(["Q: 2+2?", "Q: capital of France?"]),
        "sampled": lm.generate("Write a haiku", sampled),
        "chat": lm.chat([{"role": "system", "content": "terse"}, {"role": "user", "content": "hi"}]),
        "score": lm.score("The answer is", [" 4", " five"]),
        "usage": lm.usage(),
    }


def test_record_then_replay_round_trip(tmp_path):
    path = tmp_path / "session.jsonl"
    backend = ScriptedBackend(respond, score_fn, name="scripted-v1")
    with JsonlRecorder(path) as rec:
        recorded = session(LM(backend, recorder=rec))
    calls_while_recording = backend.calls
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == 2 + 3 + 1 + 2 == len({x["key"] for x in lines})
    assert {x["request"]["kind"] for x in lines} == {"generate", "chat", "score"}

    replay = ReplayBackend(path, name="scripted-v1")
    replayed = session(LM(replay))
    assert replayed == recorded  # same texts, token counts, scores and usage
    assert backend.calls == calls_while_recording  # the scripted model was not called again
    assert replay.calls == 2 + 1 + 1 + 2
    sampled = GenerationConfig(n=3, temperature=0.8, seed=4, max_new_tokens=10)
    expected = [respond("Write a haiku", sampled, j) for j in range(3)]
    assert [c.text for c in replayed["sampled"][0]] == expected


def test_replay_miss_names_the_request_and_the_fix(tmp_path):
    path = tmp_path / "s.jsonl"
    with JsonlRecorder(path) as rec:
        LM(ScriptedBackend(respond), recorder=rec).generate("known prompt")
    lm = LM(ReplayBackend(path, name="scripted"))
    with pytest.raises(ReplayMissError, match="no generate request for prompt 'an unseen.*Re-record") as ei:
        lm.generate("an unseen prompt")
    assert ei.value.kind == "generate"
    with pytest.raises(ReplayMissError, match="sample 0"):  # same prompt, other settings
        lm.generate("known prompt", GenerationConfig(max_new_tokens=5))
    with pytest.raises(ReplayMissError, match="no chat request"):
        lm.chat([{"role": "user", "content": "hello"}])
    with pytest.raises(ReplayMissError, match="no score request"):
        lm.score("known prompt", " x")
    wrong = LM(ReplayBackend(path, name="another-model"))
    with pytest.raises(ReplayMissError, match="under another model name than 'another-model'"):
        wrong.generate("known prompt")
    with pytest.raises(FileNotFoundError, match="JsonlRecorder"):
        ReplayBackend(tmp_path / "missing.jsonl", name="scripted")
    with pytest.raises(ValueError, match="name="):
        ReplayBackend(path, name="")


def test_recorder_dedupes_and_resumes(tmp_path):
    path = tmp_path / "s.jsonl"
    backend = ScriptedBackend(respond)
    with JsonlRecorder(path) as rec:
        lm = LM(backend, recorder=rec)
        lm.generate(["a", "b", "a"])
        lm.generate(["a"])  # not cached: the backend answers again, the recording keeps one line
        assert len(rec) == 2
    with JsonlRecorder(path) as rec:  # resumed run appends only new keys
        assert len(rec) == 2
        LM(backend, recorder=rec).generate(["a", "c"])
    assert len(path.read_text().splitlines()) == 3


def test_cache_hits_are_recorded_too(tmp_path):
    cache = CallCache(tmp_path / "c.sqlite")
    backend = ScriptedBackend(respond, score_fn)
    LM(backend, cache=cache).generate(["x", "y"], GenerationConfig(n=2, temperature=1.0))
    LM(backend, cache=cache).score("p", " q")
    calls = backend.calls
    with JsonlRecorder(tmp_path / "s.jsonl") as rec:  # everything is a cache hit now
        lm = LM(backend, cache=cache, recorder=rec)
        hits = lm.generate(["x", "y"], GenerationConfig(n=2, temperature=1.0)), lm.score("p", " q")
    assert backend.calls == calls
    replay = LM(ReplayBackend(tmp_path / "s.jsonl", name="scripted"))
    again = replay.generate(["x", "y"], GenerationConfig(n=2, temperature=1.0)), replay.score("p", " q")
    assert [[c.text for c in o] for o in again[0]] == [[c.text for c in o] for o in hits[0]]
    assert [s.logprob for s in again[1]] == [s.logprob for s in hits[1]]


def test_torn_last_line_is_skipped_and_recording_continues(tmp_path):
    path = tmp_path / "s.jsonl"
    backend = ScriptedBackend(respond)
    with JsonlRecorder(path) as rec:
        LM(backend, recorder=rec).generate(["a", "b"])
    with open(path, "a") as f:
        f.write('{"key": "abc", "request": {"kind": "gen')  # a writer killed mid-line
    with pytest.warns(UserWarning, match="incomplete last line"):
        assert len(ReplayBackend(path, name="scripted")) == 2
    with pytest.warns(UserWarning), JsonlRecorder(path) as rec:  # resuming cuts the torn line off
        LM(backend, recorder=rec).generate(["c"])
    assert len(path.read_text().splitlines()) == 3
    replay = LM(ReplayBackend(path, name="scripted"))
    assert [o[0].text for o in replay.generate(["a", "b", "c"])] == [o[0].text for o in
                                                                      LM(backend).generate(["a", "b", "c"])]


def test_torn_line_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"key": "k", "request": {}, "response": {}}\n{"broken\n{"key": "k2", "request": {}, '
                    '"response": {}}\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        ReplayBackend(path, name="m")
    path.write_text('{"key": 1}\n')
    with pytest.raises(ValueError, match="not a recorded call"):
        ReplayBackend(path, name="m")
