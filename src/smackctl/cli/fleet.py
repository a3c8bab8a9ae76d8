"""`smackctl fleet` (`fleet list`): the members of the fleet this supervisor joined; `fleet
nkey`: a member's nkey for the fleet's NATS server."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from smackctl.errors import UsageError
from smackctl.fleet_keys import exposed, make_seed, public_key

from . import output
from ._common import client
from ._group import Group

__all__ = ["fleet_app"]

fleet_app = typer.Typer(
    cls=Group,
    rich_markup_mode=None,
    help="The fleet: supervisors on other machines joined through a NATS server.",
    invoke_without_command=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON only.")]


@fleet_app.callback()
def fleet_main(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """The members of the fleet (the same as `smackctl fleet list`)."""
    if ctx.invoked_subcommand is None:
        fleet_list(ctx, json_)


@fleet_app.command("list")
def fleet_list(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Each member with its models (loaded or not), its free memory and its load, as its
    last heartbeat said; this supervisor's own connection first."""
    with client(ctx, autostart=False) as c:
        got: dict[str, Any] = c.get("/api/fleet")
    if json_:
        output.print_json(got)
        return
    if not got.get("enabled"):
        print("not in a fleet: add `fleet: {url: nats://HOST:4222}` to the profile, or "
              "`smackctl start --join nats://HOST:4222`")  # fmt: skip
        return
    state = "connected" if got["connected"] else f"not connected: {got.get('error') or '…'}"
    print(f"this member: {got['name']} at {got['url']} ({state})")
    shared = [what for what, on in (("the keys' limits", got.get("limits", {}).get("shared")),
              ("the response cache", got.get("cache", {}).get("shared"))) if on]  # fmt: skip
    if shared and got["connected"]:
        print(f"shared through JetStream: {', '.join(shared)}")
    for refused in got.get("refused") or []:
        print(f"refused: {refused}")
    rows = []
    for m in got["members"]:
        models = ", ".join(
            f"{n}{'*' if v.get('loaded') else ''}" for n, v in sorted(m["models"].items())
        )
        name = m["name"] + (" (draining)" if m["draining"] else "")
        free = output.human_bytes(m["memory"].get("free"))
        load = f"{m['in_flight']} running, {m['queued']} queued"
        rows.append([name, models or "-", free, load, f"{m['seen']:.0f}s"])
    output.table(["MEMBER", "MODELS (* loaded)", "FREE MEMORY", "LOAD", "HEARD"], rows)


@fleet_app.command("nkey")
def fleet_nkey(
    path: Annotated[str, typer.Argument(help="The seed file: written if it does not exist.")],
) -> None:
    """A member's nkey for the fleet's NATS server: a new user seed written to PATH (only you
    may read it), or the one there; prints its public key, for the server's authorization,
    and the profile's line. The seed itself is never printed."""
    made = not Path(path).expanduser().exists()
    try:
        key = make_seed(path) if made else public_key(path)
    except UsageError as exc:
        raise UsageError(exc.message, "remove it, or give another path" if not made
                         else exc.hint) from exc  # fmt: skip
    if warning := exposed(path):
        print(f"smackctl: warning: {warning}", file=sys.stderr)
    where = Path(path).expanduser().absolute()
    print(f"{'wrote a new user seed to' if made else 'the seed in'} {where}"
          f"{' (only you may read it)' if made else ''}")  # fmt: skip
    print(f"its public key: {key}")
    print("in the NATS server's configuration:")
    print(f"  authorization {{ users = [ {{ nkey: {key} }} ] }}")
    print("in the profile:")
    print(
        f"  fleet: {{url: nats://HOST:4222, credentials: {{nkey_file: {json.dumps(str(where))}}}}}"
    )
