"""`smackctl ui`: a one-time login link to the supervisor's page, opened in the browser."""

from __future__ import annotations

from typing import Annotated

import typer

from . import output
from ._common import client

__all__ = ["ui"]


def ui(
    ctx: typer.Context,
    no_browser: Annotated[
        bool, typer.Option("--no-browser", help="Print the link only; open nothing.")
    ] = False,
) -> None:
    """Open the supervisor's page: live models and memory, activity, usage charts, events and
    logs, the profile editor, keys and a playground. Prints a login link (it works once,
    within 5 minutes; it logs in as whoever runs this: the operator, or the key in
    SMACKCTL_TOKEN) alone on stdout, and opens it in the browser unless --no-browser."""
    from smackctl.netaddr import display_url

    with client(ctx) as c:
        got = c.post("/api/ui/link")
        base = c.url
    # a supervisor bound to every address is reached from elsewhere by its LAN address
    link = display_url(base) + got["path"]
    print(link, flush=True)
    if not no_browser:
        import webbrowser

        if not webbrowser.open(link):
            output.info("no browser to open here: open the link above in one")
