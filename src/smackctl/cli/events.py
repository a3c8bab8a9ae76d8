"""`smackctl events`: the supervisor's events as they happen (``GET /api/events``, SSE);
`smackctl plugins list`: the slash-command plugins installed and enabled."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any
from urllib.parse import urlencode

import typer

from . import output
from ._common import client, since_time
from ._group import Group

__all__ = ["events", "line_of", "plugins_app"]

plugins_app = typer.Typer(
    cls=Group,
    rich_markup_mode=None,
    help="Slash-command plugins: installed, and enabled by the active profile.",
    no_args_is_help=True,
)


@plugins_app.command("list")
def plugins_list(
    ctx: typer.Context,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """The plugins installed in smackctl's Python and which the active profile enables
    (`plugins: {NAME: {settings}}` in the profile; none is by default)."""
    with client(ctx, autostart=False) as c:
        rows = c.get("/api/plugins")
    if json_:
        output.print_json(rows)
        return
    output.table(
        ["COMMAND", "ENABLED", "FROM", "WHAT IT DOES"],
        [
            [f"/{p['name']}", "yes" if p["enabled"] else "no", p["source"] or "-",
             p["summary"] if not p["error"] else f"cannot run: {p['error']}"]
            for p in rows
        ],
    )  # fmt: skip


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
            for line in c.stream_lines("GET", "/api/events?" + urlencode(query)):
                if not line.startswith("data: "):
                    continue
                ev = json.loads(line[6:])
                if json_:
                    print(json.dumps(ev), flush=True)
                elif ev.get("event") == "dropped":
                    output.warn(f"{ev['count']} event(s) dropped: this terminal read too slowly")
                else:
                    print(line_of(ev), flush=True)
        except KeyboardInterrupt:
            pass
