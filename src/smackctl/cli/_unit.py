"""The systemd unit that runs the supervisor: its text and where it goes, as pure functions
of plain values (``smackctl service`` writes it; tests check it with systemd-analyze)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "STOP_TIMEOUT",
    "SYSTEM_DIR",
    "UNIT",
    "Unit",
    "passed_environment",
    "start_command",
    "unit_dir",
    "unit_text",
]

SYSTEM_DIR = Path("/etc/systemd/system")
UNIT = "smackctl.service"
#: the supervisor's drain timeout (``python -m smackctl.daemon --drain-timeout``'s default)
DRAIN_TIMEOUT = 30
#: systemd's SIGKILL comes after this: the drain, then the answers it cut and the unloads
STOP_TIMEOUT = DRAIN_TIMEOUT + 60
#: where the supervisor's files are: the service must find the ones this shell's CLI uses
PASSED_ENV = (
    "SMACKCTL_HOME",
    "SMACKCTL_PROFILE_DIR",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "XDG_STATE_HOME",
)


@dataclass(frozen=True)
class Unit:
    """What a unit file says: the command, its environment, user or system scope."""

    command: tuple[str, ...]
    environment: tuple[tuple[str, str], ...] = ()
    system: bool = False
    run_as: str | None = None  # User= of a system unit


def _quote(value: str, exec_line: bool = True) -> str:
    """One word for a unit file: ``%`` starts a specifier, so it is doubled, and so is
    ``$`` on an ExecStart= line (a variable there, not in Environment=); a word with spaces,
    quotes or backslashes is double-quoted (C-style escapes), and so is a bare ``;``
    (ExecStart's command separator)."""
    value = value.replace("%", "%%")
    if exec_line:
        value = value.replace("$", "$$")
    if value and value != ";" and not any(c in value for c in " \t\n\"'\\"):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def unit_text(unit: Unit) -> str:
    """The unit file for ``unit``."""
    lines = [
        "# Written by `smackctl service install`; `smackctl service uninstall` removes it.",
        "[Unit]",
        "Description=smackctl supervisor: local GGUF models behind an OpenAI-compatible API",
    ]
    if unit.system:  # a LAN bind needs its address up; a user manager has no such target
        lines += ["Wants=network-online.target", "After=network-online.target"]
    lines += [
        "",
        "[Service]",
        "# ready (sd_notify READY=1) once the supervisor's API answers",
        "Type=notify",
        "ExecStart=" + " ".join(_quote(word) for word in unit.command),
    ]
    lines += [f"Environment={_quote(f'{k}={v}', False)}" for k, v in unit.environment]
    if unit.run_as:
        lines.append(f"User={unit.run_as}")
    lines += [
        "Restart=on-failure",
        "RestartSec=5",
        "# SIGTERM to the supervisor alone: it drains, then stops its own runners",
        "KillMode=mixed",
        "KillSignal=SIGTERM",
        f"# longer than its drain ({DRAIN_TIMEOUT}s), the answers it cuts and the unloads",
        f"TimeoutStopSec={STOP_TIMEOUT}",
        "SyslogIdentifier=smackctl",
        "",
        "[Install]",
        f"WantedBy={'multi-user.target' if unit.system else 'default.target'}",
    ]
    return "\n".join(lines) + "\n"


def start_command(
    python: str,
    profile: str | None = None,
    host: str | None = None,
    port: int | None = None,
    tls: tuple[str, str] | None = None,
    allowed_hosts: Sequence[str] = (),
) -> tuple[str, ...]:
    """``smackctl start --foreground`` with what was chosen, through this Python (a venv's:
    the unit runs without the shell's PATH)."""
    argv = [python, "-m", "smackctl", "start", "--foreground"]
    if profile:
        argv += ["--profile", profile]
    if host:
        argv += ["--host", host]
    if port:
        argv += ["--port", str(port)]
    if tls:
        argv += ["--tls-cert", tls[0], "--tls-key", tls[1]]
    for name in allowed_hosts:
        argv += ["--allowed-host", name]
    return tuple(argv)


def unit_dir(system: bool, environ: Mapping[str, str], home: Path) -> Path:
    """Where systemd looks for the unit: the system's dir, else the user's config dir
    (``$XDG_CONFIG_HOME`` when it is an absolute path, as systemd reads it)."""
    if system:
        return SYSTEM_DIR
    config = environ.get("XDG_CONFIG_HOME", "")
    base = Path(config) if config.startswith("/") else home / ".config"
    return base / "systemd" / "user"


def passed_environment(environ: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(
        (k, str(Path(environ[k]).expanduser().resolve())) for k in PASSED_ENV if environ.get(k)
    )
