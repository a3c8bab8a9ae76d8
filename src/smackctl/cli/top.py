"""`smackctl top`: a live view of the models, their memory, requests and throughput."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

import typer

from . import output
from ._common import client

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON only.")]

__all__ = ["top"]


def _frame(st: dict[str, Any], rates: dict[str, float], live: bool = False) -> Any:
    """Two lines over the table (each fits 80 columns), then a row a model; ``live``: the
    view redraws until q."""
    mem = st["memory"]
    head = (
        f"smackctl {st['version']}  pid {st['pid']}  profile {st['profile']}  up "
        f"{output.human_duration(st['uptime'])}\nRAM {output.human_bytes(mem['used_ram'])}"
        f" of a {output.human_bytes(mem['budget_ram'])} budget" + ("   (q quits)" if live else "")
    )
    rows = []
    for m in st["models"]:
        if m["state"] == "stopped" and not m["requests_served"]:
            continue
        rate = rates.get(m["name"])
        rows.append(
            [
                m["name"],
                m["state"],
                # what the runner holds; a stopped model holds nothing (its estimate is for
                # `models load --estimate-only`)
                output.human_bytes(m["rss"] or m["estimated_ram"])
                if m["state"] in ("ready", "starting")
                else "-",
                output.human_bytes(m["measured_vram"]) if m["measured_vram"] else "-",
                f"{rate:.1f}" if rate is not None else "-",
                m["in_flight"],
                _queued(m),
                m["requests_served"],
            ]
        )
    cols = ["MODEL", "STATE", "RAM", "VRAM", "TOKENS/S", "IN FLIGHT", "QUEUED", "REQUESTS"]
    return output.frame(head, cols, rows)


def _queued(m: dict[str, Any]) -> str:
    """``3 (1 batch), ~4s``: how many wait, how many of them batch, the expected wait."""
    if not m["queued"]:
        return "0"
    batch = (m.get("queued_by_priority") or {}).get("batch", 0)
    return (
        f"{m['queued']}"
        + (f" ({batch} batch)" if batch else "")
        + (f", ~{m['expected_wait']:.0f}s" if m.get("expected_wait") else "")
    )


def top(
    ctx: typer.Context,
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 1.0,
) -> None:
    """A live view of the runners: state, memory against the budget, tokens/s, queues."""
    with client(ctx, autostart=False) as c:
        st = c.get("/api/status")
        if once or not output.is_tty():
            output.render(_frame(st, {}))
            return
        last = {m["name"]: (m["tokens_out"], time.monotonic()) for m in st["models"]}
        with _raw_stdin() as key, output.live(_frame(st, {}, live=True)) as update:
            while key(interval) != "q":
                st = c.get("/api/status")
                now = time.monotonic()
                rates = {}
                for m in st["models"]:
                    prev, then = last.get(m["name"], (m["tokens_out"], now))
                    rates[m["name"]] = (m["tokens_out"] - prev) / max(now - then, 1e-6)
                    last[m["name"]] = (m["tokens_out"], now)
                update(_frame(st, rates, live=True))


class _raw_stdin:  # noqa: N801 - used as a context manager factory
    """Read single keys without echo, with a timeout (POSIX terminals)."""

    def __enter__(self) -> Any:
        import select
        import termios
        import tty

        self.fd = sys.stdin.fileno()
        self.old = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)

        def key(timeout: float) -> str | None:
            ready, _, _ = select.select([sys.stdin], [], [], timeout)
            return sys.stdin.read(1) if ready else None

        return key

    def __exit__(self, *exc: object) -> None:
        import termios

        termios.tcsetattr(self.fd, termios.TCSADRAIN, self.old)
