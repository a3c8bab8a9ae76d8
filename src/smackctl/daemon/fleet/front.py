"""A member as a front: a request for a model it does not serve itself, but the fleet does,
goes over NATS (``members.place``): to the members that have it loaded (their queue group),
else to one where it fits. A member that does not acknowledge, or falls silent, before the
answer begins is passed over for the next; once the answer has begun, a member that goes
away ends the stream with an error event, and a client that goes away before the end has
the member told to stop (a cancel). The key's limits were enforced here already; the
member gets the key's name (never its secret), its priority and what is left of its
deadline. The request is counted here, as ``MEMBER/MODEL``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.responses import Response

from smackctl.daemon.keys import CALLER
from smackctl.daemon.slots import DEADLINE, PRIORITY
from smackctl.daemon.usage import tokens_in_stream, without_usage_event
from smackctl.errors import FleetUnavailable, ShuttingDown, UsageError

from .answers import COUNTED, Closing, Counted, error_of, failure, whole_tokens
from .protocol import (
    ACK_WITHIN,
    CHUNK,
    END,
    ERROR,
    SILENT_FOR,
    START,
    WHOLE,
    cancel_subject,
    loaded_subject,
    request,
    work_subject,
)
from .worker import ROUTES

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

    from .service import Fleet

__all__ = ["Front"]

log = logging.getLogger("smackctl.fleet")
_SHOWN = ("content-type", "x-smackctl-queued-ms", "x-smackctl-cache")


class _Inbox:
    """Every attempt's replies through one wildcard subscription (``_INBOX.<id>.*``), as
    nats-py's own requests do: no subscription made and dropped per request."""

    def __init__(self) -> None:
        self.prefix: str | None = None
        self.waiting: dict[str, asyncio.Queue[Msg]] = {}

    async def open(self, nc: Client) -> tuple[str, asyncio.Queue[Msg]]:
        if self.prefix is None:
            prefix = nc.new_inbox()
            await nc.subscribe(prefix + ".*", cb=self._deliver)
            self.prefix = prefix
        token = uuid.uuid4().hex
        queue: asyncio.Queue[Msg] = asyncio.Queue()
        self.waiting[token] = queue
        return f"{self.prefix}.{token}", queue

    def close(self, subject: str) -> None:
        self.waiting.pop(subject.rsplit(".", 1)[-1], None)

    async def _deliver(self, msg: Msg) -> None:
        queue = self.waiting.get(msg.subject.rsplit(".", 1)[-1])
        if queue is not None:
            queue.put_nowait(msg)


@dataclass
class _Attempt:
    inbox: _Inbox
    subject: str
    queue: asyncio.Queue[Msg]
    member: str | None = None
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    failed: str | None = None  # why it failed before its answer began
    relayed: bool = False  # its answer's relay began
    seq: int = 0  # the number of the frame expected next
    pending: tuple[bytes, bytes] | None = None  # a frame read already: a whole answer's end
    error: tuple[int, str] | None = None  # an answer of an error (4xx: not tried elsewhere)
    count: Callable[[], None] | None = None  # a whole answer's count, once it is sent


class LostFrames(Exception):
    """A frame lost between the member and the front (a reconnect, a slow consumer)."""


