"""CallCache: hits and misses, persistence, LM integration, threads, processes and SIGKILL mid-write."""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading

import pytest

from lmopt.lm import LM, GenerationConfig, ScriptedBackend
from lmopt.lm.cache import CacheError, CallCache
from lmopt.lm.keys import request_key


def test_hit_miss_len_clear_stats(tmp_path):
    with CallCache(tmp_path / "c.sqlite") as c:
        assert c.get("a") is None and len(c) == 0
        c.put("a", {"text": "héllo ✓", "prompt_tokens": 3})
        c.put("b", {"logprob": -math.inf, "continuation_tokens": 1})
        assert c.get("a") == {"text": "héllo ✓", "prompt_tokens": 3}
        assert c.get("b")["logprob"] == -math.inf
        c.put("a", {"text": "replaced"})
        assert c.get("a") == {"text": "replaced"} and len(c) == 2 and "a" in c and "zz" not in c
        assert c.stats() == {"hits": 3, "misses": 1, "entries": 2}
        c.clear()
        assert len(c) == 0 and c.get("a") is None
    with pytest.raises(CacheError, match="closed"):
        c.get("a")


def test_persists_across_instances_in_wal_mode(tmp_path):
    path = tmp_path / "sub" / "calls.sqlite"
    with CallCache(path) as c:
        c.put("k", {"v": 1})
    with CallCache(path) as c:
        assert c.get("k") == {"v": 1}
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_default_path_under_lmopt_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LMOPT_CACHE", str(tmp_path / "home"))
    with CallCache() as c:
        assert c.path == tmp_path / "home" / "calls.sqlite" and c.path.exists()


def test_bad_inputs_have_clear_errors(tmp_path):
    with CallCache(tmp_path / "c.sqlite") as c:
        with pytest.raises(TypeError, match="must be dicts"):
            c.put("k", ["not", "a", "dict"])
        with pytest.raises(TypeError, match="not JSON-serialisable"):
            c.put("k", {"x": object()})
        with pytest.raises(TypeError, match="non-empty strings"):
            c.get("")
        assert len(c) == 0
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(CacheError, match="not a usable lmopt call cache.*delete the file"):
        CallCache(junk)
    with pytest.raises(ValueError, match="file path"):
        CallCache(":memory:")
    with pytest.raises(ValueError, match="is a directory"):
        CallCache(tmp_path)


def test_lm_uses_cache_across_runs_and_keeps_samples_distinct(tmp_path):
    calls = []

    def respond(prompt, cfg, j):
        calls.append((prompt, j))
        return f"{prompt} sample {j}"

    path = tmp_path / "c.sqlite"
    cfg = GenerationConfig(n=3, temperature=0.9, seed=2)
    first = LM(ScriptedBackend(respond), cache=CallCache(path)).generate(["p1", "p2"], cfg)
    assert [c.text for c in first[0]] == ["p1 sample 0", "p1 sample 1", "p1 sample 2"]
    backend = ScriptedBackend(respond)
    lm = LM(backend, cache=CallCache(path))
    second = lm.generate(["p1", "p2"], cfg)
    assert backend.calls == 0 and all(c.cached for o in second for c in o)
    assert [[c.text for c in o] for o in second] == [[c.text for c in o] for o in first]
    assert len(lm.cache) == 6  # 2 prompts x 3 samples, each under its own key
    key = request_key("generate", "scripted", {"prompt": "p1", "config": cfg.key_fields()}, 1)
    assert lm.cache.get(key)["text"] == "p1 sample 1"
    # another seed is another request
    lm.generate(["p1"], GenerationConfig(n=3, temperature=0.9, seed=3))
    assert backend.calls == 1 and len(lm.cache) == 9
    assert lm.usage()["task"]["cached_calls"] == 2


def test_threads_share_one_cache(tmp_path):
    cache = CallCache(tmp_path / "c.sqlite")
    errors = []

    def work(t):
        try:
            for i in range(40):
                cache.put(f"{t}-{i}", {"t": t, "i": i})
                assert cache.get(f"{t}-{i}") == {"t": t, "i": i}
        except Exception as exc:  # collected: pytest does not see exceptions in threads
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == [] and len(cache) == 8 * 40
    assert all(cache.get(f"{t}-{i}") == {"t": t, "i": i} for t in range(8) for i in range(40))
    cache.close()


