"""A member serving the fleet: requests come over NATS, for a model it has loaded (the queue
group of that model) or for it by name, and are served by its own app behind its own door
(``Guard.serve_as``: the model's queue, its priority, its usage row), never sent on. The
answer goes back as frames on the request's reply subject (``protocol.py``): ``wait`` each
half second nothing else went (a load, a queue, a long prompt), ``start``, ``chunk``…,
``end``; or ``error``. A cancel for a request (its client left the front) is its client
going away here: the runner stops."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

from starlette.types import Scope

from smackctl.daemon.inner import post_scope, receive_body
from smackctl.daemon.keys import Key

from .protocol import (
    CHUNK,
    END,
    ERROR,
    QUEUE,
    START,
    WAIT,
    WAIT_EVERY,
    WHOLE,
    VersionMismatch,
    cancel_subject,
    loaded_subject,
    split_request,
    work_subject,
)

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

    from .service import Fleet

__all__ = ["FROM_FLEET", "ROUTES", "Worker"]

log = logging.getLogger("smackctl.fleet")

#: what a worker's own app finds in the request's scope state: this came over the fleet,
#: serve it here (state, not a header: a client cannot send it)
FROM_FLEET = "from_fleet"
#: the routes a member serves the fleet (a front forwards only these)
ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/messages",
          "/v1/responses", "/v1/messages/count_tokens")  # fmt: skip
#: the request's metadata a member's own app reads as headers
_PASSED = {"priority": "x-smackctl-priority", "deadline": "x-smackctl-deadline"}
#: a fast stream's chunks go at most this often (seconds): those generated in between go
#: together in the next frame (a token waits 5 ms at most: far less than a screen's frame)
HOLD = 0.005
#: a stream's first chunks go at once, whatever their pace: its first token, and the role
#: or block events that come with it, are never held
HOLD_AFTER = 8
#: the frames that end an answer
_LAST = (WHOLE, END, ERROR)


class Worker:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.nc: Client | None = None
        self.work: Subscription | None = None  # requests for this member by name
        self.subs: dict[str, Subscription] = {}  # each loaded model's queue group
        self._watch: asyncio.Task[None] | None = None
        self._serving: set[asyncio.Task[None]] = set()
        #: the requests being answered, by reply subject: set when the front cancels one
        self.gone: dict[str, asyncio.Event] = {}
        self.taking = True

    async def start(self, nc: Client) -> None:
        self.nc = nc
        if not self.fleet.s.registry.models:
            return  # a pure front serves nothing
        # a queue group of one: a second member of this name (a cloned machine) shares the
        # requests instead of answering each twice on one reply subject
        self.work = await nc.subscribe(
            work_subject(self.fleet.spec.name), queue=QUEUE, cb=self._on_request
        )
        await nc.subscribe(cancel_subject(self.fleet.spec.name), cb=self._on_cancel)
        self._watch = asyncio.create_task(self._follow_loads())

    async def _follow_loads(self) -> None:
        """Subscribe to each loaded model's queue group, and leave it once unloaded."""
        while self.taking and self.nc is not None:
            try:
                await self._follow_once(self.nc)
            except Exception as exc:  # noqa: BLE001 - NATS away: the next round
                log.debug("fleet: the queue groups were not brought up to date: %s", exc)
            await asyncio.sleep(0.2)

    async def _follow_once(self, nc: Client) -> None:
        loaded = {m.name for m in self.fleet.s.registry.models.values() if m.state == "ready"}
        for name in loaded - set(self.subs):
            self.subs[name] = await nc.subscribe(
                loaded_subject(name), queue=QUEUE, cb=self._on_request
            )
        for name in set(self.subs) - loaded:
            # drained, not dropped: what was delivered already is answered (a 503 once
            # unloaded, which the front passes on to the next member at once)
            with contextlib.suppress(Exception):
                await self.subs.pop(name).drain()  # type: ignore[no-untyped-call]

    async def stop_taking(self) -> None:
        self.taking = False
        if self._watch is not None:
            self._watch.cancel()
        for sub in [*self.subs.values(), *([self.work] if self.work else [])]:
            with contextlib.suppress(Exception):
                await sub.drain()  # type: ignore[no-untyped-call]
        self.subs.clear()
        self.work = None

    async def _on_request(self, msg: Msg) -> None:
        task = asyncio.get_running_loop().create_task(self._serve_logged(msg))
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)

    async def _on_cancel(self, msg: Msg) -> None:
        gone = self.gone.get(msg.data.decode("ascii", "replace"))
        if gone is not None:
            gone.set()

    async def _serve_logged(self, msg: Msg) -> None:
        try:
            await self._serve(msg)
        except Exception as exc:  # noqa: BLE001 - the reply could not go (NATS away)
            log.warning("fleet: a request from the fleet could not be answered: %s", exc)

    async def _serve(self, msg: Msg) -> None:
        reply = msg.reply
        if not reply or self.nc is None:
            return
        frames = _Frames(self.nc, reply, self.fleet.spec.name)
        try:
            meta, body = split_request(msg.data)
        except VersionMismatch as exc:
            await frames.error(400, str(exc))
            return
        except ValueError:
            await frames.error(400, "not a smackctl request: see docs/fleet.md")
            return
        route = str(meta.get("route", ""))
        if route not in ROUTES or not self.taking:
            await frames.error(503, f"{self.fleet.spec.name} takes no {route or 'such'} "
                               "request now")  # fmt: skip
            return
        created = meta.get("created")  # a key made anew under an old name is another key
        key = Key(str(meta.get("key") or "fleet"), "inference",
                  created=float(created) if isinstance(created, int | float) else 0.0,
                  priority=str(meta.get("priority") or "interactive"))  # fmt: skip
        waiting = asyncio.create_task(frames.keep_alive())
        gone = self.gone[reply] = asyncio.Event()  # set by a cancel: the client went away
        try:
            receive = receive_body(body, gone)
            await self.fleet.s.serve_as(key, _scope(route, meta, body), receive, frames.asgi)
        except Exception:  # the front hears it failed; the member lives
            log.exception("fleet: a request from the fleet failed here")
            await frames.error(500, f"the request failed on {self.fleet.spec.name} (its log "
                               "says why)")  # fmt: skip
        finally:
            waiting.cancel()
            frames.stop_holding()  # a client gone: nothing held goes after it
            self.gone.pop(reply, None)
        if not frames.ended and not gone.is_set():  # ended without its last piece said
            await frames.asgi({"type": "http.response.body", "body": b"", "more_body": False})


