"""What the control API streams: a task's scheduler events as NDJSON progress (loads,
pulls, switches, benches), and the event stream itself as SSE (``GET /api/events``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.responses import StreamingResponse

from smackctl.errors import SmackError
from smackctl.wire import comment
from smackctl.wire import sse as frame

from .events import CLOSED, Events

__all__ = ["KEEPALIVE", "error_event", "event_stream", "ndjson", "stream_task"]


def ndjson(event: dict[str, Any]) -> bytes:
    return json.dumps(event, default=str).encode() + b"\n"


def error_event(exc: BaseException, **extra: Any) -> dict[str, Any]:
    err = exc if isinstance(exc, SmackError) else SmackError(str(exc))
    return {
        "event": "error",
        "status": err.status,
        "message": err.message,
        "hint": err.hint,
        **extra,
    }


def stream_task(
    events: Events,
    start: Callable[[], asyncio.Future[Any]],
    wanted: Callable[[dict[str, Any]], bool],
    final: Callable[[Any], dict[str, Any]],
    **extra: Any,
) -> StreamingResponse:
    """Run a task and stream the scheduler events it causes as NDJSON, then its outcome.

    The task does not belong to the HTTP request: a client that goes away (Ctrl-C) stops
    following it, not the task itself."""

    async def lines() -> AsyncIterator[bytes]:
        async with events.subscribe() as q:
            task = start()
            while True:
                getter = asyncio.ensure_future(q.get())
                done, _ = await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    ev = getter.result()
                    if wanted(ev):
                        yield ndjson(ev)
                else:
                    getter.cancel()
                if task in done:
                    break
            while not q.empty():  # events published as the task finished
                ev = q.get_nowait()
                if wanted(ev):
                    yield ndjson(ev)
            exc = task.exception()
            yield ndjson(final(task.result()) if exc is None else error_event(exc, **extra))

    return StreamingResponse(lines(), media_type="application/x-ndjson")


#: a comment line this often keeps an idle event stream's connection (and proxies) open
KEEPALIVE = 15.0


def _sse_event(ev: dict[str, Any]) -> bytes:
    return frame(ev, event=ev["event"], id=ev["id"])


async def event_stream(
    events: Events, after: int, since: float, types: set[str], follow: bool
) -> AsyncIterator[bytes]:
    def wanted(ev: dict[str, Any]) -> bool:
        return not types or ev["event"] in types

    async with events.subscribe() as q:  # first: nothing published meanwhile is missed
        last = after
        for ev in events.since(after, since):
            if wanted(ev):
                yield _sse_event(ev)
            last = ev["id"]
        if events.closed or not follow:
            return
        dropped = 0
        while True:
            try:
                ev = await asyncio.wait_for(q.get(), KEEPALIVE)
            except TimeoutError:
                yield comment("keepalive")
                continue
            if ev is CLOSED:
                return
            if q.dropped > dropped:  # this reader was too slow: say how much it lost
                lost = {"event": "dropped", "count": q.dropped - dropped, "id": ev["id"] - 1}
                yield frame(lost, event="dropped")
                dropped = q.dropped
            if ev["id"] > last and ev["at"] >= since and wanted(ev):
                yield _sse_event(ev)
                last = ev["id"]
