"""The command line: one Typer sub-app per noun; ``app.py`` only assembles them.

``main`` is the console script. Two things are answered before typer is imported (~80 ms):
a shell's <TAB> on a model or profile name (``fastcomplete``), and ``--help`` of any command
path on a terminal of 80 columns or more (``help.json``, which ``make docs`` renders from the
typer app and a test keeps current). Everything else goes to the typer app.
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
    elif sys.argv[-1:] in (["--help"], ["-h"]) and (page := _help_page(sys.argv[1:-1])):
        sys.stdout.write(page)
        return
    from .app import main as typer_main

    typer_main()


def _help_page(path: list[str]) -> str | None:
    """The pre-rendered ``--help`` of a command path (no options in it), when click would
    render it at the same width: terminals of 80 columns or more (click caps at 80)."""
    import shutil

    if shutil.get_terminal_size().columns < 80 or any(a.startswith("-") for a in path):
        return None
    import json
    from pathlib import Path

    try:
        pages = json.loads(Path(__file__).with_name("help.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    page = pages.get(" ".join(path))
    return page if isinstance(page, str) else None
