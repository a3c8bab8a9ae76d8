"""Starting and stopping the supervisor process from the CLI (no daemon/ import: a subprocess)."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from smackctl.errors import PortInUse, SupervisorNotRunning, SupervisorStartError
from smackctl.paths import Paths, get_paths, pid_status

__all__ = [
    "Serving",
    "Started",
    "ensure_running",
    "pid_status",
    "start_supervisor",
    "stop_supervisor",
]


@dataclass
class Started:
    url: str
    pid: int
    already: bool


def clean_stale_pid(paths: Paths) -> int | None:
    """Remove a pid file no live supervisor holds; return the stale pid (or None)."""
    pid, held = pid_status(paths)
    if held or not paths.pid_path.exists():
        return None
    paths.pid_path.unlink(missing_ok=True)
    paths.endpoint_path.unlink(missing_ok=True)
    return pid or -1


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), port))
        except OSError as exc:
            return exc.errno != errno.EADDRINUSE
    return True


def _health(url: str, cert: str | None = None) -> dict[str, object] | None:
    from smackctl.client import get_health

    return get_health(url, timeout=1.0, cafile=cert)


def _health_within(url: str, cert: str | None, seconds: float) -> dict[str, object] | None:
    """Its health, asked until it answers or ``seconds`` passed (a supervisor starting or
    busy); None if it never did."""
    deadline = time.monotonic() + seconds
    while True:
        if (h := _health(url, cert)) is not None or time.monotonic() >= deadline:
            return h
        time.sleep(0.1)


def _running_cert(paths: Paths) -> str | None:
    try:
        return paths.endpoint_cert_path.read_text().strip() or None
    except OSError:
        return None


def _tail(path: Path, n: int = 15, since: int = 0) -> str:
    """The last ``n`` lines of ``path`` written after its byte ``since`` (this run's: the
    file keeps every run's output), quoted."""
    try:
        with open(path, "rb") as f:
            f.seek(since)
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(f"  | {line}" for line in lines[-n:])


@dataclass
class Serving:
    """How the supervisor serves: what ``smackctl start`` was told (flags or variables)."""

    host: str
    port: int
    profile: str | None = None
    no_auth: bool = False
    json_logs: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    #: a NATS server to join for this run (``--join``): the profile's ``fleet.url`` replaced
    join: str | None = None

    @property
    def url(self) -> str:
        bracket = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls_cert else 'http'}://{bracket}:{self.port}"

    def argv(self, foreground: bool = False) -> list[str]:
        """The supervisor's command line (``python -m smackctl.daemon …``): the one place
        it is built. Nothing secret: the token is read from the state dir."""
        argv = [sys.executable, "-m", "smackctl.daemon", "--host", self.host]
        argv += ["--port", str(self.port)]
        if self.profile:
            argv += ["--profile", self.profile]
        if foreground:
            argv.append("--foreground")
        if self.no_auth:
            argv.append("--no-auth")
        if self.json_logs:
            argv.append("--json-logs")
        if self.tls_cert and self.tls_key:
            argv += ["--tls-cert", str(Path(self.tls_cert).resolve())]
            argv += ["--tls-key", str(Path(self.tls_key).resolve())]
        for name in self.allowed_hosts:
            argv += ["--allowed-host", name]
        if self.join:
            argv += ["--join", self.join]
        return argv


def start_supervisor(
    serving: Serving,
    *,
    timeout: float = 60.0,
    on_stale: object = None,
    address_given: bool = False,
) -> Started:
    """``address_given``: the host or port was asked for (a flag or its variable), so a
    supervisor already running elsewhere is an error, not the answer."""
    paths = get_paths().ensure()
    host, port = serving.host, serving.port
    url = serving.url
    pid, held = pid_status(paths)
    if held:
        try:
            running_url = paths.endpoint_path.read_text().strip() or url
        except OSError:
            running_url = url
        if address_given and not same_place(running_url, url):
            raise SupervisorStartError(
                f"smackctl is already running at {running_url} (pid {pid}), not at {url}",
                f"use the running one, or stop it first (`smackctl stop`) and start it at {url}",
            )
        h = _health_within(running_url, _running_cert(paths), timeout)  # starting, maybe
        if h is not None:
            return Started(running_url, int(h.get("pid") or pid or 0), already=True)  # type: ignore[call-overload]
        raise SupervisorStartError(
            f"a supervisor (pid {pid}) holds the lock but does not answer at {running_url}",
            "stop it with `smackctl stop --force`",
        )
    stale = clean_stale_pid(paths)
    if stale is not None and callable(on_stale):
        on_stale(stale)
    if not _port_free(host, port):
        raise PortInUse(host, port)
    out_path = paths.logs_dir / "supervisor.out"
    try:
        before = out_path.stat().st_size  # what earlier runs wrote: not this one's error
    except OSError:
        before = 0
    pid = _spawn_detached(serving.argv(), out_path)
    deadline = time.monotonic() + timeout
    while True:
        code = _exit_code(pid)
        if code is not None:
            detail = _tail(out_path, 6, before)
            if f"port {port}" in detail and "already in use" in detail:
                raise PortInUse(host, port)
            raise SupervisorStartError(
                f"the supervisor exited with code {code} while starting:\n{detail}",
                f"see {paths.supervisor_log} and {out_path}",
            )
        h = _health(url, serving.tls_cert)
        if h is not None and h.get("pid") == pid:
            return Started(url, pid, already=False)
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            raise SupervisorStartError(
                f"the supervisor did not answer at {url} within {timeout:.0f}s",
                f"see `smackctl logs` ({paths.supervisor_log})",
            )
        time.sleep(0.05)


