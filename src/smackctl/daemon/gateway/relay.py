"""A request to a runner the supervisor runs, and its answer on the way back.

Streams pass through chunk by chunk as the runner writes them (no buffering, no re-encoding
but for the usage event). A runner that dies before any byte went back to the client gets
the request once more after its restart; a stream cut mid-way ends with an SSE error event,
never a fake ``[DONE]``. While the request waits on the runner, ``Watchdog`` applies the hang
rule (design rule 6). Each answer is counted once, at its end (``Usage.record``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

from smackctl.daemon.answers import (
    crash_fix,
    cut_error,
    error_event_of,
    lost_error,
    map_error,
    runner_died,
)
from smackctl.daemon.backends.base import backend_for
from smackctl.daemon.keys import CALLER
from smackctl.daemon.registry import Managed
from smackctl.daemon.runner import Runner
from smackctl.daemon.scheduler import Scheduler
from smackctl.daemon.slots import DEADLINE
from smackctl.daemon.upstream import Answer, TransportError, Upstream
from smackctl.daemon.usage import Usage, tokens_in_stream, tokens_of, without_usage_event
from smackctl.errors import DeadlineExceeded
from smackctl.kv_config import OWNER_HEADER, owner_of
from smackctl.wire import data_lines, sse_error

__all__ = ["CHAT", "COMPLETIONS", "Runners", "Watchdog", "by_deadline"]

T = TypeVar("T")

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"

log = logging.getLogger("smackctl.requests")


class Watchdog:
    """The hang rule for one request: the runner must make progress while the request waits
    on it. A chunk of the answer is progress; after ``POLL`` seconds without one, the runner's
    own progress counter is read on another connection (the backend's ``progress_path``:
    decodes and prompt-batch steps on llama-cpp-python, tokens per slot on llama-server), and
    a counter that moved is progress too. No progress for the model's ``hang_timeout`` means
    hung, even when its HTTP side still answers (a stuck compute thread, a hung GPU kernel):
    the process is SIGKILLed as a crash (``Runner.kill_hung``: restarted with backoff), and
    the request's read fails at once, as after any crash. A slow runner that moves is never
    killed. One timer task a request; a chunk that arrives costs only the assignment of
    ``last``."""

    #: seconds of silence before the counter is read, and between two reads
    POLL = 5.0

    def __init__(self, m: Managed, runner: Runner) -> None:
        self.m, self.runner = m, runner
        self.loop = asyncio.get_running_loop()
        self.last = self.loop.time()
        #: the runner was seen making progress without answering (said once in the log)
        self.moving = False
        self._task = self.loop.create_task(self._run(), name=f"watchdog-{m.name}")

    def stop(self) -> None:
        self._task.cancel()

    async def _run(self) -> None:
        limit = self.m.spec.hang_timeout
        every = min(self.POLL, limit / 4)
        backend = backend_for(self.m.spec)
        seen: int | None = None
        polled = self.loop.time()
        while not self.runner.exited.is_set():
            now = self.loop.time()
            if now - self.last >= limit:
                why = f"no progress for {limit:g}s while answering a request"
                log.warning("%s made %s: killing it", self.m.name, why)
                self.runner.kill_hung(why)
                return
            wake = min(self.last + limit, max(self.last, polled) + every)
            if now < wake:
                await asyncio.sleep(wake - now)
                continue
            try:
                value = await self.runner.progress(
                    backend.progress_path, backend.progress_of, min(every, limit)
                )
            except Exception:  # the rule must outlive any surprise: no reading, no progress
                log.exception("%s: reading the runner's progress failed", self.m.name)
                value = None
            polled = self.loop.time()
            if value is not None:
                if seen is not None and value != seen:
                    self.last = polled
                    if not self.moving:
                        self.moving = True
                        log.info(
                            "%s: no answer for %gs, but it makes progress: waiting",
                            self.m.name,
                            every,
                        )
                seen = value


PASSED = "the request's deadline (X-Smackctl-Deadline) passed"


async def by_deadline(
    step: Awaitable[T],
    when: str = "while it ran: the answer was stopped",
    hint: str = "give it a longer deadline, or ask for fewer tokens",
) -> T:
    """``step``, unless the request's deadline passes first: then DeadlineExceeded (the
    step is cancelled: a runner's connection is closed, which stops its slot)."""
    deadline = DEADLINE.get()
    if deadline is None:
        return await step
    try:
        return await asyncio.wait_for(step, max(0.0, deadline - asyncio.get_running_loop().time()))
    except TimeoutError:
        raise DeadlineExceeded(f"{PASSED} {when}", hint) from None


class _Lost(Exception):
    """The connection to the runner failed before any byte of the answer."""

    def __init__(self, error: TransportError, runner: Runner) -> None:
        super().__init__(str(error))
        self.error, self.runner = error, runner


