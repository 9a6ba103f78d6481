"""Response cache keyed on the SHA-256 of the canonical request content.

The key covers provider name, model, messages, temperature, max_tokens and the response schema;
``LLMRequest.metadata`` is left out (it is for tracing). Stores are pluggable: anything with
``get(key) -> dict | None`` and ``put(key, value: dict)``. Shipped: in-memory, SQLite and
JSON-lines, the last two under a given directory.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ml.llm.types import LLMRequest


def request_key(provider: str, model: str, request: LLMRequest) -> str:
    """SHA-256 hex digest of the canonical JSON of (provider, model, request content)."""
    payload = {"provider": provider, "model": model, **request.canonical()}
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@runtime_checkable
class ResponseCache(Protocol):
    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(self, key: str, value: dict[str, Any]) -> None: ...


class MemoryCache:
    def __init__(self) -> None:
        self._data: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            value = self._data.get(key)
            return None if value is None else json.loads(json.dumps(value))

    def put(self, key: str, value: dict[str, Any]) -> None:
        with self._lock:
            self._data[key] = json.loads(json.dumps(value))


class SQLiteCache:
    """``<directory>/llm_cache.sqlite``: one row per key; safe across threads and processes."""

    def __init__(self, directory: str | Path, filename: str = "llm_cache.sqlite") -> None:
        self.path = Path(directory) / filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute(
                "CREATE TABLE IF NOT EXISTS llm_responses ("
                " key TEXT PRIMARY KEY, created_at REAL NOT NULL, response TEXT NOT NULL)"
            )

    def __repr__(self) -> str:
        return f"SQLiteCache({str(self.path)!r})"

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30)
        con.execute("PRAGMA journal_mode=WAL")
        return con

    def __len__(self) -> int:
        con = self._connect()
        try:
            return con.execute("SELECT COUNT(*) FROM llm_responses").fetchone()[0]
        finally:
            con.close()

    def get(self, key: str) -> dict[str, Any] | None:
        con = self._connect()
        try:
            row = con.execute("SELECT response FROM llm_responses WHERE key = ?", (key,)).fetchone()
        finally:
            con.close()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, value: dict[str, Any]) -> None:
        con = self._connect()
        try:
            with con:
                con.execute(
                    "INSERT OR REPLACE INTO llm_responses (key, created_at, response) VALUES (?, ?, ?)",
                    (key, time.time(), json.dumps(value, sort_keys=True)),
                )
        finally:
            con.close()


class JsonlCache:
    """``<directory>/llm_cache.jsonl``: append-only lines ``{"key", "response"}``; last line wins.

    The file is read once when the cache is opened; a line that is not valid JSON raises (with its
    line number) rather than being skipped.
    """

    def __init__(self, directory: str | Path, filename: str = "llm_cache.jsonl") -> None:
        self.path = Path(directory) / filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._index: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            with self.path.open(encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    try:
                        entry = json.loads(line)
                        self._index[entry["key"]] = entry["response"]
                    except (json.JSONDecodeError, KeyError, TypeError) as exc:
                        raise ValueError(f"{self.path}:{lineno}: not a cache entry: {exc}") from exc

    def __repr__(self) -> str:
        return f"JsonlCache({str(self.path)!r})"

    def __len__(self) -> int:
        return len(self._index)

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            value = self._index.get(key)
        return None if value is None else json.loads(json.dumps(value))

    def put(self, key: str, value: dict[str, Any]) -> None:
        line = json.dumps({"key": key, "response": value}, sort_keys=True)
        with self._lock:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(line + "\n")
            self._index[key] = json.loads(json.dumps(value))


def open_cache(backend: str | None, directory: str | Path | None) -> ResponseCache | None:
    """``backend`` is ``sqlite``, ``jsonl``, ``memory`` or None/``none`` (no cache)."""
    from ml.llm.errors import ConfigError

    if backend in (None, "", "none"):
        return None
    if backend == "memory":
        return MemoryCache()
    if directory is None:
        raise ConfigError(f"cache backend {backend!r} needs a cache_dir")
    if backend == "sqlite":
        return SQLiteCache(directory)
    if backend == "jsonl":
        return JsonlCache(directory)
    raise ConfigError(f"cache backend must be sqlite, jsonl, memory or none; got {backend!r}")
