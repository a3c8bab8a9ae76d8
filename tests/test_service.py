"""`smackctl service`: the unit file (checked by systemd's own systemd-analyze), install,
status and uninstall where no systemd manager runs (this machine, most CI), and the unit's
command run as systemd runs it, with a notify socket that checks who sent READY=1."""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shlex
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import httpx

from smackctl.cli._unit import STOP_TIMEOUT, Unit, start_command, unit_dir, unit_text
from smackctl.cli.service import lingering

from conftest import Home, smackctl

USER = pwd.getpwuid(os.getuid()).pw_name


def test_the_unit_says_what_systemd_needs_and_quotes_what_it_must() -> None:
    unit = Unit(
        start_command("/opt/venv/bin/python", "my profile", "0.0.0.0", 7811),
        (("SMACKCTL_HOME", '/srv/100% "$HOME"'),),
    )
    text = unit_text(unit)
    lines = text.splitlines()
    assert (
        "ExecStart=/opt/venv/bin/python -m smackctl start --foreground "
        '--profile "my profile" --host 0.0.0.0 --port 7811'
    ) in lines
    # a specifier's % doubled everywhere; $ is a variable on ExecStart= only
    assert 'Environment="SMACKCTL_HOME=/srv/100%% \\"$HOME\\""' in lines
    for line in (
        "Type=notify",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "KillMode=mixed",
        "WantedBy=default.target",
    ):
        assert line in lines
    assert f"TimeoutStopSec={STOP_TIMEOUT}" in lines and STOP_TIMEOUT > 30  # > the drain
    assert "User=" not in text and "network-online" not in text
    assert start_command("/p", port=None) == ("/p", "-m", "smackctl", "start", "--foreground")
    words = unit_text(Unit(("/p", "50%", "$X", ";"))).split("ExecStart=")[1].split("\n")[0]
    assert words == '/p 50%% $$X ";"'

    system = unit_text(Unit(("/p",), system=True, run_as="alice")).splitlines()
    assert "User=alice" in system and "WantedBy=multi-user.target" in system
    assert "After=network-online.target" in system


def test_the_unit_goes_where_systemd_looks_for_it() -> None:
    home = Path("/home/a")
    assert unit_dir(False, {}, home) == home / ".config/systemd/user"
    assert unit_dir(False, {"XDG_CONFIG_HOME": "/x/cfg"}, home) == Path("/x/cfg/systemd/user")
    assert unit_dir(False, {"XDG_CONFIG_HOME": "rel"}, home) == home / ".config/systemd/user"
    assert unit_dir(True, {"XDG_CONFIG_HOME": "/x/cfg"}, home) == Path("/etc/systemd/system")


def test_lingering_is_logind_s_file_for_the_user(tmp_path: Path) -> None:
    assert lingering("alice", tmp_path) is False
    (tmp_path / "alice").touch()
    assert lingering("alice", tmp_path) is True


def _verify(unit_file: Path, *mode: str, runtime: Path) -> subprocess.CompletedProcess[str]:
    runtime.mkdir(mode=0o700, exist_ok=True)  # a user manager's runtime dir, for --user
    return subprocess.run(
        ["systemd-analyze", *mode, "verify", str(unit_file)],
        capture_output=True,
        text=True,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
        timeout=60,
    )


def test_systemd_analyze_verifies_the_user_and_the_system_unit(tmp_path: Path) -> None:
    """Debian's `systemd` package (`make test-deps`); verify checks the syntax, every
    directive's value and that ExecStart's program exists: the real Python here."""
    command = start_command(sys.executable, "default", "127.0.0.1", 7810)
    env = (("SMACKCTL_HOME", str(tmp_path / "a home with 100% spaces")),)
    for system, mode in ((False, ["--user"]), (True, [])):
        d = tmp_path / ("system" if system else "user")
        d.mkdir()
        path = d / "smackctl.service"
        path.write_text(unit_text(Unit(command, env, system, USER if system else None)))
        r = _verify(path, *mode, runtime=tmp_path / "run")
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout + r.stderr == ""  # not even a warning (a bad value only warns)


def _env(home: Home, tmp_path: Path) -> dict[str, str]:
    return {
        **home.env,
        "HOME": str(tmp_path / "user"),
        "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
        "SMACKCTL_TOKEN": "smk-never-in-a-unit",
    }


