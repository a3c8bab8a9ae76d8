"""What the page's activity view shows: the requests in flight and the last few hundred, in
memory (the request log in SQLite keeps them for good; this is the live view of it).

A request begins when the API hands it to the gateway (``begin``) and ends when its usage is
recorded (``end``, from ``Usage.record``: also refusals that never began); the door ends one
whose answer went away without a record (``abandon``). Each change is told to the listeners
(the WebSocket's ``activity`` topic)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["RECENT", "Activity", "split_fix"]

#: how many finished requests are kept
RECENT = 500


def split_fix(reason: str | None) -> tuple[str | None, str | None]:
    """An error answer's message and its fix (``smack_error`` writes `` (fix: …)`` into it)."""
    if not reason:
        return None, None
    head, sep, tail = reason.partition(" (fix: ")
    if sep and tail.endswith(")"):
        return head, tail[:-1]
    return reason, None


class Activity:
    def __init__(self, recent: int = RECENT) -> None:
        self.in_flight: dict[str, dict[str, Any]] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=recent)
        self.listeners: set[Callable[[dict[str, Any]], None]] = set()

    def begin(self, request_id: str, model: str | None, route: str, key: str | None) -> None:
        row = {
            "id": request_id, "at": time.time(), "model": model, "route": route,
            "key": key or "operator", "status": None, "deployment": None, "ttft_ms": None,
            "tokens_in": None, "tokens_out": None, "ms": None, "error": None, "hint": None,
        }  # fmt: skip
        if len(self.in_flight) < 10_000:  # a bound, whatever happens to ends
            self.in_flight[request_id] = row
        self._tell(row)

    def end(
        self,
        request_id: str,
        *,
        who: str | None,
        route: str,
        status: int,
        key: str | None,
        tokens_in: int | None,
        tokens_out: int | None,
        seconds: float,
        ttft: float | None,
        reason: str | None,
    ) -> None:
        row = self.in_flight.pop(request_id, None)
        if row is None:  # refused before it began
            row = {"id": request_id, "at": time.time(), "model": who, "route": route,
                   "key": key or "operator"}  # fmt: skip
        error, hint = split_fix(reason) if status >= 400 else (None, None)
        row.update(
            status=status, deployment=who, tokens_in=tokens_in, tokens_out=tokens_out,
            ms=round(seconds * 1000, 1), ttft_ms=None if ttft is None else round(ttft * 1000, 1),
            error=error, hint=hint,
        )  # fmt: skip
        self.recent.appendleft(row)
        self._tell(row)

    def abandon(self, request_id: str, status: int) -> None:
        """A request whose answer ended without a record (the client went away first)."""
        row = self.in_flight.pop(request_id, None)
        if row is None:
            return
        row.update(
            status=status or 499,
            ms=round((time.time() - row["at"]) * 1000, 1),
            error="the answer ended before it was counted (the client went away)",
        )
        self.recent.appendleft(row)
        self._tell(row)

    def view(self, limit: int, who: str | None = None) -> dict[str, Any]:
        """The requests in flight and the last ``limit`` (``who``: that key's only)."""

        def mine(rows: Any) -> list[dict[str, Any]]:
            return [r for r in rows if who is None or r["key"] == who]

        flying = sorted(mine(self.in_flight.values()), key=lambda r: -r["at"])
        return {"in_flight": flying, "recent": mine(self.recent)[:limit]}

    def _tell(self, row: dict[str, Any]) -> None:
        for listener in list(self.listeners):
            listener(row)