def _spawn_detached(argv: list[str], out_path: Path) -> int:
    """Start the daemon in a session of its own, output appended to ``out_path``.

    posix_spawn rather than Popen: the daemon outlives this process, and no Popen object is
    left to complain (or be waited on) when the CLI exits.
    """
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        return os.posix_spawn(
            argv[0],
            argv,
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, fd, 1),
                (os.POSIX_SPAWN_DUP2, fd, 2),
            ],
            setsid=True,
        )
    finally:
        os.close(fd)


def _exit_code(pid: int) -> int | None:
    """The exit code of our child ``pid`` if it has exited (and reap it), else None."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return -1
    if done == 0:
        return None
    return os.waitstatus_to_exitcode(status)


def ensure_running(
    url: str, autostart: bool, profile: str | None = None, explicit: bool = False
) -> bool:
    """True if it had to be started (at ``url``). Raises SupervisorNotRunning when autostart
    is off. A URL named (``explicit``: --url, SMACKCTL_URL) that does not answer at once is
    given a few seconds (a busy supervisor, another machine's); nothing here starts one
    that is not on this machine's loopback over plain HTTP (an https URL needs its
    certificate: `smackctl start --tls-cert …`). One on loopback starts there, unless one
    runs at another port already (an error that says where, as `start --port` does)."""
    cert = _running_cert(get_paths())
    if _health(url, cert) is not None:
        return False
    from urllib.parse import urlparse

    from smackctl.netaddr import is_loopback

    u = urlparse(url)
    host = u.hostname or "127.0.0.1"
    here = is_loopback(host) and u.scheme == "http"
    if explicit and not here:
        if _health_within(url, cert, 5.0) is not None:
            return False
        raise SupervisorNotRunning(url)
    if not autostart:
        raise SupervisorNotRunning(url)
    started = start_supervisor(Serving(host, u.port or 80, profile), address_given=explicit)
    return not started.already


def same_place(a: str, b: str) -> bool:
    """Two URLs of one supervisor: the same port, and the same host or two names of this
    machine's loopback (localhost, 127.0.0.1, ::1) or its every-address bind (0.0.0.0)."""
    from urllib.parse import urlparse

    from smackctl.netaddr import is_loopback, is_wildcard

    try:
        ua, ub = urlparse(a), urlparse(b)
        pa, pb, ha, hb = ua.port, ub.port, ua.hostname or "", ub.hostname or ""
    except ValueError:
        return False
    if pa != pb:
        return False
    local = {h for h in (ha, hb) if is_loopback(h) or is_wildcard(h)}
    return ha == hb or len(local) == 2


def stop_supervisor(url: str, timeout: float, force: bool, explicit: bool = False) -> int | None:
    """Ask the supervisor to drain and exit; wait for the process to go. Returns its pid.
    ``explicit``: the user named the URL (see ``Client``)."""
    from smackctl.client import Client

    paths = get_paths()
    pid, held = pid_status(paths)
    if not held:
        clean_stale_pid(paths)
        return None
    try:
        with Client(url, timeout=5.0, explicit=explicit) as c:
            c.post("/api/shutdown", {"timeout": timeout, "force": force})
    except SupervisorNotRunning:
        pass  # it holds the lock but does not answer: signal it below
    except Exception:
        if not force:
            raise
    deadline = time.monotonic() + (timeout + 15 if not force else 5)
    while time.monotonic() < deadline:
        if not pid_status(paths)[1]:
            return pid
        time.sleep(0.05)
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM if not force else signal.SIGKILL)
        end = time.monotonic() + 10
        while time.monotonic() < end and pid_status(paths)[1]:
            time.sleep(0.05)
        if pid_status(paths)[1]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    clean_stale_pid(paths)
    return pid
