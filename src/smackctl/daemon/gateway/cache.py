"""The response cache: answers of deterministic requests, replayed (off by default).

On per profile (``cache: {ttl: 1h, max_size: 256MiB, max_entry: 8MiB}``) or per model
(``cache: true``, with the profile's settings or the defaults; ``cache: false`` keeps one model
out). Only a request whose answer is the same every time is kept: temperature 0 (in the request
or the profile's defaults) or a fixed ``seed``, one choice. The key is a SHA-256 of the
effective request (the body with the profile's ``defaults`` filled in, as the runner gets it:
its route, messages, system prompt, sampling options, tools, response format, stream options;
all but ``stream`` and fields that do not change the answer) and of the model's identity (its
file's sha256 and its load parameters), so another file, another ``n_ctx`` or defaults changed
by a reload never hit.

A streamed answer is kept as the bytes of its stream and replayed as they were, unless it
carried an error event (wherever its chunks were split) or grew past ``max_entry``; a plain
one as its JSON. Entries live in ``cache.db`` in the state dir (SQLite, mode 0600), expire
after ``ttl`` (purged at open, when read, and once a minute), and the oldest go when the total
passes ``max_size``. A damaged ``cache.db`` is set aside (``cache.db.corrupt-…``) and a new one
started; while none can be opened, requests are answered uncached. ``Cache-Control: no-cache``
on a request: neither read nor written. ``X-Smackctl-Cache: hit | miss`` says which it was.
``cached.py`` puts it in front of the local models (and shares it with a fleet).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from smackctl.catalog import hashed_sha256, known_sha256
from smackctl.config import CacheSettings, ModelSpec
from smackctl.daemon.answers import with_defaults
from smackctl.paths import private_db

__all__ = ["CACHED_ROUTES", "Cache", "deterministic", "kept_stream", "settings_for"]

#: the routes whose answers the response cache keeps
CACHED_ROUTES = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/messages", "/v1/responses",
     "/v1/embeddings"}
)  # fmt: skip

log = logging.getLogger("smackctl.cache")

#: request fields that change nothing in the answer's content (``stream_options`` does: a
#: client that asked for ``include_usage`` gets one more event)
_NOT_IN_KEY = frozenset({"stream", "user", "metadata", "store", "service_tier",
                         "prompt_cache_key", "safety_identifier"})  # fmt: skip
#: expired entries are purged at open, each when it is read, and all at most this often
PURGE_EVERY = 60.0
#: after the file could not be opened, it is tried again this much later (uncached meanwhile)
RETRY_OPEN = 60.0


def settings_for(profile_cache: CacheSettings | None, spec: ModelSpec) -> CacheSettings | None:
    """The cache's settings when ``spec``'s answers are cached, else None."""
    if spec.cache is False or spec.remote:
        return None
    if profile_cache is None and spec.cache is not True:
        return None
    return profile_cache or CacheSettings()


def deterministic(body: dict[str, Any], defaults: dict[str, Any]) -> bool:
    if (body.get("n") or 1) != 1:
        return False
    temperature = body.get("temperature", defaults.get("temperature"))
    seed = body.get("seed", defaults.get("seed"))
    return temperature == 0 or seed is not None


def _damaged(exc: BaseException) -> bool:
    """A file that is not a database, or a damaged one (not a lock, not a full disk)."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    return code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