@dataclass
class _Asked:
    """One request to a runner: the model, the bytes sent, and what the log says of it."""

    m: Managed
    path: str
    payload: bytes
    request_id: str
    started: float
    route: str  # the client's route (a translated request goes to the runner as a chat)
    stream: bool
    wants_usage: bool
    #: ms it waited for its runner and a slot (``X-Smackctl-Queued-Ms``)
    queued_ms: float = 0.0


class Runners:
    """Requests to the supervisor's runners: a slot, the request, its answer relayed."""

    def __init__(self, scheduler: Scheduler, usage: Usage, request_timeout: float = 600.0) -> None:
        self.scheduler, self.usage = scheduler, usage
        self.http = Upstream(connect_timeout=5.0, read_timeout=request_timeout)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def forward(
        self,
        m: Managed,
        path: str,
        body: dict[str, Any],
        request_id: str,
        started: float,
        route: str,
        wants_usage: bool,
    ) -> Response:
        """``body``, as the runner takes it, to ``m``'s runner; its answer. ``wants_usage``:
        the client asked for the usage event of a stream (the runner always sends one)."""
        stream = bool(body.get("stream"))
        asked = _Asked(
            m, path, json.dumps(body).encode(), request_id, started, route, stream, wants_usage
        )
        for attempt in (1, 2):
            try:
                return await self._attempt(asked)
            except _Lost as lost:
                exc, runner = lost.error, lost.runner
                if self.scheduler.cut.is_set():
                    raise cut_error(m.name, self.scheduler.forced) from exc
                died = await runner_died(runner)
                if attempt == 1 and died:
                    log.warning(
                        "%s: the runner for %s %s before answering; retrying once",
                        request_id, m.name, runner.exit_description(),
                    )  # fmt: skip
                    continue
                raise lost_error(m.name, runner, exc, died, retried=attempt == 2) from exc
        raise AssertionError("unreachable")

    async def _attempt(self, a: _Asked) -> Response:
        """One try: the answer, or ``_Lost`` before any byte of it."""
        stack = contextlib.AsyncExitStack()
        asked = time.perf_counter()
        _, runner = await by_deadline(
            stack.enter_async_context(self.scheduler.slot(a.m.name, len(a.payload))),
            f"while it waited for {a.m.name} (its load, or a slot)",
            "give it a longer X-Smackctl-Deadline, or send it when the model is less busy",
        )
        a.queued_ms = (time.perf_counter() - asked) * 1000
        owner = owner_of(CALLER.get(), self.scheduler.profile.kv_cache.shared)
        if runner.kv is not None:
            runner.kv.owners.add(owner)
            if runner.kv.waiting != []:  # a conversation coming back
                a.payload = await runner.kv.prepare(runner, a.path, a.payload, owner)
        dog = Watchdog(a.m, runner)  # until the answer is over (the stack closes)
        stack.callback(dog.stop)
        headers = {
            "Authorization": f"Bearer {runner.api_key}",
            "Content-Type": "application/json",
            "X-Request-Id": a.request_id,
            OWNER_HEADER: owner,  # whose its saved conversations are (kvstore.py)
        }
        try:
            upstream = await by_deadline(
                self.http.post(*runner.address, a.path, a.payload, headers)
            )
            if upstream.status >= 400 or not a.stream:
                content = await by_deadline(upstream.read())
                await stack.aclose()
                return self._whole(a, upstream.status, content)
            chunks = upstream.chunks()
            first = await by_deadline(anext(chunks, b""))
            ttft = time.perf_counter() - a.started
            if (failed := error_event_of(first)) is not None:
                # before any token: the client gets the error's status and JSON, never a 200
                # stream that just ends
                async for _ in chunks:
                    pass
                await stack.aclose()
                return self._whole(a, 500, failed)
        except TransportError as exc:
            await stack.aclose()
            raise _Lost(exc, runner) from exc
        except BaseException:
            await stack.aclose()
            raise
        relay = _Relay(self, a, runner, upstream, stack, ttft, dog)
        return StreamingResponse(
            relay.body(chunks, first),
            status_code=upstream.status,
            media_type=upstream.content_type or "text/event-stream",
            headers={
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
                "X-Smackctl-Queued-Ms": f"{a.queued_ms:.0f}",
            },  # fmt: skip
        )

    def _whole(self, a: _Asked, status: int, content: bytes) -> Response:
        tokens_in = tokens_out = None
        reason = None
        if status >= 400:
            content, status = map_error(a.m.name, status, content)
            with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
                reason = json.loads(content)["error"]["message"]
        else:
            with contextlib.suppress(ValueError, RecursionError):
                tokens_in, tokens_out = tokens_of(json.loads(content))
        seconds = time.perf_counter() - a.started

        # the log line, metrics and the SQLite row are written after the response is sent:
        # they cost ~0.3 ms that the client need not wait for. An async task, so Starlette
        # runs it on the loop: a sync one would cost a hop to its thread pool per request.
        async def count() -> None:
            self.usage.record(
                a.m.name, a.route, status, a.request_id, tokens_in=tokens_in,
                tokens_out=tokens_out, seconds=seconds, reason=reason,
                busy=max(0.0, seconds - a.queued_ms / 1000),
            )  # fmt: skip

        return Response(
            content, status_code=status, media_type="application/json",
            background=BackgroundTask(count),
            headers={"X-Smackctl-Queued-Ms": f"{a.queued_ms:.0f}"},
        )  # fmt: skip


