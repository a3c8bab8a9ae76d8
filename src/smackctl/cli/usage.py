"""`smackctl usage | backends`: what was served, by whom."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from smackctl.wire import USAGE_COLUMNS, usage_csv

from . import output
from ._common import client, since_time

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON only.")]

__all__ = ["backends", "usage"]


def usage(
    ctx: typer.Context,
    since: Annotated[str, typer.Option(help="How far back: 30m, 12h, 7d.")] = "7d",
    by: Annotated[
        str, typer.Option(help="model, key or deployment (a key sees only its own).")
    ] = "model",
    csv_: Annotated[bool, typer.Option("--csv", help="Print CSV, for a spreadsheet.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Requests, tokens, errors, compute seconds and cost per model, key or deployment per
    day, from the supervisor's SQLite log (cost: where a deployment has a `price`)."""
    with client(ctx, autostart=False) as c:
        rows = c.get("/api/usage", params={"since": str(since_time(since)), "by": by})
    if json_:
        output.print_json(rows)
        return
    fields = ["day", by, *USAGE_COLUMNS]
    if csv_:
        sys.stdout.write(usage_csv(rows, by))
        return
    output.table(
        [
            "DAY",
            by.upper(),
            "REQUESTS",
            "TOKENS IN",
            "TOKENS OUT",
            "ERRORS",
            "AVG MS",
            "SECONDS",
            "USD",
        ],  # fmt: skip
        [
            [r["day"], r[by] or "-", *(r[f] for f in fields[2:8]), f"{r['cost'] or 0:.4f}"]
            for r in rows
        ],  # fmt: skip
    )


def backends(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Deployments (local models and servers elsewhere): circuit breakers, health, groups."""
    with client(ctx, autostart=False) as c:
        view = c.get("/api/backends")
    if json_:
        output.print_json(view)
        return
    rows = []
    for d in view["deployments"]:
        b = d["breaker"]
        breaker = b["state"] if b["state"] == "closed" else f"{b['state']}: {b['why']}"
        rows.append(
            [
                d["name"],
                d["url"] or d["backend"],
                breaker,
                "yes" if d["healthy"] else f"no: {d['health_error']}",
                d["in_flight"],
                "-" if d["ttfb_ms"] is None else f"{d['ttfb_ms']:.0f}",
                d["served"],
                d["failed"],
            ]
        )
    output.table(
        ["DEPLOYMENT", "WHERE", "BREAKER", "HEALTHY", "IN FLIGHT", "TTFB MS", "SERVED", "FAILED"],
        rows,
    )
    for name, g in view["groups"].items():
        fallbacks = f", then {', '.join(g['fallbacks'])}" if g["fallbacks"] else ""
        print(f"group {name} ({g['policy']}): {', '.join(g['deployments'])}{fallbacks}")
