"""The response cache in front of every local model (``cache.py`` has the file and the
rules): a request's key, a hit as a response, a miss kept once it is over. In a fleet whose
NATS server has JetStream, a miss here is looked for in the fleet's (``fleet/shared_cache.py``)
before the runner is asked, and what is kept here is kept there too."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol, cast

from starlette.responses import Response, StreamingResponse

from smackctl.config import Profile
from smackctl.daemon.keys import CALLER
from smackctl.daemon.metrics import Metrics
from smackctl.daemon.registry import Managed, Registry

from .cache import CACHED_ROUTES, Cache, deterministic, kept_stream, settings_for

__all__ = ["Cached", "FleetCache"]


class FleetCache(Protocol):
    """The fleet's cache (``fleet/shared_cache.py``): a lookup that is a miss when it cannot
    answer at once, and a put that does not wait."""

    async def get(self, key: str) -> tuple[bytes, str, float] | None: ...

    def put(self, key: str, content: bytes, media_type: str, ttl: float) -> None: ...

    async def clear(self, model: str | None) -> int | str: ...


class Cached:
    """The cache in front of every local model: the key of a request (None: not cached), a
    hit as a response, a miss kept once it is over. ``path``: its file; ``on_notice``: what
    `smackctl status` should say (a damaged file set aside)."""

    def __init__(
        self,
        profile: Callable[[], Profile],
        registry: Registry,
        path: Path,
        on_notice: Callable[[str], None],
        metrics: Metrics | None,
    ) -> None:
        self.profile, self.registry, self.path = profile, registry, path
        self.on_notice, self.metrics = on_notice, metrics
        self.cache: Cache | None = None  # opened on the first cached request
        self.fleet: FleetCache | None = None  # the fleet's, while this member is in one

    def open(self) -> Cache:
        if self.cache is None:
            self.cache = Cache(self.path, on_notice=self.on_notice)
        return self.cache

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()

    async def clear(self, model: str | None = None) -> dict[str, Any]:
        """This supervisor's answers (of ``model``, or all), and the fleet's: its bucket
        (all of it), and each sharing member's own (``fleet``: how many the bucket held, or
        why it was not cleared)."""
        cleared: dict[str, Any] = {"cleared": self.open().clear(model)}
        if self.fleet is not None:
            cleared["fleet"] = await self.fleet.clear(model)
        return cleared

    async def key(self, m: Managed, path: str, body: dict[str, Any]) -> str | None:
        """The cache's key for this request, or None when it is not cached."""
        profile = self.profile()
        settings = settings_for(profile.cache, m.spec)
        if settings is None or path not in CACHED_ROUTES:
            return None
        defaults = profile.defaults.model_dump()
        if not deterministic(body, defaults):
            return None
        file = self.registry.model_file(m)
        if not file.is_file():
            return None  # pulled on its first load: cached from the next request on
        identity = await self.open().identity(m.spec, file)
        caller = CALLER.get()  # each key its own answers, unless the cache is shared
        if caller is not None and not settings.shared:  # a name made anew is another key
            identity = f"{identity}/key:{caller.name}@{caller.created}"
        return Cache.key(path, body, defaults, identity)

    async def hit(self, key: str, m: Managed) -> Response | None:
        """The answer kept for ``key``: this supervisor's own, else the fleet's (then kept
        here too)."""
        cache = self.open()
        found = cache.get(key, count=False)
        if found is None and self.fleet is not None and (shared := await self.fleet.get(key)):
            settings = settings_for(self.profile().cache, m.spec)
            found = shared[:2]
            if settings is not None:  # kept here no longer than the fleet keeps it
                left = shared[2] - time.time()
                self.open().put(key, m.name, *found, settings, ttl=left)
        if found is None:
            cache.misses += 1
        else:
            cache.hits += 1
        if self.metrics is not None:
            self.metrics.cache.labels("hit" if found else "miss").inc()
        if found is None:
            return None
        content, media_type = found
        return Response(
            content,
            media_type=media_type,
            headers={"X-Smackctl-Cache": "hit"},
        )

    def keep(self, answer: Response, key: str, m: Managed) -> None:
        """Store a 200 ``answer``: a plain one now (a miss pays the SQLite write, ~0.5 ms, so
        that the same request sent right after it hits); a stream as its bytes once it
        ended without an error event."""
        if answer.status_code != 200:
            return
        answer.headers["X-Smackctl-Cache"] = "miss"
        settings = settings_for(self.profile().cache, m.spec)
        assert settings is not None

        def put(content: bytes, media: str) -> None:  # here, and for the fleet
            if self.open().put(key, m.name, content, media, settings) and self.fleet:
                self.fleet.put(key, content, media, settings.ttl)

        if not isinstance(answer, StreamingResponse):
            put(bytes(answer.body), answer.media_type or "application/json")
            return
        answer.body_iterator = kept_stream(
            cast(AsyncIterator[bytes], answer.body_iterator),
            lambda stream: put(stream, "text/event-stream"),
            settings.max_entry,
        )
