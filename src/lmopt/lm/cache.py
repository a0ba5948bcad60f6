"""A persistent, content-addressed call cache in SQLite.

Keys come from :func:`lmopt.lm.keys.request_key` (model, prompt/messages, generation fields, sample index),
values are JSON objects (one completion or one score). The database runs in WAL mode with a busy timeout,
so several threads and processes may read and write it at once, and every ``put`` is one transaction:
a process killed mid-write (even with SIGKILL) leaves only complete entries behind.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
_BUSY_TIMEOUT_MS = 60_000


class CacheError(RuntimeError):
    """The cache file cannot be used (not a database, a newer schema, closed cache...)."""


class CallCache:
    """Persistent key → JSON-object store for LM calls (hits cost nothing).

    Args:
        path: the SQLite file; default ``lmopt.assets.cache_dir() / "calls.sqlite"`` (``$LMOPT_CACHE`` or
            ``~/.cache/lmopt``). Its folder is created if needed. Use one file per project if you want to
            delete caches independently; sharing one file between runs and processes is safe.

    One connection per process is shared by its threads behind a lock (SQLite serialises writers anyway);
    a forked child opens its own connection on first use. ``stats()`` reports hits and misses of this
    object since it was opened.

    >>> import tempfile, os
    >>> with CallCache(os.path.join(tempfile.mkdtemp(), "c.sqlite")) as c:
    ...     c.put("k", {"text": "hi"})
    ...     c.get("k"), c.get("other"), len(c)
    ({'text': 'hi'}, None, 1)
    """

    def __init__(self, path: str | Path | None = None) -> None:
        if path is None:
            from lmopt.assets import cache_dir

            path = cache_dir() / "calls.sqlite"
        if not isinstance(path, (str, Path)) or str(path) in ("", ":memory:") \
                or str(path).startswith("file:"):
            raise ValueError(f"CallCache needs a file path, got {path!r}; for a throw-away cache use a "
                             "file in a temporary directory")
        self.path = Path(path).expanduser()
        if self.path.is_dir():
            raise ValueError(f"CallCache path {self.path} is a directory; pass a file such as "
                             f"{self.path / 'calls.sqlite'}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._closed = False
        self._hits = 0
        self._misses = 0
        self._connection()  # open now so that a bad file fails at construction

    def __repr__(self) -> str:
        return f"CallCache({str(self.path)!r})"

    # -- connection -------------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise CacheError(f"the call cache {self.path} is closed; create a new CallCache to use it again")
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        # first use, or first use in a forked child: never reuse the parent's connection
        conn = sqlite3.connect(str(self.path), timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=False)
        try:
            self._init_schema(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise CacheError(f"the call cache {self.path} stayed locked for "
                                 f"{_BUSY_TIMEOUT_MS // 1000} s while opening; is another process holding a "
                                 "long write transaction on it?") from exc
            raise CacheError(f"{self.path} is not a usable lmopt call cache ({exc}); delete the file to "
                             "start an empty cache, or pass another path") from exc
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        # switching to WAL needs a short exclusive lock; retry it while other processes open the same file
        deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        if str(mode).lower() != "wal":
            raise sqlite3.DatabaseError(f"cannot switch the database to WAL mode (got {mode!r}); "
                                        "the file system may not support shared memory (network drive?)")
        conn.execute("PRAGMA synchronous = NORMAL")  # with WAL: atomic and consistent after any crash
        conn.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, value TEXT NOT NULL, "
                     "created REAL NOT NULL)")
        conn.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        version = conn.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()[0]
        if version != str(SCHEMA_VERSION):
            raise sqlite3.DatabaseError(f"cache schema version {version}, this lmopt reads version "
                                        f"{SCHEMA_VERSION}")

    # -- mapping API ------------------------------------------------------------------------------
    def get(self, key: str) -> dict[str, Any] | None:
        """The stored JSON object for ``key``, or ``None`` on a miss."""
        _check_key(key)
        with self._lock:
            row = self._connection().execute("SELECT value FROM calls WHERE key = ?", (key,)).fetchone()
            if row is None:
                self._misses += 1
                return None
            self._hits += 1
        value = json.loads(row[0])
        if not isinstance(value, dict):
            raise CacheError(f"cache entry {key[:16]}… in {self.path} is not a JSON object; "
                             "delete the cache file")
        return value

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Store ``value`` (a JSON-serialisable dict) under ``key``, replacing any earlier value.

        The write is one transaction: it is either fully there or not there at all.
        """
        _check_key(key)
        if not isinstance(value, dict):
            raise TypeError(f"cache values must be dicts, got {type(value).__name__}")
        try:
            blob = json.dumps(value, sort_keys=True, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"cache value for key {key[:16]}… is not JSON-serialisable: {exc}") from exc
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("INSERT OR REPLACE INTO calls (key, value, created) VALUES (?, ?, ?)",
                             (key, blob, time.time()))
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        with self._lock:
            row = self._connection().execute("SELECT 1 FROM calls WHERE key = ?", (key,)).fetchone()
        return row is not None

    def __len__(self) -> int:
        with self._lock:
            return int(self._connection().execute("SELECT COUNT(*) FROM calls").fetchone()[0])

    def clear(self) -> None:
        """Delete every entry (the file stays)."""
        with self._lock:
            self._connection().execute("DELETE FROM calls")

    def stats(self) -> dict[str, int]:
        """``{"hits", "misses", "entries"}``: lookups by this object since it was opened, and the size."""
        n = len(self)
        with self._lock:
            return {"hits": self._hits, "misses": self._misses, "entries": n}

    # -- lifetime ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the connection; later use raises :class:`CacheError`. Closing twice is fine."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
            self._closed = True

    def __enter__(self) -> CallCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:  # picklable: the copy reopens the same file
        return {"path": str(self.path)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]


def _check_key(key: object) -> None:
    if not isinstance(key, str) or not key:
        raise TypeError(f"cache keys must be non-empty strings (see lmopt.lm.keys.request_key), got {key!r}")
