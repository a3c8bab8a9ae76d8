"""The command line: one Typer sub-app per noun; ``app.py`` only assembles them.

``main`` is the console script. A shell's <TAB> on a model or profile name is answered before
typer is imported (``fastcomplete``); everything else goes to the typer app.
"""

from __future__ import annotations

import os
import sys

__all__ = ["main"]


def main() -> None:
    if "_SMACKCTL_COMPLETE" in os.environ:
        from .fastcomplete import run

        if run():
            return
    # httpx's __init__ imports its own command-line client, which imports click, pygments and
    # rich: ~100 ms of every command that talks to the supervisor, for code we never run.
    # httpx falls back to a stub when that import fails (its `try: from ._main import main`).
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    from .app import main as typer_main

    typer_main()
