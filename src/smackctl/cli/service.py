"""`smackctl service install | uninstall | status`: the supervisor as a systemd unit.

Linux with systemd is what is built and tested. A user unit (``~/.config/systemd/user``, or
under ``$XDG_CONFIG_HOME``) by default; ``--system`` writes ``/etc/systemd/system`` (root).
The unit runs ``smackctl start --foreground``, which tells systemd it is ready once its API
answers (``Type=notify``) and drains on SIGTERM. No secret goes in the unit: the supervisor
reads its token from the state dir, as it does when ``smackctl start`` runs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from smackctl.errors import SmackError, UsageError

from . import output
from ._common import globals_of
from ._group import Group
from ._unit import SYSTEM_DIR, UNIT, Unit, passed_environment, start_command, unit_dir, unit_text

__all__ = ["app", "doctor_checks", "lingering"]

app = typer.Typer(
    cls=Group,
    rich_markup_mode=None,  # click's plain help: typer's rich help imports 200 ms of rich
    help="Run the supervisor as a systemd service (Linux): at login, or at boot with lingering.",
    no_args_is_help=True,
)

LINGER_DIR = Path("/var/lib/systemd/linger")

SystemOpt = Annotated[
    bool,
    typer.Option("--system", help="A system unit in /etc/systemd/system (root) instead."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON only.")]


def _user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a container's uid with no passwd entry
        return os.environ.get("USER") or str(os.getuid())


def lingering(user: str, linger_dir: Path = LINGER_DIR) -> bool:
    """Whether ``user``'s services keep running without a session (and start at boot):
    logind keeps a file per lingering user; loginctl is asked where that dir is missing."""
    if (linger_dir / user).exists():
        return True
    if linger_dir.is_dir() or shutil.which("loginctl") is None:
        return False
    try:
        r = subprocess.run(
            ["loginctl", "show-user", user, "--property=Linger", "--value"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and r.stdout.strip() == "yes"


def manager_answers(system: bool) -> bool:
    """Whether a systemd manager runs here that ``systemctl`` (``--user``) reaches."""
    if shutil.which("systemctl") is None or not Path("/run/systemd/system").is_dir():
        return False  # not booted with systemd (a container, another init)
    if system:
        return True
    try:
        return _systemctl(False, "show-environment").returncode == 0
    except SmackError:
        return False


def _systemctl(system: bool, *args: str) -> subprocess.CompletedProcess[str]:
    scope = [] if system else ["--user"]
    try:
        return subprocess.run(
            ["systemctl", *scope, *args], capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SmackError(
            f"`{_command(system, *args)}` failed: {exc}",
            "check that systemd's systemctl works here (`systemctl --version`)",
        ) from exc


def _command(system: bool, *args: str) -> str:
    return " ".join(["systemctl", *([] if system else ["--user"]), *args])


def _wanted_links(directory: Path) -> list[Path]:
    """The links `systemctl enable` made for the unit (``*.wants/smackctl.service``)."""
    return [p for p in directory.glob(f"*.wants/{UNIT}") if p.is_symlink()]


def _state(system: bool, environ: Mapping[str, str]) -> dict[str, Any]:
    """What `service status` says (and `doctor` reads)."""
    directory = unit_dir(system, environ, Path.home())
    path = directory / UNIT
    manager = manager_answers(system)
    exec_start = None
    if path.is_file():
        lines = path.read_text(errors="replace").splitlines()
        exec_start = next((ln[10:] for ln in lines if ln.startswith("ExecStart=")), None)
    enabled = bool(_wanted_links(directory))  # what `systemctl enable` made
    active = None
    if manager:
        on = _systemctl(system, "is-enabled", UNIT).stdout.strip()
        enabled = on in ("enabled", "enabled-runtime")
        active = _systemctl(system, "is-active", UNIT).stdout.strip() or None
    user = _user()
    return {
        "unit": str(path),
        "installed": path.is_file(),
        "scope": "system" if system else "user",
        "exec_start": exec_start,
        "manager": manager,
        "enabled": enabled,
        "active": active,
        "user": user,
        "lingering": None if system else lingering(user),
    }


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    tmp.chmod(0o644)
    tmp.replace(path)


def _need_root(system: bool) -> None:
    if sys.platform != "linux":
        raise UsageError(
            "a service is a systemd unit: Linux only", "run `smackctl start` at login instead"
        )
    if system and os.geteuid() != 0:
        raise UsageError(
            f"a system unit goes in {SYSTEM_DIR}, which only root can change",
            f"run it with sudo (`sudo {sys.executable} -m smackctl service … --system`), "
            "or leave out --system for a user unit",
        )


def _run(system: bool, *args: str) -> None:
    r = _systemctl(system, *args)
    if r.returncode != 0:
        scope = "" if system else " --user"
        raise SmackError(
            f"`{_command(system, *args)}` failed: {r.stderr.strip() or r.stdout.strip()}",
            f"`journalctl{scope} -u smackctl -n 50` says why; "
            f"`systemctl{scope} status smackctl` shows its state",
        )


@app.command()
def install(
    ctx: typer.Context,
    system: SystemOpt = False,
    profile: Annotated[
        str | None, typer.Option("--profile", "-p", help="Profile the service starts with.")
    ] = None,
    host: Annotated[
        str | None,
        typer.Option(
            "--host", envvar="SMACKCTL_HOST", help="Address to listen on (as `start --host`)."
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option("--port", envvar="SMACKCTL_PORT", help="Port to listen on."),
    ] = None,
    tls_cert: Annotated[
        str | None, typer.Option("--tls-cert", help="Serve HTTPS with this PEM certificate.")
    ] = None,
    tls_key: Annotated[
        str | None, typer.Option("--tls-key", help="The private key of --tls-cert (PEM).")
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option("--allowed-host", help="Another Host name clients may use (repeatable)."),
    ] = None,
    run_as: Annotated[
        str | None,
        typer.Option("--run-as", help="The user a --system unit runs as (default: $SUDO_USER)."),
    ] = None,
    print_: Annotated[
        bool,
        typer.Option("--print", help="Print the unit it would write, and change nothing."),
    ] = False,
) -> None:
    """Write a systemd unit that runs `smackctl start --foreground`, and enable and start it
    when a systemd manager answers here (else print the commands to run)."""
    if not print_:
        _need_root(system)
    if run_as and not system:
        raise UsageError("--run-as is for a system unit", "add --system, or leave out --run-as")
    if bool(tls_cert) != bool(tls_key):
        raise UsageError(
            "HTTPS needs both a certificate and its key",
            "give both `--tls-cert FILE` and `--tls-key FILE`",
        )
    profile = profile or globals_of(ctx).profile
    if profile:
        from smackctl.profile_file import find_profile

        found = find_profile(profile)  # a clear error now, not a unit that fails to start
        if Path(profile).suffix in (".yaml", ".yml"):
            profile = str(found)  # the service does not run in this directory
    tls = (
        (str(Path(tls_cert).resolve()), str(Path(tls_key).resolve()))
        if tls_cert and tls_key
        else None
    )
    sudo_user = os.environ.get("SUDO_USER")
    unit = Unit(
        start_command(sys.executable, profile, host, port, tls, allowed_host or ()),
        passed_environment(os.environ),
        system,
        (run_as or (sudo_user if sudo_user != "root" else None)) if system else None,
    )
    path = unit_dir(system, os.environ, Path.home()) / UNIT
    text = unit_text(unit)
    if print_:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()
        output.info(f"(not written: without --print it goes to {path})")
        return
    old = path.read_text(errors="replace") if path.is_file() else None
    _write(path, text)
    changed = old is not None and old != text
    output.info(f"{'replaced' if changed else 'wrote'} {path}")
    _start(system, changed)
    if not system:
        _say_lingering(_user())


def _start(system: bool, changed: bool) -> None:
    """Enable and start the unit (restart it when its file changed), or say how."""
    from smackctl.paths import get_paths, pid_status

    scope = "" if system else " --user"
    if not manager_answers(system):
        output.info(
            f"no systemd{' user' if not system else ''} manager answers here "
            f"(`systemctl{scope}` reaches none): run these where one does, to start it "
            "now and at every login:"
        )
        print(_command(system, "daemon-reload"))
        print(_command(system, "enable", "--now", UNIT))
        return
    _run(system, "daemon-reload")
    pid, held = pid_status(get_paths())
    active = _systemctl(system, "is-active", UNIT).stdout.strip() == "active"
    if held and not active:
        _run(system, "enable", UNIT)
        output.warn(
            f"a supervisor (pid {pid}) runs outside the service, so it was not started: "
            f"`smackctl stop`, then `systemctl{scope} start smackctl`"
        )
        return
    if active and changed:
        _run(system, "enable", UNIT)
        _run(system, "restart", UNIT)  # the new settings; the stop drains
    else:
        _run(system, "enable", "--now", UNIT)
    output.info(
        f"smackctl runs as a service: `systemctl{scope} status smackctl`; its log: "
        f"`journalctl{scope} -u smackctl` or `smackctl logs`"
    )


def _say_lingering(user: str) -> None:
    if lingering(user):
        output.info(
            f"lingering is on for {user}: the service keeps running after logout and starts at boot"
        )
        return
    output.info(
        f"lingering is off for {user}: the service stops when {user}'s last session ends; "
        "to keep it running after logout, and start it at boot:"
    )
    print(f"loginctl enable-linger {user}")


@app.command()
def status(system: SystemOpt = False, json_: JsonOpt = False) -> None:
    """Show the unit file, whether systemd has it enabled and running, and lingering."""
    st = _state(system, os.environ)
    if json_:
        output.print_json(st)
        return
    scope = "" if system else " --user"
    yes_no = {True: "yes", False: "no", None: "unknown"}
    print(f"unit       {st['unit']} ({'installed' if st['installed'] else 'not installed'})")
    if not st["installed"]:
        output.info("`smackctl service install` writes it")
    else:
        print(f"runs       {st['exec_start']}")
        print(f"enabled    {yes_no[st['enabled']]}")
        state = st["active"] or (
            f"unknown (no systemd{' user' if not system else ''} manager answers here)"
        )
        print(f"active     {state}")
    if not system:
        on = st["lingering"]
        tail = "" if on else f" (`loginctl enable-linger {st['user']}` keeps it after logout)"
        print(f"lingering  {'on' if on else 'off'}{tail}")
    if st["active"] == "failed":
        output.info(f"why: `journalctl{scope} -u smackctl -n 50`")


@app.command()
def uninstall(system: SystemOpt = False) -> None:
    """Stop and disable the service (its stop drains requests), and remove its unit file."""
    _need_root(system)
    directory = unit_dir(system, os.environ, Path.home())
    path = directory / UNIT
    if not path.exists() and not _wanted_links(directory):
        output.info(f"no unit at {path}: nothing to remove")
        return
    manager = manager_answers(system)
    if manager:
        r = _systemctl(system, "disable", "--now", UNIT)
        if r.returncode != 0:
            output.warn(f"`{_command(system, 'disable', '--now', UNIT)}`: {r.stderr.strip()}")
    for link in _wanted_links(directory):  # what `enable` made, when systemctl could not
        link.unlink()
    path.unlink(missing_ok=True)
    if manager:
        _run(system, "daemon-reload")
    output.info(f"removed {path}" + (" (stopped and disabled)" if manager else ""))


def doctor_checks() -> list[tuple[str, str, str, str | None]]:
    """`smackctl doctor`'s lines: the service (installed, enabled, running) and lingering."""
    if sys.platform != "linux":
        return [("ok", "service", "systemd units are Linux only (`smackctl start` instead)", None)]
    out: list[tuple[str, str, str, str | None]] = []
    user_unit = False
    for system in (False, True):
        if not (unit_dir(system, os.environ, Path.home()) / UNIT).is_file():
            continue
        user_unit = user_unit or not system
        st = _state(system, os.environ)
        scope = "" if system else " --user"
        what = f"{st['scope']} unit {st['unit']}"
        if st["active"] == "failed":
            fix = f"`journalctl{scope} -u smackctl -n 50` says why"
            out.append(("fail", "service", f"{what}: failed", fix))
        elif not st["enabled"]:
            fix = f"systemctl{scope} enable --now smackctl"
            out.append(("warn", "service", f"{what}: not enabled", fix))
        else:
            running = st["active"] or "running or not: no systemd manager answers here"
            out.append(("ok", "service", f"{what}: enabled, {running}", None))
    if not out:
        out.append(("ok", "service", "not installed (`smackctl service install`)", None))
    user = _user()
    if lingering(user):
        out.append(("ok", "lingering", f"on for {user}: user services outlive logout", None))
    elif user_unit:
        detail = f"off for {user}: the service stops at logout and waits for a login at boot"
        out.append(("warn", "lingering", detail, f"loginctl enable-linger {user}"))
    else:
        out.append(("ok", "lingering", f"off for {user} (only a user service needs it)", None))
    return out
