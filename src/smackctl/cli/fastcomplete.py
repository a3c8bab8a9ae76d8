"""Shell completion of model and profile names without importing typer.

Every <TAB> runs ``smackctl`` with ``_SMACKCTL_COMPLETE`` set. Typer answers correctly, but
importing it and building the command tree costs ~100 ms (it coerces every parameter through
pydantic). The common case, a model or profile name as a command's argument, is answered here
in the same format typer's completion classes print; anything else (options, global options,
command names) returns ``None`` and goes to typer. ``tests/test_cli.py`` checks that the
tables below match the command tree's ``autocompletion=`` settings.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable, Mapping

__all__ = ["ARGUMENTS", "OPTIONS", "answer"]

#: a command's positional argument that completes names: command path → (kind, how many)
ARGUMENTS: dict[tuple[str, ...], tuple[str, int | None]] = {
    ("models", "show"): ("model", 1),
    ("models", "load"): ("model", 1),
    ("models", "unload"): ("model", 1),
    ("models", "pull"): ("model", 1),
    ("models", "rm"): ("model", 1),
    ("models", "bench"): ("model", None),  # any number of names
    ("logs",): ("model", 1),
    ("cache", "clear"): ("model", 1),
    ("profile", "show"): ("profile", 1),
    ("profile", "switch"): ("profile", 1),
    ("profile", "validate"): ("profile", None),
}
#: an option whose value completes names: (command path, option) → kind
OPTIONS: dict[tuple[tuple[str, ...], str], str] = {
    (("chat",), "--model"): "model",
    (("chat",), "-m"): "model",
    (("complete",), "--model"): "model",
    (("complete",), "-m"): "model",
    (("profile", "new"), "--from"): "profile",
}


def _names(kind: str) -> Callable[[str], list[str]]:
    from .completion import complete_model, complete_profile

    return complete_model if kind == "model" else complete_profile


def _words(env: Mapping[str, str], shell: str) -> tuple[list[str], str] | None:
    """The words after ``smackctl`` before the cursor, and the one being completed."""
    try:
        if shell == "bash":
            words = shlex.split(env["COMP_WORDS"])
            cword = int(env["COMP_CWORD"])
            return words[1:cword], (words[cword] if cword < len(words) else "")
        line = env.get("_TYPER_COMPLETE_ARGS", "")
        words = shlex.split(line)[1:]
        if words and not line.endswith(" "):
            return words[:-1], words[-1]
        return words, ""
    except (KeyError, ValueError):  # an open quote: typer knows how to split it
        return None


def _kind(args: list[str], incomplete: str) -> str | None:
    if incomplete.startswith("-"):
        return None
    for (path, option), kind in OPTIONS.items():
        n = len(path)
        if tuple(args[:n]) == path and len(args) > n and args[-1] == option:
            return kind
    for path, (kind, count) in ARGUMENTS.items():
        n = len(path)
        rest = args[n:]
        if tuple(args[:n]) != path or any(w.startswith("-") for w in rest):
            continue  # an option among the words: which take values is typer's to know
        if count is None or len(rest) < count:
            return kind
    return None


def answer(env: Mapping[str, str]) -> str | None:
    """What the shell's completion function expects, or None: let typer answer."""
    shell = env.get("_SMACKCTL_COMPLETE", "").removeprefix("complete_")
    if shell not in ("bash", "zsh", "fish"):
        return None
    if shell == "fish" and env.get("_TYPER_COMPLETE_FISH_ACTION") != "get-args":
        return None
    found = _words(env, shell)
    if found is None:
        return None
    args, incomplete = found
    kind = _kind(args, incomplete)
    if kind is None:
        return None
    names = _names(kind)(incomplete)
    if shell != "zsh":
        return "\n".join(names)
    if not names:
        return "_files"  # what typer answers when it has nothing
    return "_arguments '*: :((" + "\n".join(f'"{_zsh_escape(n)}"' for n in names) + "))'"


def _zsh_escape(s: str) -> str:
    return (
        s.replace('"', '""')
        .replace("'", "''")
        .replace("$", "\\$")
        .replace("`", "\\`")
        .replace(":", r"\\:")
    )


def run() -> bool:
    """Answer a completion request if it is one we know; True when answered."""
    out = answer(os.environ)
    if out is None:
        return False
    sys.stdout.write(out + "\n")  # as typer prints it (click.echo)
    sys.stdout.flush()
    return True
