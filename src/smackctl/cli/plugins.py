"""`smackctl plugins list`: the slash-command plugins installed and enabled."""

from __future__ import annotations

from typing import Annotated

import typer

from . import output
from ._common import client
from ._group import Group

__all__ = ["plugins_app"]

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