class _Relay:
    """A streamed answer on its way from a runner to the client: chunks pass through as they
    come; the usage event the runner program adds at the end is kept for the usage
    log and passed on only to a client that asked for it (``stream_options.include_usage``);
    a runner that dies mid-way ends the stream with an error event that says so."""

    def __init__(
        self,
        runners: Runners,
        a: _Asked,
        runner: Runner,
        upstream: Answer,
        stack: contextlib.AsyncExitStack,
        ttft: float,
        dog: Watchdog,
    ) -> None:
        self.runners, self.a, self.runner, self.upstream = runners, a, runner, upstream
        self.stack, self.ttft, self.dog = stack, ttft, dog
        self.tokens_in: int | None = None
        self.tokens_out: int | None = None
        #: the key it is answered for (the stream's end may be run from another task)
        self.caller = CALLER.get()
        self.deadline = DEADLINE.get()

    def _usage_of(self, chunk: bytes) -> bytes:
        """``chunk`` without the usage event unless the client asked for it; its counts kept."""
        counts = tokens_in_stream(chunk)
        if counts is None:
            return chunk
        got_in, got_out = counts
        self.tokens_in = got_in if got_in is not None else self.tokens_in
        self.tokens_out = got_out if got_out is not None else self.tokens_out
        if self.a.wants_usage or self.a.path not in (CHAT, COMPLETIONS):
            return chunk  # asked for, or Anthropic's and the Responses API's own events
        return without_usage_event(chunk)  # OpenAI's usage event, not asked for: left out

    async def body(self, chunks: AsyncIterator[bytes], first: bytes) -> AsyncIterator[bytes]:
        status = 200
        seen = data_lines(first)
        failed = False  # an error event ended the answer: no [DONE] after it
        try:
            if first := self._usage_of(first):
                yield first
            async for chunk in chunks:
                self.dog.last = self.dog.loop.time()  # a sign of life: the hang rule restarts
                seen += data_lines(chunk)
                if failed and b"[DONE]" in chunk:
                    continue
                failed = failed or error_event_of(chunk) is not None
                if self.caller is not None and (why := self.caller.refusal(time.time())):
                    status = 401  # revoked or expired mid-way: ended at once, and said
                    yield sse_error(f"{why} while this request was served",
                                    "authentication_error", "key_revoked")  # fmt: skip
                    return
                if self.deadline is not None and self.dog.loop.time() > self.deadline:
                    status = 504  # its slot is given back as the stream ends
                    yield sse_error(f"{PASSED} while it ran: the answer was stopped",
                                    "deadline_exceeded", "deadline_exceeded")  # fmt: skip
                    return
                if chunk := self._usage_of(chunk):
                    yield chunk
        except TransportError as exc:
            status = 502
            yield await self._cut(exc, seen)
        finally:
            self.upstream.release()
            await self.stack.aclose()
            out = self.tokens_out if self.tokens_out is not None else max(0, seen - 2)
            self.runners.usage.record(
                self.a.m.name, self.a.route, status, self.a.request_id,
                tokens_in=self.tokens_in, tokens_out=out,
                seconds=(took := time.perf_counter() - self.a.started), ttft=self.ttft,
                by=self.caller, busy=max(0.0, took - self.a.queued_ms / 1000),
            )  # fmt: skip

    async def _cut(self, exc: TransportError, seen: int) -> bytes:
        """The error event that ends a stream whose runner went away mid-way."""
        name = self.a.m.name
        log.warning("%s: stream from %s cut: %s", self.a.request_id, name, exc)
        if self.runners.scheduler.cut.is_set():
            forced = self.runners.scheduler.forced
            cut = cut_error(name, forced)
            code = "stopped_at_once" if forced else "drain_timeout"
            return sse_error(f"{cut.message}. Fix: {cut.hint}", cut.error_type, code)
        died = await runner_died(self.runner)
        got = max(0, seen - 1)
        where = f"after {got} token{'s' if got != 1 else ''} of the answer"
        if died:
            what = f"the runner for {name} {self.runner.exit_description()} {where}"
        else:
            what = f"the connection to the runner for {name} broke {where} ({exc})"
        msg = f"{what}; the answer is incomplete. Fix: {crash_fix(name, self.runner)}"
        return sse_error(msg, "runner_crashed", "stream_cut")
