"""The supervisor's events: every state change, load, crash and eviction, to the listeners
(metrics) and to each subscriber (`/api/...` streams)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

__all__ = ["Events"]


class Events:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        #: called with every event (metrics); must be quick and must not raise
        self.listeners: list[Callable[[dict[str, Any]], None]] = []

    def publish(self, event: dict[str, Any]) -> None:
        event.setdefault("at", time.time())
        for listener in self.listeners:
            listener(event)
        for q in list(self._subscribers):
            q.put_nowait(event)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._subscribers.add(q)
        try:
            yield q
        finally:
            self._subscribers.discard(q)
