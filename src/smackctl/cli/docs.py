"""Generated docs that cannot drift: shell completion scripts, the man page, help pages.

``python -m smackctl.cli.docs`` (``make docs``) writes ``completions/``, ``man/smackctl.1``
and ``src/smackctl/cli/help.json`` (every command's ``--help``, which ``cli.main`` prints
without importing typer) from the Typer app; a test fails when the checked-in copies differ
from what it generates.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from smackctl import __version__

__all__ = ["completion_script", "help_pages", "man_page", "write_all"]

ROOT = Path(__file__).resolve().parents[3]
HELP_FILE = Path(__file__).with_name("help.json")
#: the width help pages are rendered at: click's, on any terminal of 80 columns or more
HELP_COLUMNS = 80
COMPLETION_FILES = {"bash": "smackctl.bash", "zsh": "_smackctl", "fish": "smackctl.fish"}

ENVIRONMENT = [
    (
        "SMACKCTL_HOME",
        "Keep all of smackctl's files (config, models, state, logs) under this "
        "directory instead of the platform's directories.",
    ),
    (
        "SMACKCTL_URL",
        "URL of the supervisor (default: the one running, else http://127.0.0.1:7622).",
    ),
    ("SMACKCTL_HOST, SMACKCTL_PORT", "Address and port that start binds (127.0.0.1:7622)."),
    ("SMACKCTL_PROFILE", "Profile used when a command starts the supervisor."),
    ("SMACKCTL_PROFILE_DIR", "A directory searched for profiles before the config dir's."),
    (
        "SMACKCTL_NO_AUTOSTART",
        "When set, commands fail with exit code 3 instead of starting the supervisor.",
    ),
    ("SMACKCTL_TOKEN", "The API token (default: read from the state directory)."),
    ("NO_COLOR", "Disable colour."),
]
FILES = [
    (
        "$STATE/state.db",
        "the supervisor's SQLite state (WAL): added models, what to reload, "
        "measured memory, the request log",
    ),
    ("$STATE/token", "the API token, mode 0600"),
    ("$STATE/supervisor.pid", "pid file, locked while the supervisor runs"),
    ("$STATE/logs/", "supervisor.log and runner-MODEL.log"),
    ("$STATE/chats.db", "chat conversations"),
    ("$DATA/models/", "pulled model files with their .sha256"),
    ("$CONFIG/profiles/", "your profiles"),
]
EXAMPLES = [
    (
        "Start the supervisor and ask the default model",
        'smackctl start\nsmackctl chat "Why is the sky blue?"',
    ),
    ("Use it from any OpenAI client", 'eval "$(smackctl env)"'),
    (
        "See what switching profiles would do, then do it",
        "smackctl profile switch small-pair --dry-run\nsmackctl profile switch small-pair",
    ),
    ("Will a model fit?", "smackctl models load gemma3-270m --estimate-only"),
]


def completion_script(shell: str) -> str:
    env = {**os.environ, "_SMACKCTL_COMPLETE": f"source_{shell}"}
    out = subprocess.run(
        [sys.executable, "-m", "smackctl"], env=env, capture_output=True, text=True, check=True
    ).stdout
    return out.strip() + "\n"


def _esc(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    lines = []
    for line in text.splitlines():
        if line.startswith((".", "'")):
            line = "\\&" + line
        lines.append(line)
    return "\n".join(lines)


def _option(p: Any) -> str:
    names = ", ".join(f"\\fB{_esc(o)}\\fR" for o in p.opts + p.secondary_opts)
    if getattr(p, "is_flag", False):
        head = names
    else:
        head = f"{names} \\fI{_esc(p.name.upper())}\\fR"
    body = _esc(" ".join((p.help or "").split()))
    if p.envvar:
        envs = p.envvar if isinstance(p.envvar, str) else ", ".join(p.envvar)
        body += f" [env: {_esc(envs)}]"
    return f".TP\n{head}\n{body}"


def _commands(group: Any, prefix: str) -> list[tuple[str, Any]]:
    out = []
    for name in sorted(group.commands):
        cmd = group.commands[name]
        full = f"{prefix} {name}"
        if hasattr(cmd, "commands"):
            out += _commands(cmd, full)
        else:
            out.append((full, cmd))
    return out


def _usage(path: str, cmd: Any) -> str:
    parts = [path]
    for p in cmd.params:
        if p.param_type_name == "argument":
            meta = p.name.upper() + ("..." if p.nargs == -1 else "")
            parts.append(f"[{meta}]" if not p.required else meta)
    if any(p.param_type_name == "option" for p in cmd.params):
        parts.insert(1, "[OPTIONS]")
    return " ".join(parts)


def man_page() -> str:
    from .app import command_tree

    root = command_tree()
    out = [
        f'.TH SMACKCTL 1 "" "smackctl {__version__}" "User Commands"',
        ".SH NAME",
        "smackctl \\- run local GGUF language models with llama.cpp and keep them under control",
        ".SH SYNOPSIS",
        ".B smackctl",
        "[\\fIGLOBAL OPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...",
        ".SH DESCRIPTION",
        _esc(
            "smackctl starts a background supervisor that runs one llama.cpp server process "
            "per loaded model, loads models on demand from the OpenAI model field, evicts "
            "idle models when memory is short, restarts crashed ones with backoff, and serves "
            "an OpenAI-compatible API on loopback with a token."
        ),
        ".SH GLOBAL OPTIONS",
    ]
    out += [
        _option(p)
        for p in root.params
        if p.param_type_name == "option"
        and not getattr(p, "hidden", False)
        and p.name not in ("install_completion", "show_completion")
    ]
    out.append(".SH COMMANDS")
    for path, cmd in _commands(root, "smackctl"):
        out.append(f'.SS "{_esc(_usage(path, cmd))}"')
        help_text = (cmd.help or "").strip()
        paras = [" ".join(p.split()) for p in help_text.split("\n\n") if p.strip()]
        for i, para in enumerate(paras):
            if i:
                out.append(".PP")
            out.append(_esc(para))
        out += [
            _option(p)
            for p in cmd.params
            if p.param_type_name == "option"
            and not getattr(p, "hidden", False)
            and p.name != "help"
        ]
    out += [
        ".SH EXIT STATUS",
        ".TP",
        "0",
        "success",
        ".TP",
        "1",
        "an error (the message names the fix)",
        ".TP",
        "2",
        "usage error (a bad argument, name or option)",
        ".TP",
        "3",
        "the supervisor is not running (and was not to be started)",
        ".TP",
        "130",
        "interrupted (Ctrl\\-C)",
    ]
    out.append(".SH ENVIRONMENT")
    for name, text in ENVIRONMENT:
        out += [".TP", f"\\fB{_esc(name)}\\fR", _esc(text)]
    out.append(".SH FILES")
    out.append(
        _esc(
            "$STATE, $DATA and $CONFIG are the platform's directories for smackctl "
            "(see smackctl config path), or SMACKCTL_HOME/state, /data and /config."
        )
    )
    for name, text in FILES:
        out += [".TP", f"\\fI{_esc(name)}\\fR", _esc(text)]
    out.append(".SH EXAMPLES")
    for title, code in EXAMPLES:
        out += [".PP", _esc(title) + ":", ".PP", ".nf", ".RS 4", _esc(code), ".RE", ".fi"]
    out += [".SH SEE ALSO", "The README of the smackctl project, and", ".BR llama\\-server (1)."]
    return "\n".join(out) + "\n"


def help_pages() -> dict[str, str]:
    """Every command's ``--help`` page as typer prints it on a terminal of 80 columns or
    more, by command path (``""`` for the root, ``"models list"``…)."""
    import contextlib
    import io

    from .app import command_tree

    root = command_tree()
    pages: dict[str, str] = {}
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_COLUMNS)  # what click's width comes from
    try:

        def walk(cmd: Any, path: tuple[str, ...]) -> None:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                root.main([*path, "--help"], prog_name="smackctl", standalone_mode=False)
            pages[" ".join(path)] = out.getvalue()
            for name, sub in getattr(cmd, "commands", {}).items():
                walk(sub, (*path, name))

        walk(root, ())
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved
    return pages


def help_json() -> str:
    return json.dumps(help_pages(), indent=0, ensure_ascii=False) + "\n"


def write_all(root: Path = ROOT) -> list[Path]:
    written = []
    for shell, name in COMPLETION_FILES.items():
        p = root / "completions" / name
        p.parent.mkdir(exist_ok=True)
        p.write_text(completion_script(shell))
        written.append(p)
    p = root / "man" / "smackctl.1"
    p.parent.mkdir(exist_ok=True)
    p.write_text(man_page())
    written.append(p)
    HELP_FILE.write_text(help_json())
    written.append(HELP_FILE)
    return written


if __name__ == "__main__":
    for path in write_all():
        print(path)
