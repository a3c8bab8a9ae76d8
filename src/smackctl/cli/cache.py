"""`smackctl cache stats | clear [MODEL]`: the response cache (on per profile or model)."""

from __future__ import annotations

from typing import Annotated

import typer

from . import output
from ._common import client
from ._group import Group
from .completion import complete_model

__all__ = ["cache_app"]

cache_app = typer.Typer(
    cls=Group,
    rich_markup_mode=None,
    help="The response cache: answers of deterministic requests, replayed.",
    no_args_is_help=True,
)


@cache_app.command()
def stats(
    ctx: typer.Context,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Hits and misses since the supervisor started; entries and bytes per model."""
    with client(ctx, autostart=False) as c:
        st = c.get("/api/cache")
    if json_:
        output.print_json(st)
        return
    asked = st["hits"] + st["misses"]
    rate = f" ({st['hits'] / asked:.0%} hits)" if asked else ""
    print(f"{st['hits']} hit(s), {st['misses']} miss(es){rate}; "
          f"{st['entries']} entries, {output.human_bytes(st['bytes'])}")  # fmt: skip
    if st["models"]:
        output.table(
            ["MODEL", "ENTRIES", "SIZE"],
            [[m["model"], m["entries"], output.human_bytes(m["bytes"])] for m in st["models"]],
        )


@cache_app.command()
def clear(
    ctx: typer.Context,
    model: Annotated[
        str | None, typer.Argument(help="Only this model's entries.", autocompletion=complete_model)
    ] = None,
) -> None:
    """Empty the cache, or one model's entries; in a fleet that shares its cache, the
    fleet's too (all of it)."""
    with client(ctx, autostart=False) as c:
        n = c.request("DELETE", "/api/cache", params={"model": model} if model else None).json()
    said = f"cleared {n['cleared']} entr{'y' if n['cleared'] == 1 else 'ies'}"
    if isinstance(n.get("fleet"), int):
        said += f", and the fleet's shared cache ({n['fleet']}; each member clears its own)"
    elif n.get("fleet") is not None:
        said += f"; the fleet's shared cache was NOT cleared: {n['fleet']}"
    print(said)
