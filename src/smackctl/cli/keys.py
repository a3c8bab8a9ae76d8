"""`smackctl keys create | list | show | revoke | rotate | audit`: keys for other people and
apps, each with a scope and the models it may use (the operator's token stays the admin's)."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any

import typer

from smackctl.errors import UsageError
from smackctl.units import utc_minute

from . import output
from ._common import client, since_time
from ._group import Group

__all__ = ["keys_app"]

keys_app = typer.Typer(
    cls=Group,
    rich_markup_mode=None,
    help="Keys for other people and apps: a scope, the models they may use, an expiry.",
    no_args_is_help=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON only.")]
NameArg = Annotated[str, typer.Argument(help="The key's name.")]


def _when(at: float | None, none: str = "never") -> str:
    return none if at is None else utc_minute(at)


def _issued(made: dict[str, Any], json_: bool, what: str) -> None:
    """The token on stdout, once (with ``--json``, in the whole answer); the rest on stderr."""
    if json_:
        output.print_json(made)
        return
    print(made["key"])
    sys.stdout.flush()
    output.info(
        f"{what} key {made['name']} (scope {made['scope']}, models "
        f"{','.join(made['models'])}, expires {_when(made['expires'])}): it is shown this once; "
        "clients send it as `Authorization: Bearer KEY` (OPENAI_API_KEY)"
    )


@keys_app.command()
def create(
    ctx: typer.Context,
    name: NameArg,
    scope: Annotated[
        str, typer.Option(help="inference (the APIs clients speak), metrics, or admin.")
    ] = "inference",
    models: Annotated[
        str, typer.Option(help="The models (names, aliases, groups) it may use: a,b or *.")
    ] = "*",
    expires: Annotated[
        str, typer.Option(help="When it stops working: 90m, 12h, 30d, 2w, or never.")
    ] = "never",
    priority: Annotated[
        str, typer.Option(help="interactive, or batch (its queued requests go after).")
    ] = "interactive",
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens (in and out) per minute.")] = None,
    tokens_per_day: Annotated[int | None, typer.Option(help="Tokens per UTC day.")] = None,
    max_parallel: Annotated[int | None, typer.Option(help="Requests at a time.")] = None,
    budget_tokens: Annotated[int | None, typer.Option(help="Tokens per period.")] = None,
    budget_seconds: Annotated[
        float | None, typer.Option(help="Compute seconds (time answering it) per period.")
    ] = None,
    budget_usd: Annotated[
        float | None, typer.Option(help="USD per period, where a deployment has a `price`.")
    ] = None,
    period: Annotated[
        str, typer.Option(help="The budgets' period: day, month (from the 1st, UTC) or none.")
    ] = "month",
    json_: JsonOpt = False,
) -> None:
    """Make a key and print it, once: alone on stdout (`--json`: with what it may do). Over
    a limit its requests get 429 with Retry-After (and OpenAI's x-ratelimit-* headers)."""
    limits = {
        "rpm": rpm, "tpm": tpm, "tokens_per_day": tokens_per_day, "max_parallel": max_parallel,
        "budget_tokens": budget_tokens, "budget_seconds": budget_seconds,
        "budget_usd": budget_usd, "period": period,
    }  # fmt: skip
    body = {
        "name": name, "scope": scope, "models": [m.strip() for m in models.split(",")],
        "expires": expires,
        "priority": priority, "limits": {k: v for k, v in limits.items() if v is not None},
    }  # fmt: skip
    with client(ctx, autostart=False) as c:
        made = c.post("/api/keys", body)
    _issued(made, json_, "made")  # its secret first: nothing after it may lose it
    for u in made.get("unknown_models") or []:  # made as asked (another profile's), but said
        also = f" (did you mean {u['did_you_mean']}?)" if u.get("did_you_mean") else ""
        output.warn(f"no model {u['name']} is known here{also}: the key may use it once a "
                    "profile that has it is active")  # fmt: skip


@keys_app.command("list")
def list_(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Every key: its scope, models, expiry, and whether it was revoked (never the key)."""
    with client(ctx, autostart=False) as c:
        keys = c.get("/api/keys")
    if json_:
        output.print_json(keys)
        return
    output.table(
        ["NAME", "SCOPE", "MODELS", "CREATED", "EXPIRES", "STATE"],
        [
            [
                k["name"],
                k["scope"],
                ",".join(k["models"]),
                _when(k["created"]),
                _when(k["expires"]),
                _state(k),
            ]  # fmt: skip
            for k in keys
        ],
    )


def _state(k: dict[str, Any]) -> str:
    if k["revoked"] is not None:
        return f"revoked {_when(k['revoked'])}"
    if k["expires"] is not None and k["expires"] <= time.time():
        return "expired"
    return "active"


@keys_app.command()
def show(ctx: typer.Context, name: NameArg, json_: JsonOpt = False) -> None:
    """One key: what it may do and what it used today (UTC) and over the last 30 days."""
    with client(ctx, autostart=False) as c:
        k = c.get(f"/api/keys/{name}")
    if json_:
        output.print_json(k)
        return
    print(f"key {k['name']}: {_state(k)}, scope {k['scope']}, models {','.join(k['models'])}")
    print(f"  token {k['prefix']}…, created {_when(k['created'])}, expires {_when(k['expires'])}")
    if k["preferences"]:
        print(f"  preferences {json.dumps(k['preferences'])}")
    if k["limits"]:
        print("  limits " + ", ".join(f"{n} {v}" for n, v in k["limits"].items()))
    if "counters" in k:
        c = k["counters"]
        left = _left(k["limits"], c)
        print(f"  now: {c['requests_last_minute']} request(s) and {c['tokens_last_minute']} "
              f"tokens in the last minute, {c['tokens_today']} tokens today, "
              f"{c['in_flight']} in flight; this {c['period']}: {c['period_tokens']} tokens, "
              f"{c['period_seconds']:g} compute s{left}; next reset "
              f"{_when(c['next_reset'])}")  # fmt: skip
    for label, u in k["used"].items():
        print(
            f"  used {label.replace('_', ' ')}: {u['requests']} request(s), "
            f"{u['tokens_in']} tokens in, {u['tokens_out']} out, {u['errors']} error(s)"
        )


def _left(limits: dict[str, Any], c: dict[str, Any]) -> str:
    parts = []
    if "budget_tokens" in limits:
        parts.append(f"{max(0, limits['budget_tokens'] - c['period_tokens'])} tokens")
    if "budget_seconds" in limits:
        parts.append(f"{max(0.0, limits['budget_seconds'] - c['period_seconds']):g} s")
    if "budget_usd" in limits:
        parts.append(f"{max(0.0, limits['budget_usd'] - c['period_usd']):.4f} USD")
    if "tokens_per_day" in limits:
        parts.append(f"{max(0, limits['tokens_per_day'] - c['tokens_today'])} tokens today")
    return f" ({', '.join(parts)} left)" if parts else ""


@keys_app.command()
def prefer(
    ctx: typer.Context,
    name: NameArg,
    model: Annotated[
        str | None, typer.Option(help="The model for requests that name none (or `default`).")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="A sampling default, FIELD=VALUE (temperature=0.2); again for more."
        ),
    ] = None,
    context: Annotated[
        str | None,
        typer.Option(help="Only for requests that send `X-Smackctl-Context: CONTEXT`."),
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Forget these preferences first.")] = False,
    json_: JsonOpt = False,
) -> None:
    """A key's preferences: the model and sampling its requests get when they leave them out,
    for every request or for one context (code, chat…)."""
    with client(ctx, autostart=False) as c:
        prefs = {} if clear and not context else c.get(f"/api/keys/{name}/preferences")
        target = prefs.setdefault("contexts", {}).setdefault(context, {}) if context else prefs
        if clear and context:
            target.clear()
        if model is not None:
            target["model"] = model
        for item in set_ or []:
            field, sep, value = item.partition("=")
            try:
                number = float(value) if "." in value or "e" in value.lower() else int(value)
            except ValueError:
                sep = ""
            if not sep:
                raise UsageError(
                    f"--set {item!r} is not FIELD=NUMBER", "e.g. --set temperature=0.2"
                )
            target.setdefault("sampling", {})[field.strip()] = number
        if not prefs.get("contexts"):
            prefs.pop("contexts", None)
        saved = c.request("PUT", f"/api/keys/{name}/preferences", prefs).json()
    if json_:
        output.print_json(saved)
    else:
        print(f"preferences of key {name}: {json.dumps(saved)}")


@keys_app.command()
def revoke(ctx: typer.Context, name: NameArg) -> None:
    """Stop a key at once: its next request gets 401, its streams in flight end."""
    with client(ctx, autostart=False) as c:
        k = c.request("DELETE", f"/api/keys/{name}").json()
    if k.get("already"):
        print(f"key {name} was revoked already ({_when(k.get('revoked'))})")
    else:
        print(f"revoked key {name}")


@keys_app.command()
def rotate(ctx: typer.Context, name: NameArg, json_: JsonOpt = False) -> None:
    """A new token for a key (printed once); the old one stops working. `operator`: the
    operator's own token (the CLI reads the new one by itself; `smackctl env` prints it)."""
    with client(ctx, autostart=False) as c:
        if name == "operator":
            made = c.post("/api/token/rotate")
            if json_:
                output.print_json(made)
            else:
                print(made["key"])
                output.info("rotated the operator's token: clients that saved the old one "
                            "need this one (`smackctl env`)")  # fmt: skip
            return
        made = c.post(f"/api/keys/{name}/rotate")
    _issued(made, json_, "rotated")


@keys_app.command()
def audit(
    ctx: typer.Context,
    since: Annotated[str, typer.Option(help="How far back: 30m, 12h, 7d.")] = "7d",
    json_: JsonOpt = False,
) -> None:
    """What admins changed (any request but a read, by the operator's token or an admin
    key): when, which key, the route and its answer."""
    with client(ctx, autostart=False) as c:
        rows = c.get("/api/audit", params={"since": str(since_time(since))})
    if json_:
        output.print_json(rows)
        return
    output.table(
        ["WHEN", "KEY", "REQUEST", "STATUS"],
        [[_when(r["at"]), r["key"], f"{r['method']} {r['path']}", r["status"]] for r in rows],
    )