_WRITER = textwrap.dedent("""
    import hashlib, sys
    from lmopt.lm.cache import CallCache
    path, tag, n, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    c = CallCache(path)
    for i in range(n):
        blob = (f"{tag}-{i}-" * (size // 8 + 1))[:size]
        c.put(f"{tag}-{i}", {"i": i, "blob": blob, "sha": hashlib.sha256(blob.encode()).hexdigest()})
        print(i, flush=True)
""")


def _writer(path, tag, n, size):
    return subprocess.Popen([sys.executable, "-c", _WRITER, str(path), tag, str(n), str(size)],
                            stdout=subprocess.PIPE, text=True)


def _check_complete(path):
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = conn.execute("SELECT key, value FROM calls").fetchall()
    conn.close()
    for key, value in rows:
        v = json.loads(value)
        assert hashlib.sha256(v["blob"].encode()).hexdigest() == v["sha"], key
        assert key.endswith(f"-{v['i']}")
    return {k for k, _ in rows}


def test_processes_write_concurrently(tmp_path):
    path = tmp_path / "c.sqlite"
    CallCache(path).close()
    procs = [_writer(path, f"p{k}", 60, 2000) for k in range(4)]
    reader = CallCache(path)
    seen = 0
    while any(p.poll() is None for p in procs):
        seen = max(seen, len(reader))  # reading while the others write
    for p in procs:
        p.communicate(timeout=60)
        assert p.returncode == 0
    assert len(reader) == 240 and len(reader) >= seen
    keys = _check_complete(path)
    assert keys == {f"p{k}-{i}" for k in range(4) for i in range(60)}
    reader.close()


_KILLED_WRITER = textwrap.dedent("""
    import hashlib, os, signal, sys
    from lmopt.lm.cache import CallCache
    path, after, at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    c = CallCache(path)
    def put(i):
        blob = (f"k-{i}-" * 50_000)[:400_000]
        c.put(f"k-{i}", {"i": i, "blob": blob, "sha": hashlib.sha256(blob.encode()).hexdigest()})
    for i in range(after):
        put(i)
    ticks = [0]
    def die_inside_the_write():  # SQLite calls this while executing statements of the next put
        ticks[0] += 1
        if ticks[0] == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return 0
    c._connection().set_progress_handler(die_inside_the_write, 1)
    put(after)
    print("not killed", ticks[0], flush=True)
""")


def _run_killed_writer(path, at):
    return subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(path), "2", str(at)], capture_output=True,
                          text=True, timeout=60)


def test_sigkill_inside_a_write_leaves_only_complete_entries(tmp_path):
    """Killed at chosen points spread over the third write (its SQLite progress callbacks): deterministic."""
    counted = _run_killed_writer(tmp_path / "count.sqlite", 0)  # at=0: never killed; prints the callbacks
    n = int(counted.stdout.split()[-1])
    for frac in (0.05, 0.25, 0.5, 0.75, 0.9, 1.0):
        path = tmp_path / f"c-{frac}.sqlite"
        proc = _run_killed_writer(path, max(1, round(frac * n)))
        assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr  # the kill landed inside the write
        keys = _check_complete(path)  # every entry present is whole (its hash matches)
        assert {"k-0", "k-1"} <= keys <= {"k-0", "k-1", "k-2"}, frac  # the acknowledged writes survived
        with CallCache(path) as c:  # still opens and accepts writes
            assert len(c) == len(keys)
            c.put("after-kill", {"ok": True})
            assert c.get("after-kill") == {"ok": True}


def _child_put(cache, key):
    cache.put(key, {"from": "child"})


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_forked_child_opens_its_own_connection(tmp_path):
    cache = CallCache(tmp_path / "c.sqlite")
    cache.put("parent", {"from": "parent"})
    proc = multiprocessing.get_context("fork").Process(target=_child_put, args=(cache, "child"))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0
    assert cache.get("child") == {"from": "child"} and cache.get("parent") == {"from": "parent"}
    cache.close()