def _status(env: dict[str, str]) -> dict[str, object]:
    r = subprocess.run(
        [sys.executable, "-m", "smackctl", "service", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def test_install_status_uninstall_without_a_systemd_manager(home: Home, tmp_path: Path) -> None:
    """No systemd runs here: install writes the unit under $XDG_CONFIG_HOME and prints the
    commands to run where one does; status reads the file and the enable link; uninstall
    removes both."""
    env = _env(home, tmp_path)
    port = home.env["SMACKCTL_PORT"]
    path = tmp_path / "cfg" / "systemd" / "user" / "smackctl.service"
    shown = subprocess.run(
        [sys.executable, "-m", "smackctl", "service", "install", "--print"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr  # the unit it would write, and nothing written
    assert shown.stdout.startswith("# Written by `smackctl service install`")
    assert "ExecStart=" in shown.stdout and not path.exists()
    r = subprocess.run(
        [sys.executable, "-m", "smackctl", "service", "install"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert path.read_text() == shown.stdout  # what --print showed
    assert r.stdout.splitlines() == [
        "systemctl --user daemon-reload",
        "systemctl --user enable --now smackctl.service",
        f"loginctl enable-linger {USER}",
    ]
    assert f"wrote {path}\n" in r.stderr
    assert "no systemd user manager answers here" in r.stderr
    assert f"lingering is off for {USER}: the service stops when" in r.stderr
    text = path.read_text()
    assert (
        f"ExecStart={sys.executable} -m smackctl start --foreground --profile test --port {port}"
        in text.splitlines()
    )
    assert f"Environment=SMACKCTL_HOME={home.root}" in text.splitlines()
    assert f"Environment=SMACKCTL_PROFILE_DIR={home.root / 'profiles'}" in text.splitlines()
    assert "smk-" not in text  # the token stays in the state dir's file

    st = _status(env)
    assert st == {
        "unit": str(path),
        "installed": True,
        "scope": "user",
        "exec_start": f"{sys.executable} -m smackctl start --foreground --profile test "
        f"--port {port}",
        "manager": False,
        "enabled": False,
        "active": None,
        "user": USER,
        "lingering": False,
    }
    # what `systemctl --user enable` makes, done where a manager ran
    wants = path.parent / "default.target.wants"
    wants.mkdir()
    (wants / "smackctl.service").symlink_to("../smackctl.service")
    assert _status(env)["enabled"] is True

    d = subprocess.run(
        [sys.executable, "-m", "smackctl", "doctor", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    checks = {c["check"]: c for c in json.loads(d.stdout)}
    assert checks["service"]["status"] == "ok"
    assert checks["service"]["detail"].startswith(f"user unit {path}: enabled, ")
    assert checks["lingering"]["status"] == "warn"
    assert checks["lingering"]["fix"] == f"loginctl enable-linger {USER}"

    r = subprocess.run(
        [sys.executable, "-m", "smackctl", "service", "uninstall"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr == f"removed {path}\n"
    assert not path.exists() and not (wants / "smackctl.service").is_symlink()
    assert _status(env)["installed"] is False


def test_install_refuses_a_profile_that_does_not_exist(home: Home) -> None:
    r = smackctl(home, "service", "install", "--profile", "nosuch")
    assert r.returncode == 2
    assert "no profile named 'nosuch'" in r.stderr


def test_the_units_command_tells_systemd_it_is_ready_from_the_main_process(
    home: Home, tmp_path: Path
) -> None:
    """The ExecStart= line run as systemd runs it: the unit's Environment= and no other
    smackctl variable, a notify socket that, as systemd's does (NotifyAccess=main), reads
    the sender's pid: READY=1 must come from the process systemd started (`start
    --foreground` execs the supervisor), once /health answers."""
    env = _env(home, tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "smackctl", "service", "install"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    lines = (tmp_path / "cfg/systemd/user/smackctl.service").read_text().splitlines()
    argv = shlex.split(next(ln for ln in lines if ln.startswith("ExecStart="))[10:])
    unit_env = dict(ln[12:].split("=", 1) for ln in lines if ln.startswith("Environment="))
    name = f"smackctl-test-{secrets.token_hex(6)}"
    service_env = {
        "PATH": "/usr/bin:/bin",
        "HOME": env["HOME"],
        **unit_env,
        "NOTIFY_SOCKET": "@" + name,
        **({"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}),
    }
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind("\0" + name)
        notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        notify.settimeout(30)
        with open(tmp_path / "out", "wb") as out:
            proc = subprocess.Popen(argv, env=service_env, stdout=out, stderr=out)
        try:
            data, ancdata, _, _ = notify.recvmsg(4096, socket.CMSG_SPACE(12))
            creds = [d for level, kind, d in ancdata if kind == socket.SCM_CREDENTIALS]
            sender_pid = struct.unpack("iII", creds[0])[0]
            assert sender_pid == proc.pid
            assert data.startswith(b"READY=1\n")
            port = home.env["SMACKCTL_PORT"]
            assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
