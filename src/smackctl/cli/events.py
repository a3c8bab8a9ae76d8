"""`smackctl events`: the supervisor's events as they happen (``GET /api/events``, SSE)."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any
from urllib.parse import urlencode

import typer

from . import output
from ._common import client, since_time

__all__ = ["events", "line_of"]


#: the fields each line shows first, in this order; the rest follow as key=value
_FIRST = ("model", "deployment", "profile", "phase", "state", "from", "to", "why", "what")


def line_of(ev: dict[str, Any]) -> str:
    """One event as one readable line: its time, its type, then its fields."""
    at = time.strftime("%H:%M:%S", time.localtime(ev.get("at", time.time())))
    rest = {k: v for k, v in ev.items() if k not in ("at", "id", "event") and v is not None}
    fields = [f"{k}={rest.pop(k)}" for k in _FIRST if k in rest]
    fields += [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in rest.items()]
    return f"{at}  {ev.get('event', '?'):<10} {' '.join(fields)}".rstrip()


def events(
    ctx: typer.Context,
    since: Annotated[
        str | None, typer.Option(help="Also the kept events of this long ago: 30m, 2h, 1d.")
    ] = None,
    type_: Annotated[
        list[str] | None,
        typer.Option("--type", "-t", help="Only events of this type (crash, breaker, …)."),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow/--no-follow", help="Keep printing new events.")
    ] = True,
    json_: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
) -> None:
    """Follow the supervisor's events: loads, unloads, crashes, evictions, profile switches
    and reloads, circuit breakers. Without --since: from now on."""
    query: dict[str, Any] = {"follow": int(follow)}
    query["since"] = since_time(since) if since else time.time()
    if type_:
        query["types"] = ",".join(type_)
    with client(ctx, autostart=False) as c:
        try:
            for event in c.events("GET", "/api/events?" + urlencode(query)):
                ev = event.json()
                if not isinstance(ev, dict):
                    continue
                if json_:
                    print(json.dumps(ev), flush=True)
                elif ev.get("event") == "dropped":
                    output.warn(f"{ev['count']} event(s) dropped: this terminal read too slowly")
                else:
                    print(line_of(ev), flush=True)
        except KeyboardInterrupt:
            pass
