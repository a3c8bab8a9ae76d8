"""What every command shares: global options and a client that starts the supervisor."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from smackctl.client import Client

__all__ = [
    "Globals",
    "client",
    "follow_events",
    "globals_of",
    "raise_for_event",
    "since_time",
]


@dataclass
class Globals:
    url: str | None = None
    autostart: bool = True
    profile: str | None = None


def globals_of(ctx: typer.Context) -> Globals:
    root = ctx.find_root()
    if not isinstance(root.obj, Globals):
        root.obj = Globals(autostart=os.environ.get("SMACKCTL_NO_AUTOSTART", "") in ("", "0"))
    return root.obj


def client(ctx: typer.Context, *, autostart: bool | None = None, timeout: float = 30.0) -> Client:
    """A client of the running supervisor, starting it first unless told not to."""
    from smackctl.client import Client, default_url

    from . import output
    from ._lifecycle import ensure_running

    g = globals_of(ctx)
    if g.url is not None and not g.url.lower().startswith(("http://", "https://")):
        from smackctl.errors import UsageError

        said = "SMACKCTL_URL" if os.environ.get("SMACKCTL_URL") == g.url else "--url"
        raise UsageError(
            f"{said} {g.url}: not a supervisor's URL", "write http://HOST:PORT (or https://)"
        )
    url = g.url or default_url()
    start = g.autostart if autostart is None else autostart
    if ensure_running(url, start, g.profile, explicit=g.url is not None):
        output.info(f"started the supervisor at {url}")
    return Client(url, timeout=timeout, explicit=g.url is not None)


def follow_events(events: Iterable[dict[str, Any]], quiet: bool = False) -> dict[str, Any]:
    """Show a supervisor task's NDJSON events as progress (bars on a terminal, plain lines
    otherwise); return the last event, which says how it ended."""
    from . import output

    last: dict[str, Any] = {}
    with output.progress_bars() as bars:
        for ev in events:
            last = ev
            kind, model = ev.get("event"), ev.get("model", "")
            if quiet:
                continue
            if kind == "switch":
                waiting = ev.get("waiting") or {}
                said = ", ".join(f"{n} request(s) of {m}" for m, n in waiting.items())
                bars.update("switch", f"{ev['phase']}: waiting for {said}" if said else ev["phase"])
            elif kind == "progress":
                bars.update(model, ev["phase"], ev.get("done") or 0, ev.get("total"))
            elif kind == "state":
                bars.update(model, ev["state"])
            elif kind in ("ready", "pulled"):
                bars.update(model, "ready" if kind == "ready" else "on disk", 1, 1)
    return last


def raise_for_event(
    last: dict[str, Any], message: str | None = None, hint: str | None = None
) -> None:
    """Raise the error a supervisor task's ``error`` event stands for, by its HTTP status:
    400/404 a usage error (exit 2), 507 not enough memory, anything else a load error.
    ``message`` replaces the event's; ``hint`` is used when the event has none."""
    if last.get("event") != "error":
        return
    from smackctl.errors import InsufficientMemory, ModelLoadError, UsageError

    cls = {400: UsageError, 404: UsageError, 507: InsufficientMemory}.get(
        last.get("status", 0), ModelLoadError
    )
    raise cls(message or last["message"], last.get("hint") or hint)


def since_time(text: str) -> float:
    """The unix time ``--since TEXT`` (30m, 2h, 7d) ago; the same syntax as a profile's ttl."""
    import time

    from smackctl.config import parse_duration
    from smackctl.errors import UsageError

    try:
        return time.time() - parse_duration(text)
    except ValueError:
        raise UsageError(f"--since {text!r} is not a duration", "write e.g. 30m, 2h, 7d") from None
