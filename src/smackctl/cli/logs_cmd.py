"""`smackctl logs [MODEL]`: the supervisor's log, or a model's runner log, read from the
state dir (no supervisor needed)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from smackctl.errors import ModelNotFound

from . import output
from ._common import since_time
from .completion import complete_model, local_model_names

__all__ = ["logs"]


def logs(
    model: Annotated[
        str | None,
        typer.Argument(help="A model's runner log instead.", autocompletion=complete_model),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", help="Lines to show.")] = 50,
    since: Annotated[
        str | None, typer.Option("--since", help="Only lines newer than this: 30m, 2h, 1d.")
    ] = None,
) -> None:
    """Show the supervisor's log, or one model's runner log (read from the state dir)."""
    from smackctl.config import validate_model_name
    from smackctl.paths import get_paths

    paths = get_paths()
    if model:  # an alias names its model's log, as it names the model everywhere else
        model = _model_named(validate_model_name(model))
    path = paths.runner_log(model) if model else paths.supervisor_log
    if not path.is_file():
        known = local_model_names()
        if model and model not in known:
            raise ModelNotFound(model, known)
        output.info(f"no log yet at {path}")
        return
    cutoff = None
    if since:  # the timestamp prefix the log lines start with
        cutoff = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since_time(since)))
    _print_tail(path, lines, cutoff)
    if follow:
        _follow(path)


def _print_tail(path: Path, lines: int, cutoff: str | None = None) -> None:
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 512 * 1024))
        text = f.read().decode(errors="replace")
    kept = text.splitlines()
    if cutoff is not None:  # lines without a timestamp go with the line above them
        out, keep = [], False
        for line in kept:
            stamp = line[:19] if line[:4].isdigit() else line[10:29]  # plain or JSON lines
            if stamp[:4].isdigit() and stamp[4:5] == "-":
                keep = stamp >= cutoff
            if keep:
                out.append(line)
        kept = out
    for line in kept[-lines:]:
        print(line)


def _follow(path: Path) -> None:
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        try:
            while True:
                chunk = f.read()
                if chunk:
                    sys.stdout.write(chunk.decode(errors="replace"))
                    sys.stdout.flush()
                else:
                    time.sleep(0.2)
        except KeyboardInterrupt:
            return


def _model_named(name: str) -> str:
    """The model an alias names in the active profile (its own aliases, routing's), else
    ``name`` as given."""
    from smackctl.paths import get_paths

    from .completion import profile_names

    return profile_names(get_paths().db_path)[1].get(name, name)
