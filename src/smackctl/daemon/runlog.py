"""A runner's log, read: the lines of its current run, what it was doing when it ended (the
lines the runner program writes as a request goes), and the lines that explain a failure."""

from __future__ import annotations

import os
from pathlib import Path

from .backends.llama_cpp_python.words import HOST_ANSWERED, HOST_GENERATING, HOST_PROMPT

__all__ = ["activity", "tail", "this_run"]


def this_run(path: Path) -> str:
    """The log's last run (its lines after the last ``=== … starting`` line)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return text.rsplit("\n=== ", 1)[-1] if "\n=== " in text else text


def activity(path: Path) -> str | None:
    """What the process was doing when it ended: ``while decoding a prompt of 12 tokens``,
    ``while generating the answer to a prompt of 12 tokens``; None when it was not
    answering."""
    for line in reversed(this_run(path).splitlines()):
        if line.startswith(HOST_PROMPT):
            return "while decoding " + line[len(HOST_PROMPT) :].strip()
        if line.startswith(HOST_GENERATING):
            return "while generating the answer to " + line[len(HOST_GENERATING) :].strip()
        if line.startswith(HOST_ANSWERED):
            return None
    return None


def tail(path: Path, lines: int = 6) -> str:
    """The lines of this run's log that explain a failure: llama.cpp's own error lines first
    (they sit above Python's traceback), then the last lines."""
    if not path.is_file():
        return "  (no log)"
    run = this_run(path).splitlines()[1:]  # this start's lines only
    errors = [ln for ln in run if "error" in ln.lower() and not ln.startswith(" ")][:4]
    last = [ln for ln in run[-lines:] if ln not in errors and ln.strip()]
    picked = errors + (["  ..."] if errors and last else []) + last[-3:]
    return "\n".join(f"  | {ln.strip()}" for ln in picked) or "  (empty log)"
