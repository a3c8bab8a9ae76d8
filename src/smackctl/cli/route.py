"""`smackctl route PROMPT`: which model `model: auto` would pick, and why, running nothing."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from . import output
from ._common import client

__all__ = ["route"]


def route(
    ctx: typer.Context,
    prompt: Annotated[
        list[str] | None, typer.Argument(help="The prompt; stdin is read too.")
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Which model a `model: auto` request with this prompt would go to, and why (the
    profile's `routing.auto` rules; nothing is run but the classifier, when one is asked)."""
    text = " ".join(prompt or [])
    if not sys.stdin.isatty():
        text = (text + "\n" + sys.stdin.read()).strip()
    if not text:
        raise typer.BadParameter("give a prompt, or pipe one in")
    with client(ctx) as c:
        got = c.post("/api/route", {"prompt": text})
    if json_:
        output.print_json(got)
        return
    print(f"{got['model']}: {got['reason']} (decided in {got['microseconds']:.0f} µs)")