class Front:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.inbox = _Inbox()
        self._cancels: set[asyncio.Task[None]] = set()

    def _cancel(self, a: _Attempt) -> None:
        """Tell the member an answer's client went away: it stops the runner. Sent from a
        task of its own: a response's cleanup may be cancelled itself."""
        nc = self.fleet.nc
        if nc is None or a.member is None:
            return
        sent = nc.publish(cancel_subject(a.member), a.subject.encode())
        task = asyncio.get_running_loop().create_task(sent)
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def _next(self, a: _Attempt, timeout: float) -> tuple[bytes, bytes]:
        """The next frame's kind and data; ``b"?"`` for no responders; TimeoutError."""
        if a.pending is not None:
            frame, a.pending = a.pending, None
            return frame
        try:  # most frames are waiting already: no timer for them (wait_for costs ~30 µs)
            msg = a.queue.get_nowait()
        except asyncio.QueueEmpty:
            msg = await asyncio.wait_for(a.queue.get(), timeout)
        data = msg.data
        if not data and (msg.headers or {}).get("Status") == "503":
            return b"?", b""
        if (seq := int.from_bytes(data[1:5], "big")) != a.seq:
            raise LostFrames(f"frame {a.seq} of the answer never came (frame {seq} did)")
        a.seq += 1
        return data[:1], data[5:]

    def takes(self, route: str, model: object) -> bool:
        """Whether a request for ``model`` goes to the fleet: a name this supervisor does
        not serve, that a member serves or served recently, on a route members serve."""
        if route not in ROUTES or not isinstance(model, str) or not model or model == "auto":
            return False
        s = self.fleet.s
        if model in s.registry.known_names():
            return False
        profile = s.scheduler.profile  # its servers elsewhere, its groups and their aliases
        if model in profile.models or model in profile.groups:
            return False
        if any(model in g.aliases for g in profile.groups.values()):
            return False
        members = self.fleet.members
        return model in members.models() or members.recently_served(model)

    async def forward(self, route: str, body: dict[str, Any], request_id: str) -> Response:
        if not self.fleet.s.scheduler.accepting or self.fleet.draining:
            raise ShuttingDown("this supervisor is leaving the fleet (a stop, or a profile "
                               "switch): it sends the fleet nothing new",
                               "ask again in a moment, or ask another front")  # fmt: skip
        model = str(body["model"])
        streamed = bool(body.get("stream"))
        asked_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if streamed and route in COUNTED:  # the front counts the tokens: always sent
            body = {**body, "stream_options": {**(body.get("stream_options") or {}),
                                               "include_usage": True}}  # fmt: skip
        payload = json.dumps(body).encode()
        if self.fleet.nc is not None and len(payload) > self.fleet.nc.max_payload - 4096:
            raise UsageError(
                f"a request of {len(payload)} bytes is over what the fleet's NATS server "
                f"carries in one message ({self.fleet.nc.max_payload} bytes)",
                "send less, or raise the NATS server's max_payload",
            )
        tried: set[str] = set()
        queue_tried = False
        started = time.perf_counter()
        while True:
            place = self.fleet.members.place(model, tried, queue_tried)
            if place is None or self.fleet.nc is None or not self.fleet.connected:
                raise FleetUnavailable(
                    self._why_not(model), "ask again in a few seconds; `smackctl fleet` "
                    "shows the members and their models",
                )  # fmt: skip
            subject = work_subject(place.member) if place.member else loaded_subject(model)
            queue_tried = queue_tried or place.member is None
            # what is left of the deadline, as of this attempt
            data = request(self._meta(route, model, request_id), payload)
            attempt = await self._attempt(subject, data)
            if attempt.failed is None:
                break
            tried.add(attempt.member or place.member or "")
            log.warning("fleet: %s for %s on %s failed before its answer (%s): trying another",
                        request_id, model, attempt.member or subject, attempt.failed)  # fmt: skip
        member = attempt.member or "?"
        out = {"X-Request-Id": request_id, "X-Smackctl-Deployment": member}
        out.update({k: v for k, v in attempt.headers.items() if k.lower() in _SHOWN})
        if attempt.error is not None:
            self.inbox.close(attempt.subject)
            status, message = attempt.error
            self._count(member, model, route, status, request_id, started, None, message)
            return Response(failure(False, message, "member_error"), status, out,
                            media_type="application/json")  # fmt: skip
        stream = self._relay(attempt, member, model, route, request_id, started,
                             streamed, asked_usage)  # fmt: skip
        if streamed and attempt.status < 400:

            def unstarted() -> None:
                self.inbox.close(attempt.subject)
                self._cancel(attempt)
                self._count(member, model, route, 499, request_id, started, None,
                            "the client went away before the answer began")  # fmt: skip

            return Closing(stream, attempt.status, out, attempt, unstarted)
        try:
            async with contextlib.aclosing(stream):  # its end (and count) now, if cut
                content = b"".join([piece async for piece in stream])
        except BaseException:
            Counted.count_of(attempt)
            raise
        return Counted(content, attempt.status, out, attempt)

    def _meta(self, route: str, model: str, request_id: str) -> dict[str, Any]:
        caller = CALLER.get()
        meta: dict[str, Any] = {
            "request_id": request_id, "route": route, "model": model,
            "key": caller.name if caller is not None else "operator",
            "created": caller.created if caller is not None else 0.0,  # which key of the name
            "priority": PRIORITY.get(),
        }  # fmt: skip
        deadline = DEADLINE.get()
        if deadline is not None:
            left = deadline - asyncio.get_running_loop().time()
            meta["deadline"] = round(max(0.001, left), 3)
        return meta

    def _why_not(self, model: str) -> str:
        if self.fleet.nc is None or not self.fleet.connected:
            return f"the fleet's NATS server ({self.fleet.spec.url}) cannot be reached now"
        return self.fleet.members.why_not(model)

    async def _attempt(self, subject: str, data: bytes) -> _Attempt:
        """Send the request, and read its frames until its answer begins or it fails (its
        inbox closed unless its answer is to be read)."""
        nc = self.fleet.nc
        assert nc is not None
        reply, queue = await self.inbox.open(nc)
        a = _Attempt(self.inbox, reply, queue)
        try:
            await nc.publish(subject, data, reply=reply)
            await self._first_frames(a)
        except Exception as exc:  # noqa: BLE001 - a frame not of ours, NATS gone: next one
            a.failed = f"{type(exc).__name__}: {exc}"[:200]
        if a.failed is not None or a.error is not None:
            self.inbox.close(a.subject)
            if a.failed is not None:  # a member that took it may still be at it
                self._cancel(a)
        return a

    async def _first_frames(self, a: _Attempt) -> None:
        timeout = ACK_WITHIN
        while True:
            try:
                kind, body = await self._next(a, timeout)
            except TimeoutError:
                a.failed = "no answer" if timeout == ACK_WITHIN else "it fell silent"
                return
            if kind == b"?":
                a.failed = "nobody took it"
                return
            timeout = SILENT_FOR
            if kind == WHOLE:  # a start, and its end next
                body, _, rest = body.partition(b"\n")
                a.pending, kind = (END, rest), START
            if kind == START:
                start = json.loads(body)
                a.status = int(start["status"])
                a.headers = {str(k): str(v) for k, v in dict(start.get("headers", {})).items()}
                a.member = str(start.get("member") or "")[:200] or a.member
                if a.status >= 500:  # it could not take it (draining, no room): the next one
                    a.failed = f"it answered {a.status}"
                return
            if kind == ERROR:
                error = json.loads(body)
                a.member = str(error.get("member") or "")[:200] or a.member
                status = int(error.get("status", 500))
                if status >= 500:
                    a.failed = str(error.get("message"))
                else:
                    a.error = (status, str(error.get("message")))
                return
            a.member = body[:200].decode(errors="replace") or a.member  # a wait names it

    async def _relay(
        self, a: _Attempt, member: str, model: str, route: str, request_id: str,
        started: float, streamed: bool, asked_usage: bool,
    ) -> AsyncGenerator[bytes, None]:  # fmt: skip
        a.relayed = True
        status, reason = a.status, None
        tokens: tuple[int | None, int | None] = (None, None)
        first: float | None = None
        whole = b""
        ended = False
        try:
            while True:
                try:
                    kind, piece = await self._next(a, SILENT_FOR)
                except TimeoutError:  # a member gone mid-answer
                    status, reason = 502, f"member {member} went away mid-answer"
                    yield failure(streamed, f"{reason}: the answer is cut", "member_gone")
                    return
                except LostFrames as exc:  # a piece of the answer lost: not passed off
                    status, reason = 502, f"{exc} from member {member}: the answer is cut"
                    log.warning("fleet: %s: %s", request_id, reason)
                    yield failure(streamed, reason, "frames_lost")
                    return
                if kind in (CHUNK, END) and piece:
                    first = first or time.perf_counter()
                    if (found := tokens_in_stream(piece)) is not None:  # merged: Anthropic's
                        tokens = (
                            found[0] if found[0] is not None else tokens[0],  # come in
                            found[1] if found[1] is not None else tokens[1],
                        )  # two parts
                        if not asked_usage:
                            piece = without_usage_event(piece)
                    if not streamed and len(whole) < 1 << 20:  # a whole answer's tokens
                        whole += piece
                    if piece:
                        yield piece
                if kind == ERROR:
                    ended = True
                    status, reason = error_of(piece, member)
                    yield failure(streamed, reason, "member_error")
                    return
                elif kind == END:
                    ended = True
                    return
        finally:
            if not ended:  # the client went away, or the member fell silent or lost frames:
                self._cancel(a)  # counted as far as it went, and the member told to stop
            a.status = status  # a whole answer's status is its end's (forward reads it)
            self.inbox.close(a.subject)
            if not streamed and whole:
                tokens = whole_tokens(whole)
            count = functools.partial(
                self._count, member, model, route, status, request_id, started, first, reason,
                tokens, time.perf_counter(),
            )  # fmt: skip
            if streamed:
                count()
            else:  # forward counts it once the answer is sent
                a.count = count

    def _count(
        self, member: str, model: str, route: str, status: int, request_id: str,
        started: float, first: float | None, reason: str | None,
        tokens: tuple[int | None, int | None] = (None, None), ended: float | None = None,
    ) -> None:  # fmt: skip
        self.fleet.s.usage.record(
            f"{member}/{model}", route, status, request_id, tokens_in=tokens[0],
            tokens_out=tokens[1], seconds=(ended or time.perf_counter()) - started,
            ttft=None if first is None else first - started, reason=reason,
        )  # fmt: skip
