"""The response cache: answers of deterministic requests, replayed (off by default).

On per profile (``cache: {ttl: 1h, max_size: 256MiB}``) or per model (``cache: true``, with
the profile's settings or the defaults; ``cache: false`` keeps one model out). Only a request
whose answer is the same every time is kept: temperature 0 (in the request or the profile's
defaults) or a fixed ``seed``, one choice. The key is a SHA-256 of the canonical request (its
route, messages, system prompt, sampling options, tools: the whole body but ``stream`` and
fields that do not change the answer) and of the model's identity (its file's sha256 and its
load parameters), so another file or another ``n_ctx`` never hits.

A streamed answer is kept as the bytes of its stream and replayed as they were; a plain one
as its JSON. Entries live in ``cache.db`` in the state dir (SQLite), expire after ``ttl``, and
the oldest go when the total passes ``max_size``. ``Cache-Control: no-cache`` on a request:
neither read nor written. ``X-Smackctl-Cache: hit | miss`` says which it was.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

from starlette.responses import Response, StreamingResponse

from smackctl.catalog import hashed_sha256, known_sha256
from smackctl.config import CacheSettings, ModelSpec

from .metrics import Metrics
from .registry import Managed
from .scheduler import Scheduler

__all__ = ["CACHED_ROUTES", "Cache", "Cached", "deterministic", "settings_for"]

#: the routes whose answers the response cache keeps
CACHED_ROUTES = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/messages", "/v1/responses",
     "/v1/embeddings"}
)  # fmt: skip

log = logging.getLogger("smackctl.cache")

#: request fields that change nothing in the answer's content
_NOT_IN_KEY = frozenset({"stream", "stream_options", "user", "metadata", "store",
                         "service_tier", "prompt_cache_key", "safety_identifier"})  # fmt: skip


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


class Cache:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, model TEXT, "
            "created REAL, expires REAL, size INTEGER, media_type TEXT, content BLOB)"
        )
        self.hits = self.misses = 0

    def close(self) -> None:
        self.db.close()

    # -- the key --------------------------------------------------------------------------

    async def identity(self, spec: ModelSpec, file: Path) -> str:
        """The model's identity: its file's sha256 (hashed once per file, size and mtime;
        the profile's ``sha256`` when it gives one) and its load parameters."""
        digest = spec.sha256 or hashed_sha256(file) or await asyncio.to_thread(known_sha256, file)
        return hashlib.sha256(json.dumps([digest, repr(spec.load_key())]).encode()).hexdigest()

    @staticmethod
    def key(route: str, body: dict[str, Any], identity: str) -> str:
        asked = {k: v for k, v in body.items() if k not in _NOT_IN_KEY and k != "model"}
        canonical = json.dumps(
            [route, bool(body.get("stream")), asked, identity],
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    # -- entries --------------------------------------------------------------------------

    def get(self, key: str) -> tuple[bytes, str] | None:
        row = self.db.execute(
            "SELECT content, media_type, expires FROM entries WHERE key = ?", (key,)
        ).fetchone()
        if row is None or row[2] < time.time():
            self.misses += 1
            return None
        self.hits += 1
        return bytes(row[0]), str(row[1])

    def put(
        self, key: str, model: str, content: bytes, media_type: str, ttl: int, max_size: int
    ) -> None:
        now = time.time()
        try:
            self.db.execute(
                "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, model, now, now + ttl, len(content), media_type, content),
            )
            self.db.execute("DELETE FROM entries WHERE expires < ?", (now,))
            total = self.db.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0]
            while total > max_size:
                oldest = self.db.execute(
                    "SELECT key, size FROM entries ORDER BY created LIMIT 1"
                ).fetchone()
                if oldest is None:
                    break
                self.db.execute("DELETE FROM entries WHERE key = ?", (oldest[0],))
                total -= oldest[1]
        except sqlite3.Error as exc:  # a cache that cannot write is a cache that misses
            log.warning("the response cache (%s) cannot be written: %s", self.path, exc)

    def stats(self) -> dict[str, Any]:
        rows = self.db.execute(
            "SELECT model, COUNT(*), COALESCE(SUM(size), 0) FROM entries "
            "WHERE expires >= ? GROUP BY model ORDER BY model",
            (time.time(),),
        ).fetchall()
        return {
            "hits": self.hits,
            "misses": self.misses,
            "entries": sum(r[1] for r in rows),
            "bytes": sum(r[2] for r in rows),
            "models": [{"model": r[0], "entries": r[1], "bytes": r[2]} for r in rows],
            "path": str(self.path),
        }

    def clear(self, model: str | None = None) -> int:
        if model is None:
            return self.db.execute("DELETE FROM entries").rowcount
        return self.db.execute("DELETE FROM entries WHERE model = ?", (model,)).rowcount


class Cached:
    """The cache in front of the proxy's local path: the key of a request (None: not
    cached), a hit as a response, a miss kept once it is over."""

    def __init__(self, scheduler: Scheduler, metrics: Metrics | None) -> None:
        self.scheduler, self.metrics = scheduler, metrics
        self.cache: Cache | None = None  # opened on the first cached request

    def open(self) -> Cache:
        if self.cache is None:
            self.cache = Cache(self.scheduler.store.path.with_name("cache.db"))
        return self.cache

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()

    async def key(self, m: Managed, path: str, body: dict[str, Any]) -> str | None:
        """The cache's key for this request, or None when it is not cached."""
        settings = settings_for(self.scheduler.profile.cache, m.spec)
        if settings is None or path not in CACHED_ROUTES:
            return None
        if not deterministic(body, self.scheduler.profile.defaults.model_dump()):
            return None
        file = self.scheduler.registry.model_file(m)
        if not file.is_file():
            return None  # pulled on its first load: cached from the next request on
        identity = await self.open().identity(m.spec, file)
        return Cache.key(path, body, identity)

    def hit(self, key: str, request_id: str) -> Response | None:
        found = self.open().get(key)
        if self.metrics is not None:
            self.metrics.cache.labels("hit" if found else "miss").inc()
        if found is None:
            return None
        content, media_type = found
        return Response(
            content,
            media_type=media_type,
            headers={"X-Smackctl-Cache": "hit", "X-Request-Id": request_id},
        )

    def keep(self, answer: Response, key: str, m: Managed) -> None:
        """Store a 200 ``answer``: a plain one now (a miss pays the SQLite write, ~0.5 ms, so
        that the same request sent right after it hits); a stream as its bytes once it
        ended without an error event."""
        if answer.status_code != 200:
            return
        answer.headers["X-Smackctl-Cache"] = "miss"
        settings = settings_for(self.scheduler.profile.cache, m.spec)
        assert settings is not None
        cache, ttl, size = self.open(), settings.ttl, settings.max_size
        if not isinstance(answer, StreamingResponse):
            media = answer.media_type or "application/json"
            cache.put(key, m.name, bytes(answer.body), media, ttl, size)
            return
        chunks = cast(AsyncIterator[bytes], answer.body_iterator)

        async def kept() -> AsyncIterator[bytes]:
            got: list[bytes] = []
            clean = True
            async for chunk in chunks:
                clean = clean and b'"error"' not in chunk
                got.append(chunk)
                yield chunk
            if clean:
                cache.put(key, m.name, b"".join(got), "text/event-stream", ttl, size)

        answer.body_iterator = kept()
