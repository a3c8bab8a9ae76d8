"""``GET /api/ws``: the page's live updates and the playground's answers, one WebSocket of
JSON frames any client may use (docs/ui.md has the protocol).

One connection: a reader that takes the client's ops, a writer that sends frames from one
bounded queue (a slow client loses live frames, counted, never the supervisor's time; a
chat's chunks wait for room instead), and a task per topic subscribed. The overview is sent
when something happens (an event), at most ``OVERVIEW_EVERY`` apart, and every
``OVERVIEW_IDLE`` for memory that moves without events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.routing import WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from smackctl.daemon.api.common import parse_object
from smackctl.daemon.events import CLOSED
from smackctl.daemon.keys import OPERATOR, Key
from smackctl.daemon.status import status_view
from smackctl.errors import SmackError

from .chat import Chat

if TYPE_CHECKING:
    from smackctl.daemon.services import Services

__all__ = ["OVERVIEW_EVERY", "OVERVIEW_IDLE", "ROUTES", "VERSION"]

log = logging.getLogger("smackctl.ui")

#: the protocol's version, in the first frame
VERSION = 1
OVERVIEW_EVERY = 0.25
OVERVIEW_IDLE = 5.0
LOG_POLL = 0.5
#: bytes of frames waiting for a slow client before live ones are dropped (chats wait)
QUEUED_BYTES = 4 * 1024 * 1024
#: how often a connection checks its credential still holds
WATCH_EVERY = 1.0
#: WebSockets one key (or the operator) may hold open at once
PER_KEY = 32
_OVERVIEW = "\x00overview"  # the writer's marker: send the overview slot
#: chats one connection may run at once
CHATS = 8
TOPICS = ("overview", "activity", "events", "logs")

Serve = Callable[[Key, Scope, Receive, Send], Awaitable[None]]


class Live:
    def __init__(self, ws: WebSocket, services: Services, key: Key) -> None:
        self.ws, self.s, self.key = ws, services, key
        #: frames as JSON text (``_OVERVIEW``: the latest overview, held in one slot)
        self.out: asyncio.Queue[str | None] = asyncio.Queue()
        self.queued = 0  # bytes waiting in ``out``
        self.room = asyncio.Event()
        self._latest: str | None = None
        self.feeds: dict[str, asyncio.Task[None]] = {}
        self.log_model: str | None = None
        self.chats: dict[str, Chat] = {}
        self.dropped = 0
        self.admin = key.may("admin")
        #: why the credential no longer holds, or None (the door's, ``Guard._still_valid``)
        self.still_valid: Callable[[], str | None] = ws.scope.get("state", {}).get(
            "still_valid", lambda: None
        )

    # -- frames out --------------------------------------------------------------------------

    def put(self, frame: dict[str, Any]) -> None:
        """A live frame: dropped (counted) when the client reads too slowly."""
        text = json.dumps(frame)
        if self.queued + len(text) > QUEUED_BYTES:
            self.dropped += 1
            return
        self._enqueue(text)

    def put_overview(self, frame: dict[str, Any]) -> None:
        """The overview: only the latest waits (a slow client gets the newest, not a pile)."""
        if self._latest is None:
            self.out.put_nowait(_OVERVIEW)
        self._latest = json.dumps(frame)

    async def send(self, frame: dict[str, Any]) -> None:
        """A frame that must arrive (a chat's): waits for room."""
        text = json.dumps(frame)
        while self.queued > QUEUED_BYTES:
            self.room.clear()
            await self.room.wait()
        self._enqueue(text)

    def _enqueue(self, text: str) -> None:
        self.queued += len(text)
        self.out.put_nowait(text)

    async def _writer(self) -> None:
        while (text := await self.out.get()) is not None:
            if text == _OVERVIEW:
                text, self._latest = self._latest or "", None
            else:
                self.queued -= len(text)
                self.room.set()
            if text:
                await self.ws.send_text(text)

    # -- the connection ----------------------------------------------------------------------

    async def run(self) -> None:
        writer = asyncio.create_task(self._writer())
        self.put({"type": "hello", "v": VERSION, "name": self.key.name, "admin": self.admin})
        try:
            reader = asyncio.create_task(self._reader())
            watch = asyncio.create_task(self._watch())
            await asyncio.wait({reader, writer, watch}, return_when=asyncio.FIRST_COMPLETED)
            reader.cancel()
            watch.cancel()
        finally:
            for task in self.feeds.values():
                task.cancel()
            self.s.usage.activity.listeners.discard(self._on_request)
            for chat in list(self.chats.values()):
                chat.cancel()
            self.out.put_nowait(None)
            writer.cancel()
            if self.dropped:
                log.info("a WebSocket of %s read too slowly: %d live frame(s) were dropped",
                         self.key.name, self.dropped)  # fmt: skip
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self.ws.close(1008 if self.still_valid() else 1001)

    async def _watch(self) -> None:
        """End the connection once its credential no longer holds (revoked, rotated, logged
        out, expired): what it follows is no longer for it."""
        while (why := self.still_valid()) is None:
            await asyncio.sleep(WATCH_EVERY)
        await self._refused(why)

    async def _refused(self, why: str) -> None:
        frame = {"type": "error", "status": 401, "error": {
            "message": f"{why}: this connection is closed", "type": "authentication_error",
            "code": "credential_ended"}}  # fmt: skip
        with contextlib.suppress(Exception):
            await self.ws.send_text(json.dumps(frame))

    async def _reader(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            raw = message.get("text") or message.get("bytes") or b""
            if (why := self.still_valid()) is not None:
                await self._refused(why)
                return
            try:
                try:
                    frame = parse_object(raw)
                except SmackError as exc:
                    raise _bad(f"a frame must be a JSON object: {exc.message}") from None
                await self._op(frame)
            except SmackError as exc:
                self.put({"type": "error", "id": _id_of(raw), "status": exc.status,
                          "error": {"message": exc.message, "hint": exc.hint,
                                    "type": exc.error_type}})  # fmt: skip

    async def _op(self, frame: dict[str, Any]) -> None:
        op = frame.get("op")
        if op == "subscribe":
            self._subscribe(frame)
        elif op == "chat":
            self._chat(frame)
        elif op == "cancel":
            chat = self.chats.get(str(frame.get("id")))
            if chat is not None:
                chat.cancel()
        else:
            raise SmackError(
                f"unknown op {json.dumps(op)[:40]}", "send one of: subscribe, chat, cancel"
            )

    # -- subscriptions -----------------------------------------------------------------------

    def _subscribe(self, frame: dict[str, Any]) -> None:
        topics = frame.get("topics")
        if not isinstance(topics, list) or not all(t in TOPICS for t in topics):
            raise _bad(f"`topics` must be a list of: {', '.join(TOPICS)}")
        denied = [t for t in topics if not self._may(t)]
        if denied:
            raise _bad(f"key {self.key.name} may not follow {', '.join(denied)}", 403)
        model = frame.get("model")
        if "logs" in topics and model is not None:
            self.s.registry.resolve(str(model))  # an unknown model: its error
        if model != self.log_model and "logs" in self.feeds:
            self.feeds.pop("logs").cancel()
        self.log_model = None if model is None else str(model)
        for gone in set(self.feeds) - set(topics):
            self.feeds.pop(gone).cancel()
        if "activity" in topics:
            self.s.usage.activity.listeners.add(self._on_request)
        else:
            self.s.usage.activity.listeners.discard(self._on_request)
        feeds = {"overview": self._overview, "events": self._events, "logs": self._logs}
        for topic in topics:
            if topic in feeds and topic not in self.feeds:
                self.feeds[topic] = asyncio.create_task(feeds[topic]())

    def _may(self, topic: str) -> bool:
        if topic == "logs":
            return self.admin
        if topic == "events":
            return self.key.may("metrics")
        return True

    def _on_request(self, row: dict[str, Any]) -> None:
        if self.key.may("metrics") or row.get("key") == self.key.name:
            self.put({"type": "request", "data": dict(row)})

    async def _overview(self) -> None:
        async with self.s.events.subscribe() as q:
            while True:
                self.put_overview({"type": "overview", "data": self._status()})
                sent = time.monotonic()
                with contextlib.suppress(TimeoutError):
                    if await asyncio.wait_for(q.get(), OVERVIEW_IDLE) is CLOSED:
                        self.out.put_nowait(None)  # the supervisor stops: so does this
                        return
                    await asyncio.sleep(max(0.0, OVERVIEW_EVERY - (time.monotonic() - sent)))
                while not q.empty():  # what happened meanwhile is in the next one
                    q.get_nowait()

    def _status(self) -> dict[str, Any]:
        import psutil

        view = status_view(self.s, "")
        vm = psutil.virtual_memory()
        view["machine"] = {"total": vm.total, "available": vm.available}
        if self.key.may("metrics"):
            return view
        names = {m.name: self.s.registry.names_of(m) for m in self.s.registry.models.values()}
        mine = [m for m in view["models"] if self.key.may_use(*names[m["name"]])]
        return {
            **{k: view[k] for k in _SHOWN_TOP},
            "models": [{k: m.get(k) for k in _SHOWN_MODEL} for m in mine],
        }

    async def _events(self) -> None:
        async with self.s.events.subscribe() as q:
            while (ev := await q.get()) is not CLOSED:
                self.put({"type": "event", "data": ev})

    async def _logs(self) -> None:
        paths = self.s.scheduler.paths
        model = self.log_model
        path = paths.supervisor_log
        if model:
            path = paths.runner_log(self.s.registry.resolve(model).name)
        at = await asyncio.to_thread(_size, path)
        rest = b""
        while True:
            await asyncio.sleep(LOG_POLL)
            size = await asyncio.to_thread(_size, path)
            if size < at:  # rotated or truncated: from its start
                at, rest = 0, b""
            if size > at:
                data = await asyncio.to_thread(_read, path, at, min(size - at, 256 * 1024))
                at += len(data)
                *lines, rest = (rest + data).split(b"\n")
                if lines:
                    text = [line.decode(errors="replace") for line in lines]
                    self.put({"type": "log", "model": model, "lines": text})

    # -- the playground ------------------------------------------------------------------------

    def _chat(self, frame: dict[str, Any]) -> None:
        if not self.key.may("inference"):
            raise _bad(f"key {self.key.name} has scope {self.key.scope}; a chat needs inference",
                       403)  # fmt: skip
        chat_id = frame.get("id")
        if not isinstance(chat_id, str) or not chat_id or len(chat_id) > 100:
            raise _bad("a chat needs an `id`: a string of up to 100 characters")
        if chat_id in self.chats:
            raise _bad(f"a chat with id {chat_id} is running")
        if len(self.chats) >= CHATS:
            raise _bad(f"at most {CHATS} chats at once on one connection", 429)
        body, headers = frame.get("body"), frame.get("headers") or {}
        if not isinstance(body, dict) or not isinstance(headers, dict):
            raise _bad("`body` must be a chat request's object, `headers` an object")
        serve: Serve = self.s.serve_as
        chat = Chat(chat_id, body, headers, self.ws.scope, self.send)
        self.chats[chat_id] = chat
        task = asyncio.create_task(chat.run(self.key, serve))
        task.add_done_callback(lambda _: self.chats.pop(chat_id, None))


#: what a key of scope ``inference`` sees of the status (``GET /api/status`` is not its own):
#: its models' state and load, never a file, a pid, a port or an error's text
_SHOWN_TOP = ("version", "profile", "switch_phase", "accepting", "memory", "machine")
_SHOWN_MODEL = (
    "name", "aliases", "backend", "state", "phase", "chat", "n_ctx", "parallel", "ttl",
    "ttl_left", "loaded_since", "last_used", "requests_served", "tokens_out", "in_flight",
    "queued", "queued_by_priority", "expected_wait", "estimated_ram", "measured_ram",
)  # fmt: skip


def _bad(message: str, status: int = 400) -> SmackError:
    exc = SmackError(message, "see docs/ui.md for the frames the WebSocket takes")
    exc.status = status
    exc.error_type = "invalid_request_error" if status == 400 else "permission_error"
    return exc


def _id_of(raw: bytes | str) -> str | None:
    with contextlib.suppress(Exception):
        value = json.loads(raw).get("id")
        return value if isinstance(value, str) else None
    return None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read(path: Path, at: int, n: int) -> bytes:
    with path.open("rb") as f:
        f.seek(at)
        return f.read(n)


async def live(ws: WebSocket) -> None:
    key: Key = ws.scope.get("state", {}).get("key", OPERATOR)
    services: Services = ws.app.state.services
    await ws.accept()
    held = services.sockets.get(key.name, 0)
    if held >= PER_KEY:
        await ws.send_text(json.dumps({"type": "error", "status": 429, "error": {
            "message": f"{key.name} holds {held} WebSockets open, the most one may: close one",
            "type": "rate_limit_error", "code": "too_many_connections"}}))  # fmt: skip
        await ws.close(1008)
        return
    services.sockets[key.name] = held + 1
    try:
        with contextlib.suppress(WebSocketDisconnect):
            await Live(ws, services, key).run()
    finally:
        services.sockets[key.name] -= 1


ROUTES = [WebSocketRoute("/api/ws", live)]