class Cache:
    """``cache.db``: entries by key. A fault of the file is never a failed request: a read
    that fails is a miss, a write that fails is not kept, a damaged file is set aside."""

    def __init__(
        self,
        path: Path,
        now: Callable[[], float] = time.time,
        on_notice: Callable[[str], None] | None = None,
    ) -> None:
        self.path, self.now, self.on_notice = path, now, on_notice
        self.hits = self.misses = 0
        self.db: sqlite3.Connection | None = None
        self._purge_at = 0.0
        self._retry_at = 0.0
        self._said: str | None = None  # the last fault logged, so a full disk is said once
        self._connection()

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    # -- the file ------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        private_db(self.path)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=0.1)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, model TEXT, "
                "created REAL, expires REAL, size INTEGER, media_type TEXT, content BLOB)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS entries_expires ON entries(expires)")
            db.execute("CREATE INDEX IF NOT EXISTS entries_created ON entries(created)")
            now = self.now()
            db.execute("DELETE FROM entries WHERE expires < ?", (now,))
            self._purge_at = now + PURGE_EVERY
        except BaseException:
            db.close()
            raise
        return db

    def _connection(self) -> sqlite3.Connection | None:
        """The open file; None while it cannot be opened (tried again ``RETRY_OPEN`` later)."""
        if self.db is None and self.now() >= self._retry_at:
            try:
                self.db = self._connect()
                self._said = None
            except (sqlite3.Error, OSError) as exc:
                self._fault("opened", exc)
        return self.db

    def _fault(self, doing: str, exc: sqlite3.Error | OSError) -> None:
        """A damaged file is set aside and a new one started; any other fault (a lock, a full
        disk) leaves this use uncached, said once."""
        if _damaged(exc):
            self.close()
            self._set_aside(exc)
            try:
                self.db = self._connect()
                return
            except (sqlite3.Error, OSError) as again:
                exc, doing = again, "opened"
        if doing == "opened":
            self._retry_at = self.now() + RETRY_OPEN
        why = f"the response cache ({self.path}) cannot be {doing}: {exc}"
        if why != self._said:
            self._said = why
            log.warning("%s; requests are answered uncached meanwhile", why)

    def _set_aside(self, exc: BaseException) -> None:
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self.path}{suffix}", f"{aside}{suffix}")
        msg = (
            f"the response cache {self.path} could not be read ({exc}); it was kept as "
            f"{aside} and a new one started: answers are cached afresh"
        )
        log.warning("%s", msg)
        if self.on_notice is not None:
            self.on_notice(msg)

    # -- the key --------------------------------------------------------------------------

    async def identity(self, spec: ModelSpec, file: Path) -> str:
        """The model's identity: its file's sha256 (hashed once per file, size and mtime;
        the profile's ``sha256`` when it gives one) and its load parameters."""
        digest = spec.sha256 or hashed_sha256(file) or await asyncio.to_thread(known_sha256, file)
        return hashlib.sha256(json.dumps([digest, repr(spec.load_key())]).encode()).hexdigest()

    @staticmethod
    def key(route: str, body: dict[str, Any], defaults: dict[str, Any], identity: str) -> str:
        """The key of the request the runner gets: ``body`` with the profile's ``defaults``
        filled in (a reload that changes them changes the key)."""
        effective = with_defaults(body, defaults)
        asked = {k: v for k, v in effective.items() if k not in _NOT_IN_KEY and k != "model"}
        canonical = json.dumps(
            [route, bool(body.get("stream")), asked, identity],
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    # -- entries --------------------------------------------------------------------------

    def get(self, key: str, count: bool = True) -> tuple[bytes, str] | None:
        """The answer kept for ``key`` (counted as a hit or a miss unless ``count`` is off:
        the caller counts it once it has looked elsewhere too)."""
        found = None
        db = self._connection()
        if db is not None:
            now = self.now()
            try:
                if now >= self._purge_at:
                    db.execute("DELETE FROM entries WHERE expires < ?", (now,))
                    self._purge_at = now + PURGE_EVERY
                row = db.execute(
                    "SELECT content, media_type, expires FROM entries WHERE key = ?", (key,)
                ).fetchone()
                if row is not None and row[2] < now:
                    db.execute("DELETE FROM entries WHERE key = ?", (key,))
                elif row is not None:
                    found = (bytes(row[0]), str(row[1]))
            except sqlite3.Error as exc:
                self._fault("read", exc)
        if count and found is None:
            self.misses += 1
        elif count:
            self.hits += 1
        return found

    def put(
        self,
        key: str,
        model: str,
        content: bytes,
        media_type: str,
        settings: CacheSettings,
        ttl: float | None = None,
    ) -> bool:
        """Keep an answer (not one past ``max_entry``) for ``settings.ttl``, or ``ttl`` when
        it is shorter; the oldest go past ``max_size``."""
        if len(content) > settings.max_entry:
            return False
        db = self._connection()
        if db is None:
            return False
        now = self.now()
        try:
            db.execute(
                "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    model,
                    now,
                    now + (settings.ttl if ttl is None else min(ttl, settings.ttl)),
                    len(content),
                    media_type,
                    content,
                ),
            )
            db.execute("DELETE FROM entries WHERE expires < ?", (now,))
            total = db.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0]
            while total > settings.max_size:
                oldest = db.execute(
                    "SELECT key, size FROM entries ORDER BY created LIMIT 1"
                ).fetchone()
                if oldest is None:
                    break
                db.execute("DELETE FROM entries WHERE key = ?", (oldest[0],))
                total -= oldest[1]
        except sqlite3.Error as exc:  # a cache that cannot write is a cache that misses
            self._fault("written", exc)
            return False
        return True

    def stats(self) -> dict[str, Any]:
        rows: list[Any] = []
        db = self._connection()
        if db is not None:
            try:
                rows = db.execute(
                    "SELECT model, COUNT(*), COALESCE(SUM(size), 0) FROM entries "
                    "WHERE expires >= ? GROUP BY model ORDER BY model",
                    (self.now(),),
                ).fetchall()
            except sqlite3.Error as exc:
                self._fault("read", exc)
        return {
            "hits": self.hits,
            "misses": self.misses,
            "entries": sum(r[1] for r in rows),
            "bytes": sum(r[2] for r in rows),
            "models": [{"model": r[0], "entries": r[1], "bytes": r[2]} for r in rows],
            "path": str(self.path),
        }

    def clear(self, model: str | None = None) -> int:
        db = self._connection()
        if db is None:
            return 0
        try:
            if model is None:
                return db.execute("DELETE FROM entries").rowcount
            return db.execute("DELETE FROM entries WHERE model = ?", (model,)).rowcount
        except sqlite3.Error as exc:
            self._fault("written", exc)
            return 0


def kept_stream(
    chunks: AsyncIterator[bytes],
    keep: Callable[[bytes], object],
    max_entry: int,
) -> AsyncIterator[bytes]:
    """``chunks`` passed on as they come; once over, ``keep`` gets the whole stream, unless
    it carried an error event (looked for in the whole, so a split event is seen) or grew
    past ``max_entry`` (then it is no longer held in memory either)."""

    async def kept() -> AsyncIterator[bytes]:
        got: bytearray | None = bytearray()
        try:
            async for chunk in chunks:
                if got is not None:
                    got += chunk
                    if len(got) > max_entry:
                        got = None
                yield chunk
        finally:  # a client gone mid-way: the relay below lets its runner's slot go now
            if (close := getattr(chunks, "aclose", None)) is not None:
                await close()
        if got is not None and b'"error"' not in got:
            keep(bytes(got))

    return kept()
