"""The supervisor's events: every state change, load, crash, eviction, switch phase, breaker
change and profile reload, to the listeners (metrics) and to each subscriber (``/api/events``
and the progress streams of loads and switches).

Each event gets an ``id`` (1, 2, … for this supervisor's life) and ``at`` (a unix time). The
last ``HISTORY`` are kept (of a task's progress, its latest only), so a subscriber that comes
late, or comes back after a broken connection (SSE's ``Last-Event-ID``), sees what it missed.
A subscriber's queue holds at most ``QUEUE`` events: one that reads too slowly loses the
oldest (counted in ``dropped``, its own and the total), and the supervisor never waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

__all__ = ["HISTORY", "QUEUE", "Events", "Subscription"]

HISTORY = 1000
QUEUE = 1000
#: how far back a progress event looks for the one it replaces (``_replace_progress``)
_PROGRESS_LOOK = 16

#: put in every queue by ``close``: the streams end (the supervisor is stopping)
CLOSED: dict[str, Any] = {"event": "closed"}


class Subscription(asyncio.Queue[dict[str, Any]]):
    """A subscriber's bounded queue; ``dropped``: events it lost by reading too slowly."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.dropped = 0


class Events:
    def __init__(self, history: int = HISTORY, queue: int = QUEUE) -> None:
        self._subscribers: set[Subscription] = set()
        self._queue = queue
        #: called with every event (metrics); must be quick and must not raise
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self.history: deque[dict[str, Any]] = deque(maxlen=history)
        self.dropped = 0
        self.closed = False
        self._next = 1

    def publish(self, event: dict[str, Any]) -> None:
        event.setdefault("at", time.time())
        event["id"] = self._next
        self._next += 1
        if event.get("event") == "progress":
            self._replace_progress(event)
        self.history.append(event)
        for listener in self.listeners:
            listener(event)
        for q in list(self._subscribers):
            if q.full():
                q.get_nowait()
                q.dropped += 1
                self.dropped += 1
            q.put_nowait(event)

    def _replace_progress(self, event: dict[str, Any]) -> None:
        """A progress event replaces, in the history, the one before it of the same task
        (model and phase) among the last ``_PROGRESS_LOOK``: a pull of 4 GiB says where it
        is ~8,000 times, and kept whole it would push every load, crash and switch out of
        the history. Subscribers still get each one as it comes."""
        same = (event.get("model"), event.get("phase"))
        for i in range(1, min(_PROGRESS_LOOK, len(self.history)) + 1):
            old = self.history[-i]
            if old.get("event") == "progress" and (old.get("model"), old.get("phase")) == same:
                del self.history[-i]
                return

    def since(self, after: int = 0, at: float = 0.0) -> list[dict[str, Any]]:
        """Kept events after event id ``after`` and at or after unix time ``at``."""
        return [e for e in self.history if e["id"] > after and e["at"] >= at]

    def close(self) -> None:
        """End every subscriber's stream (the supervisor stops: none may hold it open)."""
        self.closed = True
        for q in list(self._subscribers):
            if q.full():
                q.get_nowait()
            q.put_nowait(CLOSED)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Subscription]:
        q = Subscription(self._queue)
        self._subscribers.add(q)
        try:
            yield q
        finally:
            self._subscribers.discard(q)
