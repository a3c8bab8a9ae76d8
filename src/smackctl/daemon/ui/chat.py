"""A chat asked for over the WebSocket: served as a ``POST /v1/chat/completions`` by the same
app, behind the same door's rules for its key (models, limits, priority, revocation, the
request log), and its answer turned into frames: ``start`` with the answer's headers, a
``chunk`` per streamed chunk, then ``done``; or ``error``. ``cancel`` is the client going
away, as for HTTP: the runner stops generating."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from smackctl.daemon.inner import post_scope, receive_body
from smackctl.daemon.keys import Key
from smackctl.wire import SSEParser

__all__ = ["Chat", "shown"]

log = logging.getLogger("smackctl.ui")

CHAT = "/v1/chat/completions"
#: the request headers a chat frame may set
ASKED = ("x-smackctl-priority", "x-smackctl-deadline", "x-smackctl-context", "cache-control")


def shown(name: str) -> bool:
    """The answer's headers a ``start`` frame carries."""
    return name.startswith(("x-smackctl-", "x-ratelimit-")) or name in (
        "x-request-id", "retry-after",
    )  # fmt: skip


Serve = Callable[[Key, Scope, Receive, Send], Awaitable[None]]


class Chat:
    def __init__(
        self,
        chat_id: str,
        body: dict[str, Any],
        headers: dict[str, Any],
        ws_scope: Scope,
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        self.id, self.send_frame = chat_id, send
        self.body = json.dumps({**body, "stream": True}).encode()
        asked = [(k.lower(), str(v)) for k, v in headers.items() if k.lower() in ASKED]
        host = dict(ws_scope["headers"]).get(b"host", b"localhost")
        self.scope: Scope = post_scope(
            CHAT, self.body, [(b"host", host), *((k.encode(), v.encode("latin-1", "replace"))
                                                 for k, v in asked)],
            client=ws_scope.get("client"), server=ws_scope.get("server"),
            scheme="https" if ws_scope.get("scheme") == "wss" else "http",
        )  # fmt: skip
        self._gone = asyncio.Event()
        self._receive = receive_body(self.body, self._gone)
        self._status = 0
        self._streaming = False
        self._buffer = b""
        self._parser = SSEParser()
        self._failed = False

    def cancel(self) -> None:
        self._gone.set()

    async def run(self, key: Key, serve: Serve) -> None:
        try:
            await serve(key, self.scope, self._receive, self._send)
        except Exception:  # the frame says it broke, the log says how; the server lives
            log.exception("chat %s over the WebSocket failed", self.id)
            await self._error(500, "the answer failed inside the supervisor (its log has "
                              "the details: `smackctl logs`)", "server_error")  # fmt: skip
            return
        if not self._failed:
            await self.send_frame({"type": "done", "id": self.id})

    async def _send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self._status = message["status"]
            headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                       for k, v in message.get("headers", [])}  # fmt: skip
            self._streaming = headers.get("content-type", "").startswith("text/event-stream")
            if self._status < 400:
                wanted = {k: v for k, v in headers.items() if shown(k)}
                await self.send_frame({"type": "start", "id": self.id, "status": self._status,
                                       "headers": wanted})  # fmt: skip
            return
        if message["type"] != "http.response.body":
            return
        body = message.get("body", b"")
        if self._streaming:
            for event in self._parser.feed(body):
                await self._event(event.json())
            return
        self._buffer += body
        if not message.get("more_body", False):
            await self._whole(self._buffer)

    async def _event(self, chunk: Any) -> None:
        if chunk is None:  # `[DONE]`, or data that is not JSON
            return
        if not (isinstance(chunk, dict) and "error" in chunk):
            await self.send_frame({"type": "chunk", "id": self.id, "data": chunk})
            return
        error = chunk["error"] if isinstance(chunk["error"], dict) else {}
        message = str(error.get("message", chunk["error"]))
        await self._error(500, message, str(error.get("type", "server_error")), error.get("code"))

    async def _whole(self, body: bytes) -> None:
        """An answer that came whole (an error; a cached answer): one frame of it."""
        try:
            data = json.loads(body) if body else {}
        except ValueError:
            data = {}
        if self._status >= 400 or not isinstance(data, dict):
            error = data.get("error") if isinstance(data, dict) else None
            error = error if isinstance(error, dict) else {}
            await self._error(
                self._status,
                str(error.get("message") or body[:300].decode(errors="replace")),
                str(error.get("type", "server_error")),
                error.get("code"),
            )
            return
        for choice in data.get("choices") or []:  # a whole answer as one chunk
            if isinstance(choice, dict) and "message" in choice:
                choice["delta"] = choice.pop("message")
        data["object"] = "chat.completion.chunk"
        await self.send_frame({"type": "chunk", "id": self.id, "data": data})

    async def _error(self, status: int, message: str, kind: str, code: Any = None) -> None:
        self._failed = True
        await self.send_frame(
            {
                "type": "error",
                "id": self.id,
                "status": status,
                "error": {"message": message, "type": kind, "code": code},
            }
        )
