"""Prometheus metrics (prometheus-client), one registry per supervisor.

Counters and histograms are fed by the proxy (requests) and by scheduler events (loads,
unloads, crashes); gauges (queue depth, memory, state) are read from the scheduler at scrape;
the event loop's lag is measured by a task of its own (``LoopLag``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .scheduler import Scheduler

__all__ = ["LAG_WARN", "LoopLag", "Metrics"]

_LATENCY = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


#: a lag of the event loop over this is a warning of `smackctl status`
LAG_WARN = 0.1


class LoopLag:
    """How late the event loop runs what is due: a task sleeps ``every`` seconds and records
    how late it woke. ``worst()``: the largest lag of the last ``window`` seconds, a lag going
    on now included. A stall longer than ``every`` is always seen, as at least the stall less
    ``every``. ``every`` is 0.1 s: at 0.02 s the wake-ups alone cost the supervisor ~0.2 ms of
    CPU per streamed token (0.7 against 0.55 ms; psutil, SmolLM2, 2 cores) and as many wake-ups
    as tokens, idle or not; ``SMACKCTL_LOOP_LAG_EVERY`` sets it (the hostile-input benchmark
    measures at 0.02 s). ``clock``: a seam for the tests."""

    def __init__(
        self,
        every: float = float(os.environ.get("SMACKCTL_LOOP_LAG_EVERY") or 0.1),
        window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.every, self.window, self.clock = every, window, clock
        self._lags: deque[tuple[float, float]] = deque()  # (when it woke, how late)
        self._due: float | None = None  # when the sleeping task is due
        self._task: asyncio.Task[None] | None = None

    def record(self, due: float) -> None:
        """The task woke now, for a sleep that was ``due`` then."""
        now = self.clock()
        self._due = None
        self._lags.append((now, max(0.0, now - due)))
        while self._lags[0][0] < now - self.window:
            self._lags.popleft()

    def worst(self) -> float:
        now = self.clock()
        late = [lag for when, lag in self._lags if when >= now - self.window]
        if self._due is not None:
            late.append(now - self._due)
        return max([0.0, *late])

    def warning(self) -> str | None:
        worst = self.worst()
        if worst <= LAG_WARN:
            return None
        return (
            f"the supervisor's event loop was held for {worst * 1000:.0f} ms in the last "
            f"{self.window:.0f} s (over {LAG_WARN * 1000:.0f} ms: every request and /health "
            "waited); `smackctl logs` shows what ran then"
        )

    async def run(self) -> None:
        while True:
            self._due = self.clock() + self.every
            await asyncio.sleep(self.every)
            self.record(self._due)

    def start(self) -> None:
        """Begin measuring on the running loop (RuntimeError when none runs)."""
        self._task = asyncio.get_running_loop().create_task(self.run(), name="loop-lag")


class _Live(Collector):
    def __init__(
        self, scheduler: Scheduler, started: float, breakers: dict[str, str], lag: LoopLag
    ) -> None:
        self.s = scheduler
        self.started = started
        self.breakers = breakers
        self.lag = lag

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily("smackctl_uptime_seconds", "Seconds since the supervisor started")
        up.add_metric([], time.time() - self.started)
        yield up
        lag = GaugeMetricFamily(
            "smackctl_event_loop_lag_seconds",
            f"The largest lag of the supervisor's event loop in the last {self.lag.window:.0f} s",
        )
        lag.add_metric([], self.lag.worst())
        yield lag
        queue = GaugeMetricFamily(
            "smackctl_queue_depth", "Requests waiting for a slot", labels=["model"]
        )
        flight = GaugeMetricFamily("smackctl_in_flight", "Requests running", labels=["model"])
        ram = GaugeMetricFamily(
            "smackctl_runner_memory_bytes",
            "Memory held by a runner (measured, else estimated)",
            labels=["model", "kind"],
        )
        loaded = GaugeMetricFamily(
            "smackctl_model_loaded", "1 if the model's runner is ready", labels=["model"]
        )
        for m in self.s.models.values():
            queue.add_metric([m.name], m.runner.slots.queued if m.runner else 0)
            flight.add_metric([m.name], m.in_flight)
            loaded.add_metric([m.name], 1 if m.state == "ready" else 0)
            if m.loaded:
                r, v = m.memory()
                ram.add_metric([m.name, "ram"], r)
                ram.add_metric([m.name, "vram"], v)
        yield from (queue, flight, ram, loaded)
        breaker = GaugeMetricFamily(
            "smackctl_breaker_state",
            "A deployment's circuit breaker: 0 closed, 1 half-open, 2 open",
            labels=["deployment"],
        )
        for name, state in self.breakers.items():
            breaker.add_metric([name], {"closed": 0, "half-open": 1, "open": 2}[state])
        yield breaker


class Metrics:
    def __init__(self, scheduler: Scheduler) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "smackctl_requests", "Requests answered", ["model", "route", "status"], registry=r
        )
        self.errors = Counter(
            "smackctl_request_errors", "Requests answered with an error", ["model"], registry=r
        )
        self.tokens = Counter(
            "smackctl_tokens", "Tokens in and out", ["model", "direction"], registry=r
        )
        self.ttft = Histogram(
            "smackctl_time_to_first_token_seconds",
            "Time to the first streamed byte",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.latency = Histogram(
            "smackctl_request_duration_seconds",
            "Whole request time",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.loads = Counter(
            "smackctl_model_loads", "Runners that became ready", ["model"], registry=r
        )
        self.unloads = Counter("smackctl_model_unloads", "Runners unloaded", ["model"], registry=r)
        self.crashes = Counter(
            "smackctl_runner_crashes", "Runners that exited unexpectedly", ["model"], registry=r
        )
        self.breaker_changes = Counter(
            "smackctl_breaker_changes",
            "Circuit breaker changes of state",
            ["deployment", "state"],
            registry=r,
        )
        self.fallbacks = Counter(
            "smackctl_fallbacks",
            "Requests answered by a deployment after another one failed",
            ["deployment"],
            registry=r,
        )
        self.cache = Counter("smackctl_cache", "Response cache lookups", ["result"], registry=r)
        #: deployment → its breaker's state, as the events said (absent: closed)
        self.breakers: dict[str, str] = {}
        self.lag = LoopLag()
        with contextlib.suppress(RuntimeError):  # no loop: an app built only to list its routes
            self.lag.start()
        scheduler.checks.append(self.lag.warning)
        r.register(_Live(scheduler, time.time(), self.breakers, self.lag))
        scheduler.events.listeners.append(self.on_event)

    def on_event(self, ev: dict[str, Any]) -> None:
        if ev.get("event") == "breaker":
            self.breakers[ev["deployment"]] = ev["to"]
            self.breaker_changes.labels(ev["deployment"], ev["to"]).inc()
            return
        if ev.get("event") == "fallback":
            self.fallbacks.labels(ev["deployment"]).inc()
            return
        model = ev.get("model")
        if model is None:
            return
        kind = ev.get("event")
        if kind == "ready":
            self.loads.labels(model).inc()
        elif kind == "unloaded":
            self.unloads.labels(model).inc()
        elif kind == "crash":
            self.crashes.labels(model).inc()

    def request(
        self,
        model: str,
        route: str,
        status: int,
        tokens_in: int | None,
        tokens_out: int | None,
        seconds: float,
        ttft: float | None,
    ) -> None:
        self.requests.labels(model, route, str(status)).inc()
        if status >= 400:
            self.errors.labels(model).inc()
        if tokens_in:
            self.tokens.labels(model, "in").inc(tokens_in)
        if tokens_out:
            self.tokens.labels(model, "out").inc(tokens_out)
        self.latency.labels(model).observe(seconds)
        if ttft is not None:
            self.ttft.labels(model).observe(ttft)

    def render(self) -> bytes:
        return generate_latest(self.registry)