def _scope(route: str, meta: dict[str, Any], body: bytes) -> Scope:
    asked = [(header.encode(), str(meta[name]).encode("latin-1", "replace"))
             for name, header in _PASSED.items() if meta.get(name) is not None]  # fmt: skip
    return post_scope(route, body, [(b"host", b"localhost"), *asked], client=("fleet", 0),
                      server=("fleet", 0), state={FROM_FLEET: True})  # fmt: skip


class _Frames:
    """The answer's frames to the reply subject, in order (one connection keeps it)."""

    def __init__(self, nc: Client, reply: str, member: str) -> None:
        self.nc, self.reply, self.member = nc, reply, member
        self.ended = False
        self.sent = time.monotonic()
        self.seq = 0  # each frame's number: the front sees one lost on the way
        self.start: bytes | None = None  # the answer's start, sent with its first piece
        self.chunk_sent = 0.0  # when the last chunk frame went (the loop's clock)
        self.chunks = 0  # the chunks given so far
        self.held: list[bytes] = []  # chunks that wait for the next frame (``HOLD``)
        self.later: asyncio.Task[None] | None = None  # sends what is held, when due

    async def send(self, kind: bytes, data: bytes) -> None:
        self.sent = time.monotonic()
        frame = kind + self.seq.to_bytes(4, "big") + data  # numbered in the order sent
        self.seq += 1
        await self.nc.publish(self.reply, frame)
        if kind in _LAST:
            # nats-py writes from a task of its own: let it run now, before the work after
            # the answer (its usage row, ~0.3 ms, which the app does after its last piece
            # and does not yield in) holds up the answer's last frame
            await asyncio.sleep(0)

    async def error(self, status: int, message: str) -> None:
        self.ended = True
        self.stop_holding()
        if self.held:  # what came before the failure goes first (the error is JSON alone)
            pieces, self.held = self.held, []
            await self.send(CHUNK, b"".join(pieces))
        error = {"status": status, "message": message, "member": self.member}
        await self.send(ERROR, json.dumps(error).encode())

    async def keep_alive(self) -> None:
        """A ``wait`` frame whenever half a second passed without a frame (a load, a queue,
        a long prompt before its first token): the front knows this member is still there
        (its patience: 2 s for a first frame, 4 s after). Not one at once: a frame of its
        own on every request cost ~0.15 ms of each."""
        while not self.ended:
            await asyncio.sleep(WAIT_EVERY / 2)
            if not self.ended and time.monotonic() - self.sent >= WAIT_EVERY / 2:
                with contextlib.suppress(Exception):  # NATS away a moment: the next one
                    await self.send(WAIT, self.member.encode())

    async def asgi(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = {k.decode("latin-1"): v.decode("latin-1")
                       for k, v in message.get("headers", [])}  # fmt: skip
            start = {"status": message["status"], "headers": headers, "member": self.member}
            self.start = json.dumps(start).encode()  # held: a whole answer goes in one frame
        elif message["type"] == "http.response.body":
            body = message.get("body", b"")
            more = message.get("more_body", False)
            if self.start is not None:
                held, self.start = self.start, None
                if not more:
                    self.ended = True
                    await self.send(WHOLE, held + b"\n" + body)
                    return
                await self.send(START, held)
            if more:
                if body:
                    await self.chunk(body)
            else:  # the last piece (with what was held) and the end in one frame
                self.ended = True
                self.stop_holding()
                pieces, self.held = self.held, []
                await self.send(END, b"".join([*pieces, body]))

    async def chunk(self, body: bytes) -> None:
        """A piece of a stream: a frame at once, unless a chunk frame went less than
        ``HOLD`` ago (past the stream's first ``HOLD_AFTER`` chunks); then it is held, with
        what comes after it, until ``HOLD`` has passed. A frame per token at 1,300 tokens/s
        cost the front, NATS and this member ~0.3 ms of CPU per token, which the runner's
        cores then lacked: 0.82-0.89 of a direct stream's speed (benchmarks/fleet.py)."""
        self.chunks += 1
        if self.held:
            self.held.append(body)
            return
        loop = asyncio.get_running_loop()
        wait = self.chunk_sent + HOLD - loop.time()
        if wait <= 0 or self.chunks <= HOLD_AFTER:
            self.chunk_sent = loop.time()
            await self.send(CHUNK, body)
            return
        self.held.append(body)
        self.later = loop.create_task(self._send_held(wait))

    def stop_holding(self) -> None:
        if self.later is not None:
            self.later.cancel()

    async def _send_held(self, wait: float) -> None:
        await asyncio.sleep(wait)
        if self.held and not self.ended:
            pieces, self.held = self.held, []
            self.chunk_sent = asyncio.get_running_loop().time()
            with contextlib.suppress(Exception):  # NATS away: the front sees the gap
                await self.send(CHUNK, b"".join(pieces))
