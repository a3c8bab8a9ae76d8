"""Past one machine: remote deployments, groups, fallback chains, retries, circuit breakers.

A name a request gives resolves to a chain of deployments:

- a ``backend: openai`` model: that server (its ``url``), then its ``fallbacks``;
- a group: its deployments in the order of its ``policy`` (``priority``: as listed;
  ``round-robin``; ``least-busy``: fewest requests in flight; ``latency``: the lowest moving
  average of time to first byte, untried first), then its ``fallbacks``;
- a local model with ``fallbacks``: itself, then them.

A plain local model without fallbacks never comes here (the proxy's own path, no cost).

Along the chain (at most ``MAX_HOPS`` deployments), one is skipped while its breaker is open,
while its health check fails, or when the prompt cannot fit its context; it is tried when
it may be, and a connection error, a timeout, a 5xx or a 429 **before the first byte** of the
answer goes back moves on to the next (after ``retries`` on a remote one, with exponential
backoff and full jitter, or its ``Retry-After``). After the first byte nothing switches: a
cut stream ends with an error event. Upstream URLs come from the profile only (the request
schemas refuse fields such as ``api_base``); API keys come from the environment variable the
profile names and appear in no log, view or error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

from smackctl.config import ModelSpec, Profile
from smackctl.errors import NoDeployment, SmackError

from .breaker import Breaker, State, backoff
from .metrics import Metrics
from .remote import Failed, Remote, usage_of
from .scheduler import Scheduler

__all__ = ["MAX_HOPS", "Deployment", "Gateway"]

MAX_HOPS = 5
#: a Retry-After longer than this is not waited for: the next deployment is tried
MAX_RETRY_AFTER = 8.0

log = logging.getLogger("smackctl.gateway")

LocalForward = Callable[[str, str, dict[str, Any], str], Awaitable[Response]]


@dataclass
class Deployment:
    name: str
    spec: ModelSpec
    breaker: Breaker
    remote: Remote | None = None  # None: a local model (its runner, the proxy's path)
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


def _estimated_tokens(body: dict[str, Any]) -> int:
    """A prompt's tokens, estimated before sending: its text's characters over 4 (what
    English takes in the common tokenizers), so a fallback is chosen without a tokenizer."""
    text = json.dumps(
        [body.get(k) for k in ("messages", "prompt", "input", "system", "tools", "instructions")]
    )
    return len(text) // 4


def final_status(statuses: list[int]) -> int:
    """The status of a request no deployment answered: 502 when every one tried answered
    what cannot be passed on (too large, undecodable), 504 when every one ran past its
    deadline; else 503 (down, refusing, skipped: try again later)."""
    if statuses and len(set(statuses)) == 1 and statuses[0] in (502, 504):
        return statuses[0]
    return 503


class Gateway:
    def __init__(
        self,
        scheduler: Scheduler,
        local: LocalForward,
        metrics: Metrics | None = None,
        *,
        now: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.scheduler, self.local, self.metrics = scheduler, local, metrics
        self.now, self.sleep, self.rand = now, sleep, rand
        self.deployments: dict[str, Deployment] = {}
        self._profile: Profile | None = None
        self._turn: dict[str, int] = {}  # round-robin position per group
        self._health: dict[str, asyncio.Task[None]] = {}

    # -- the profile's deployments --------------------------------------------------------

    def sync(self) -> None:
        """Deployments for the active profile (after a switch: new ones, changed ones anew;
        a breaker's state survives when its deployment did not change)."""
        profile = self.scheduler.profile
        if profile is self._profile:
            return
        self._profile = profile
        old, self.deployments = self.deployments, {}
        for name, spec in profile.models.items():
            kept = old.pop(name, None)
            if kept is not None and kept.spec == spec:
                self.deployments[name] = kept
                continue
            if kept is not None and kept.remote is not None:
                self._close(kept)
            breaker = Breaker(name, spec.breaker_open_for, self.now, self._changed)
            remote = Remote(name, spec) if spec.remote else None
            self.deployments[name] = Deployment(name, spec, breaker, remote)
        for gone in old.values():
            self._close(gone)
        for d in self.deployments.values():
            if d.remote is not None and d.name not in self._health:
                self._health[d.name] = asyncio.get_running_loop().create_task(
                    self._watch(d), name=f"health-{d.name}"
                )

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
        for d in self.deployments.values():
            if d.remote is not None:
                await d.remote.aclose()

    def _changed(self, breaker: Breaker, old: State, why: str) -> None:
        log.warning("breaker %s: %s -> %s (%s)", breaker.name, old, breaker.state, why)
        self.scheduler.events.publish(
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

    # -- the chain of a name --------------------------------------------------------------

    def chain(self, name: str | None) -> list[str] | None:
        """The deployments to try for ``name``, in order; None for a local model without
        fallbacks (the proxy's own path)."""
        self.sync()
        profile = self.scheduler.profile
        name = name or profile.routing.default_model
        if not name:
            return None
        target = self._group_of(profile, name) or profile.resolve(name)
        if target is None:
            return None  # an unknown name, or one added by `models add`: the proxy says so
        if target not in profile.groups:
            spec = profile.models[target]
            if not spec.remote and not spec.fallbacks:
                return None
        out: list[str] = []
        self._expand(profile, target, out, set())
        return out[:MAX_HOPS]

    def _group_of(self, profile: Profile, name: str) -> str | None:
        for gname, group in profile.groups.items():
            if name == gname or name in group.aliases:
                return gname
        return None

    def _expand(self, profile: Profile, name: str, out: list[str], seen: set[str]) -> None:
        if name in seen:
            return
        seen.add(name)
        if name in profile.groups:
            group = profile.groups[name]
            for d in self._ordered(name, list(group.deployments), group.policy):
                if d not in out:
                    out.append(d)
            fallbacks: tuple[str, ...] = group.fallbacks
        else:
            if name not in out:
                out.append(name)
            fallbacks = profile.models[name].fallbacks
        for f in fallbacks:
            self._expand(profile, f, out, seen)

    def _ordered(self, group: str, names: list[str], policy: str) -> list[str]:
        deps = [self.deployments[n] for n in names]
        if policy == "round-robin":
            turn = self._turn.get(group, 0)
            self._turn[group] = turn + 1
            k = turn % len(names)
            return names[k:] + names[:k]
        if policy == "least-busy":
            return [d.name for d in sorted(deps, key=self._busy)]
        if policy == "latency":
            return [d.name for d in sorted(deps, key=lambda d: d.ttfb or 0.0)]
        return names

    def _busy(self, d: Deployment) -> int:
        """Requests in flight (streams until their end) and queued, for ``least-busy``."""
        m = self.scheduler.models.get(d.name) if d.remote is None else None
        if m is not None:
            return m.in_flight + (m.runner.slots.queued if m.runner is not None else 0)
        return d.in_flight

    # -- forwarding -----------------------------------------------------------------------

    async def forward(
        self, asked: str, chain: list[str], path: str, body: dict[str, Any], request_id: str
    ) -> Response:
        errors: list[str] = []  # "NAME: why" of each deployment skipped or failed so far
        statuses: list[int] = []  # of each deployment that failed
        tokens = _estimated_tokens(body)
        for name in chain:
            d = self.deployments[name]
            if (skip := self._skip(d, path, tokens)) is not None:
                errors.append(f"{name}: {skip}")
                continue
            try:
                answer = await self._one(d, path, body, request_id)
            except Failed as exc:
                errors.append(f"{name}: {exc.why}")
                statuses.append(exc.status)
                log.warning("%s: %s failed before its answer began (%s)", request_id, name, exc.why)
                continue
            if errors:  # another deployment was skipped or failed first
                d.fallbacks_to += 1
                self.scheduler.events.publish({"event": "fallback", "deployment": name})
                log.info("%s: answered by %s after %s", request_id, name, "; ".join(errors))
                answer.headers["X-Smackctl-Fallback-From"] = ",".join(
                    e.split(":", 1)[0] for e in errors
                )
            answer.headers["X-Smackctl-Deployment"] = name
            return answer
        failed = NoDeployment(
            f"no deployment of {asked} could answer: " + "; ".join(errors),
            "see `smackctl backends` for each deployment's state; none answered, so the "
            "request is safe to send again",
        )
        failed.status = final_status(statuses)
        raise failed

    def _skip(self, d: Deployment, path: str, tokens: int) -> str | None:
        if d.remote is not None and not path.startswith("/v1/"):
            return f"{path} is llama-server's own route, not sent to a server elsewhere"
        context = d.spec.context_length if d.remote else d.spec.n_ctx
        if context is not None and tokens > context:
            return f"the prompt (~{tokens} tokens) does not fit its context of {context}"
        if d.remote is not None and not d.healthy and d.breaker.state == "closed":
            return f"its health check fails ({d.health_error})"
        if not d.breaker.allows():
            return (
                f"its circuit breaker is {d.breaker.state} ({d.breaker.why}); "
                f"a probe in {d.breaker.retry_in():.1f}s"
            )
        return None

    async def _one(
        self, d: Deployment, path: str, body: dict[str, Any], request_id: str
    ) -> Response:
        """One deployment's answer, or Failed before its first byte (the breaker told).
        ``in_flight`` counts a remote stream until its end (``_ended``)."""
        d.in_flight += 1
        started = self.now()
        try:
            if d.remote is None:
                answer = await self._local(d, path, body, request_id)
            else:
                answer = await self._remote(d, path, body, request_id)
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

    async def _local(
        self, d: Deployment, path: str, body: dict[str, Any], request_id: str
    ) -> Response:
        try:
            answer = await self.local(d.name, path, body, request_id)
        except SmackError as exc:
            if exc.status < 500 and exc.status != 429:
                d.breaker.success()  # the request's fault, not the deployment's
                raise
            d.breaker.failure(exc.message, connection=False)
            raise Failed(exc.status, exc.message) from exc
        if answer.status_code >= 500 or answer.status_code == 429:
            why = f"answered {answer.status_code}"
            d.breaker.failure(why, connection=False)
            raise Failed(answer.status_code, why)
        d.breaker.success()
        return answer

    async def _remote(
        self, d: Deployment, path: str, body: dict[str, Any], request_id: str
    ) -> Response:
        assert d.remote is not None
        for attempt in range(d.spec.retries + 1):
            started = self.now()
            try:
                answer = await d.remote.send(
                    path, body, request_id, self._ended(d, path, request_id, started)
                )
            except Failed as exc:
                d.breaker.failure(exc.why, exc.connection)
                asyncio.get_running_loop().call_soon(
                    self._usage, d, path, exc.status, request_id, started
                )
                if attempt == d.spec.retries or d.breaker.state != "closed":
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
                    request_id, d.name, exc.why, attempt + 1, wait,
                )  # fmt: skip
                await self.sleep(wait)
                continue
            if not isinstance(answer, StreamingResponse):
                d.breaker.success()
                # after the answer is sent: the SQLite write costs ~4 ms the client need not
                # wait for (measured: benchmarks/gateway.py)
                answer.background = BackgroundTask(
                    self._usage, d, path, answer.status_code, request_id, started, answer
                )
            return answer
        raise AssertionError("unreachable")

    def _ended(
        self, d: Deployment, path: str, request_id: str, started: float
    ) -> Callable[[int, str | None], None]:
        """What a streamed answer calls at its end: its status, and why it was cut."""

        def ended(status: int, cut: str | None) -> None:
            d.in_flight -= 1
            if cut is None:
                d.breaker.success()
            else:
                d.breaker.failure(cut, connection=True)
            self._usage(d, path, status, request_id, started)

        return ended

    def _usage(
        self,
        d: Deployment,
        path: str,
        status: int,
        request_id: str,
        started: float,
        answer: Response | None = None,
    ) -> None:
        """A remote request in the usage log and the metrics (a local one is the proxy's)."""
        tokens_in = tokens_out = None
        if answer is not None and status < 400:
            # counts that are not counts (negative, strings) are unknown: the row is written
            tokens_in, tokens_out = usage_of(bytes(answer.body))
        status = status or 502  # no answer at all: a bad gateway, as the client sees it
        seconds = self.now() - started
        with contextlib.suppress(Exception):  # the usage log must never fail a request
            self.scheduler.store.log_request(
                d.name, path, status, tokens_in, tokens_out, seconds * 1000, request_id
            )
        if self.metrics is not None:
            self.metrics.request(d.name, path, status, tokens_in, tokens_out, seconds, None)

    def warnings(self) -> list[str]:
        """A line for each deployment whose breaker is not closed (``smackctl status``)."""
        self.sync()
        return [
            f"deployment {d.name}: circuit breaker {d.breaker.state} since "
            f"{time.strftime('%H:%M:%S', time.localtime(d.breaker.since))} ({d.breaker.why}); "
            "requests go to its fallbacks"
            for d in self.deployments.values()
            if d.breaker.state != "closed"
        ]

    def view(self) -> dict[str, Any]:
        self.sync()
        profile = self.scheduler.profile
        return {
            "deployments": [d.view() for d in self.deployments.values()],
            "groups": {
                name: {"deployments": list(g.deployments), "policy": g.policy,
                       "fallbacks": list(g.fallbacks), "aliases": list(g.aliases)}
                for name, g in profile.groups.items()
            },
        }  # fmt: skip
