"""The deployments of the active profile: each with its circuit breaker and its figures (in
flight, time to first byte, served, failed); a remote one with its server, its health check
and its retries. A deployment answers or raises ``Failed`` before its first byte; it keeps
its own breaker and counts its own usage (nothing calls back up to the gateway)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

from smackctl.config import ModelSpec, Profile
from smackctl.daemon.events import Events
from smackctl.daemon.keys import CALLER, Key
from smackctl.daemon.slots import DEADLINE
from smackctl.daemon.usage import Usage, tokens_in_stream, tokens_of, without_usage_event
from smackctl.errors import SmackError
from smackctl.wire import data_lines, sse_error

from .breaker import Breaker, State, backoff
from .call import Call
from .plan import Deployed
from .relay import CHAT, COMPLETIONS, PASSED, by_deadline
from .remote import Failed, Remote, Streamed

if TYPE_CHECKING:
    from .local import LocalModels

__all__ = ["MAX_RETRY_AFTER", "Deployment", "Deployments"]

#: a Retry-After longer than this is not waited for: the next deployment is tried
MAX_RETRY_AFTER = 8.0

log = logging.getLogger("smackctl.gateway")


@dataclass
class Deployment:
    name: str
    spec: ModelSpec
    breaker: Breaker
    remote: Remote | None = None  # None: a model the supervisor runs
    in_flight: int = 0
    ttfb: float | None = None  # moving average, seconds
    healthy: bool = True
    health_error: str = ""
    served: int = 0
    failed: int = 0
    fallbacks_to: int = 0  # requests it answered after another deployment failed

    def observe_ttfb(self, seconds: float) -> None:
        self.ttfb = seconds if self.ttfb is None else 0.7 * self.ttfb + 0.3 * seconds

    def view(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "remote" if self.remote else "local",
            "backend": self.spec.backend,
            "url": self.remote.shown_url if self.remote else None,
            "upstream_model": (self.spec.upstream_model or self.name) if self.remote else None,
            "healthy": self.healthy,
            "health_error": self.health_error,
            "in_flight": self.in_flight,
            "ttfb_ms": None if self.ttfb is None else round(self.ttfb * 1000, 2),
            "served": self.served,
            "failed": self.failed,
            "fallbacks_to": self.fallbacks_to,
            "breaker": self.breaker.view(),
        }


class Deployments:
    """The deployments by name, kept in step with the profile (``sync``)."""

    def __init__(
        self,
        profile: Callable[[], Profile],
        local: LocalModels,
        usage: Usage,
        events: Events,
        *,
        now: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.profile, self.local, self.usage, self.events = profile, local, usage, events
        self.now, self.sleep, self.rand = now, sleep, rand
        self.by_name: dict[str, Deployment] = {}
        self._of: Profile | None = None
        self._health: dict[str, asyncio.Task[None]] = {}

    def sync(self) -> None:
        """Deployments for the active profile (after a switch: new ones, changed ones anew;
        a breaker's state survives when its deployment did not change)."""
        profile = self.profile()
        if profile is self._of:
            return
        self._of = profile
        old, self.by_name = self.by_name, {}
        for name, spec in profile.models.items():
            kept = old.pop(name, None)
            if kept is not None and kept.spec == spec:
                self.by_name[name] = kept
                continue
            if kept is not None:
                self._close(kept)
            self.by_name[name] = self._made(name, spec)
        for gone in old.values():
            self._close(gone)
        for d in self.by_name.values():
            if d.remote is not None and d.name not in self._health:
                self._health[d.name] = asyncio.get_running_loop().create_task(
                    self._watch(d), name=f"health-{d.name}"
                )

    def _made(self, name: str, spec: ModelSpec) -> Deployment:
        breaker = Breaker(name, spec.breaker_open_for, self.now, self._changed)
        return Deployment(name, spec, breaker, Remote(name, spec) if spec.remote else None)

    def get(self, name: str) -> Deployment:
        """A deployment; a model the profile does not name (`models add`) gets one too."""
        d = self.by_name.get(name)
        if d is None:
            d = self.by_name[name] = self._made(name, self.local.spec_of(name))
        return d

    def snapshot(self, names: list[str]) -> dict[str, Deployed]:
        """What the plan reads of each deployment, now."""
        out = {}
        for n in names:
            d = self.get(n)
            busy = d.in_flight if d.remote is not None else self.local.busy(n)
            context = d.spec.context_length if d.remote else d.spec.n_ctx
            # an open breaker decides alone; a failing health check skips a closed one
            healthy = d.healthy or d.breaker.state != "closed"
            price = d.spec.price.input + d.spec.price.output if d.spec.price else 0.0
            out[n] = Deployed(n, d.remote is not None, context, healthy, d.health_error, busy,
                              d.ttfb, price, d.spec.quality or 0)  # fmt: skip
        return out

    def _close(self, d: Deployment) -> None:
        task = self._health.pop(d.name, None)
        if task is not None:
            task.cancel()
        if d.remote is not None:
            asyncio.get_running_loop().create_task(d.remote.aclose())

    async def aclose(self) -> None:
        for task in self._health.values():
            task.cancel()
        self._health.clear()
        for d in self.by_name.values():
            if d.remote is not None:
                await d.remote.aclose()

    def _changed(self, breaker: Breaker, old: State, why: str) -> None:
        log.warning("breaker %s: %s -> %s (%s)", breaker.name, old, breaker.state, why)
        self.events.publish(
            {"event": "breaker", "deployment": breaker.name, "from": old,
             "to": breaker.state, "why": why}
        )  # fmt: skip

    async def _watch(self, d: Deployment) -> None:
        """The health check of a remote deployment. A failed probe counts as a connection
        failure (three in a row open the breaker, with no request lost to learn it); a good
        one only decides a half-open breaker (requests judge a closed one), so a server that
        comes back is let in again with no traffic to probe it."""
        assert d.remote is not None
        while True:
            probing = d.breaker.state != "closed" and d.breaker.allows()
            ok, why = await d.remote.healthy()
            d.healthy, d.health_error = ok, why
            if not ok and (probing or d.breaker.state == "closed"):
                d.breaker.failure(f"health check: {why}", connection=True)
            elif ok and probing:
                d.breaker.success()
            await self.sleep(d.spec.health_interval)

    # -- one attempt --------------------------------------------------------------------------

    async def send(self, d: Deployment, call: Call) -> Response:
        """``d``'s answer, or Failed before its first byte (its breaker told). ``in_flight``
        counts a remote stream until its end."""
        d.in_flight += 1
        started = self.now()
        try:
            if d.remote is None:
                answer = await self._local(d, call)
            else:
                answer = await self._remote(d, call)
        except BaseException as exc:
            d.in_flight -= 1
            if isinstance(exc, Failed):
                d.failed += 1
            else:
                d.breaker.forgo()  # a half-open probe that decided nothing gives its turn back
            raise
        if d.remote is None or not isinstance(answer, StreamingResponse):
            d.in_flight -= 1
        d.observe_ttfb(self.now() - started)
        d.served += 1
        return answer

    async def _local(self, d: Deployment, call: Call) -> Response:
        try:
            answer = await self.local.send(d.name, call)
        except SmackError as exc:
            if exc.status < 500 and exc.status != 429:
                d.breaker.success()  # the request's fault, not the deployment's
                raise
            d.breaker.failure(exc.message, connection=False)
            raise Failed(exc.status, exc.message, error=exc) from exc
        if answer.status_code >= 500 or answer.status_code == 429:
            why = f"answered {answer.status_code}"
            d.breaker.failure(why, connection=False)
            raise Failed(answer.status_code, why, answer=answer)
        d.breaker.success()
        return answer

    async def _remote(self, d: Deployment, call: Call) -> Response:
        assert d.remote is not None
        for attempt in range(d.spec.retries + 1):
            started = self.now()
            body, strip = _counted(d, call)
            try:
                answer = await by_deadline(
                    d.remote.send(call.path, body, call.request_id),
                    f"while {d.name} (a server elsewhere) answered",
                )
            except Failed as exc:
                d.breaker.failure(exc.why, exc.connection)
                self._count(d, call, exc.status, started)
                if attempt == d.spec.retries or d.breaker.state != "closed" or not exc.retry:
                    raise
                wait = exc.retry_after
                if wait is None:
                    wait = backoff(attempt, self.rand)
                elif wait > MAX_RETRY_AFTER:
                    raise Failed(
                        exc.status, f"{exc.why}; it asks to wait {wait:g}s (Retry-After)"
                    ) from exc
                log.info(
                    "%s: %s: %s; retry %d in %.2fs",
                    call.request_id, d.name, exc.why, attempt + 1, wait,
                )  # fmt: skip
                await self.sleep(wait)
                continue
            if isinstance(answer, Streamed):
                return StreamingResponse(
                    self._watched(d, call, answer, started, strip),
                    status_code=answer.status,
                    headers=answer.headers,
                )
            d.breaker.success()
            # after the answer is sent: the SQLite write costs ~4 ms the client need not
            # wait for (measured: benchmarks/gateway.py)
            answer.background = BackgroundTask(
                self._count, d, call, answer.status_code, started, answer
            )
            return answer
        raise AssertionError("unreachable")

    async def _watched(
        self, d: Deployment, call: Call, streamed: Streamed, started: float, strip: bool = False
    ) -> AsyncIterator[bytes]:
        """A remote stream passed on; at its end, its breaker and its usage (the tokens of
        its usage event, which is left out for a client that did not ask: ``strip``) are
        told, under the key it was asked for (its end may run in another task)."""
        caller, deadline = CALLER.get(), DEADLINE.get()
        counts: tuple[int | None, int | None] = (None, None)
        seen = 0  # its events: the tokens out when it sends no usage event (a count, as a
        try:  # local runner's stream is counted when it has none)
            async for chunk in streamed.body:
                seen += data_lines(chunk)
                if deadline is not None and asyncio.get_running_loop().time() > deadline:
                    yield sse_error(f"{PASSED} while it ran: the answer was stopped",
                                    "deadline_exceeded", "deadline_exceeded")  # fmt: skip
                    return
                if (found := tokens_in_stream(chunk)) is not None:
                    counts = found
                    if strip:
                        chunk = without_usage_event(chunk)
                if chunk:
                    yield chunk
        finally:
            with contextlib.suppress(Exception):
                await streamed.body.aclose()
            d.in_flight -= 1
            if streamed.cut is None:
                d.breaker.success()
            else:
                d.breaker.failure(streamed.cut, connection=True)
            if counts[1] is None and call.path in (CHAT, COMPLETIONS):  # role and [DONE]
                counts = (counts[0], max(0, seen - 2))  # are not tokens
            self._count(d, call, streamed.status, started, counts=counts, by=caller)

    def _count(
        self,
        d: Deployment,
        call: Call,
        status: int,
        started: float,
        answer: Response | None = None,
        counts: tuple[int | None, int | None] = (None, None),
        by: Key | None = None,
    ) -> None:
        """A remote attempt in the usage log and the metrics (a local one is its runner's)."""
        tokens_in, tokens_out = counts
        if answer is not None and status < 400:
            with contextlib.suppress(ValueError, RecursionError):
                tokens_in, tokens_out = tokens_of(json.loads(bytes(answer.body)))
        self.usage.record(
            d.name, call.path, status or 502, call.request_id,  # no answer: a bad gateway
            tokens_in=tokens_in, tokens_out=tokens_out, seconds=self.now() - started, by=by,
        )  # fmt: skip

    # -- what is said of them ------------------------------------------------------------------

    def warnings(self) -> list[str]:
        """A line for each deployment whose breaker is not closed, or whose key's variable
        the supervisor does not have (``smackctl status``)."""
        self.sync()
        unset = [
            f"deployment {d.name}: {why}"
            for d in self.by_name.values()
            if d.remote is not None and (why := d.remote.key_unset())
        ]
        return unset + [
            f"deployment {d.name}: circuit breaker {d.breaker.state} since "
            f"{time.strftime('%H:%M:%S', time.localtime(d.breaker.since))} ({d.breaker.why}); "
            "requests go to its fallbacks"
            for d in self.by_name.values()
            if d.breaker.state != "closed"
        ]

    def view(self) -> dict[str, Any]:
        self.sync()
        profile = self.profile()
        return {
            "deployments": [
                self._viewed(d) for n, d in self.by_name.items() if n in profile.models or d.remote
            ],
            "groups": {
                name: {"deployments": list(g.deployments), "policy": g.policy,
                       "fallbacks": list(g.fallbacks), "aliases": list(g.aliases)}
                for name, g in profile.groups.items()
            },
        }  # fmt: skip

    def _viewed(self, d: Deployment) -> dict[str, Any]:
        """``d``'s view; a local model's requests are those its runner served, however they
        came (most never pass a deployment: only a group's, or a fallback's, do), as
        `smackctl status` counts them."""
        view = d.view()
        m = self.local.registry.models.get(d.name) if d.remote is None else None
        if m is not None:
            view["served"] = max(view["served"], m.requests_served)
            view["in_flight"] = max(view["in_flight"], m.in_flight)
        return view


def _counted(d: Deployment, call: Call) -> tuple[dict[str, Any], bool]:
    """The body sent to a priced server elsewhere asks for a stream's usage event (its cost
    is counted from it); ``True`` when the client did not ask for it: it is left out."""
    body = call.body
    if not (d.spec.price and body.get("stream") and call.path in (CHAT, COMPLETIONS)):
        return body, False
    options = body.get("stream_options") or {}
    if options.get("include_usage"):
        return body, False
    return {**body, "stream_options": {**options, "include_usage": True}}, True
