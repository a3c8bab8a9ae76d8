"""Prometheus metrics (prometheus-client), one registry per supervisor.

Counters and histograms are fed by the proxy (requests) and by scheduler events (loads,
unloads, crashes); gauges (queue depth, memory, state) are read from the scheduler at scrape.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .scheduler import Scheduler

__all__ = ["Metrics"]

_LATENCY = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _Live(Collector):
    def __init__(self, scheduler: Scheduler, started: float, breakers: dict[str, str]) -> None:
        self.s = scheduler
        self.started = started
        self.breakers = breakers

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily("smackctl_uptime_seconds", "Seconds since the supervisor started")
        up.add_metric([], time.time() - self.started)
        yield up
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
        r.register(_Live(scheduler, time.time(), self.breakers))
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
