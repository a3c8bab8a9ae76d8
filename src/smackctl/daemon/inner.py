"""A request the supervisor makes of its own app, through its own door (``Guard.serve_as``):
a chat asked for over the page's WebSocket (ui/chat.py), a request from the fleet
(fleet/worker.py). One POST with a JSON body, its ASGI scope and its ``receive``."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import Message, Receive, Scope

__all__ = ["post_scope", "receive_body"]


def post_scope(
    path: str,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    *,
    client: Any,
    server: Any,
    scheme: str = "http",
    state: dict[str, Any] | None = None,
) -> Scope:
    """The scope of ``POST path`` with a JSON ``body``; ``headers`` besides its type and
    length (a ``host`` among them); ``state``: what the app finds in ``request.state``."""
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": scheme, "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": client, "server": server,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()), *headers],
        "state": dict(state or {}),
    }  # fmt: skip


def receive_body(body: bytes, gone: asyncio.Event) -> Receive:
    """The body at once, then the client's going away once ``gone`` is set (a cancel)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    return receive
