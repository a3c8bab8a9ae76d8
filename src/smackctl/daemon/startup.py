"""What the supervisor takes before it serves: its token (a file only its user can read),
the pid lock (one supervisor per state dir), its listening socket (a clear error when the
port is taken), and its log (the files `smackctl logs` reads, and stderr in the foreground:
a terminal or systemd's journal)."""

from __future__ import annotations

import errno
import fcntl
import logging
import logging.handlers
import os
import secrets
import socket
import sys
from typing import IO

from smackctl.errors import PortInUse, SmackError
from smackctl.paths import Paths

from .systemd import JournalFormatter, stderr_is_journal

__all__ = ["bind", "lock", "new_token", "read_or_create_token", "setup_logging"]

log = logging.getLogger("smackctl.supervisor")


def read_or_create_token(paths: Paths) -> tuple[str, str | None]:
    """The supervisor's token, and a notice when it had to be replaced.

    A token file that others could read (a mode other than 0600, another owner) is replaced,
    not trusted: whoever read it could use it. An empty one is replaced too.
    """
    p = paths.token_path
    notice = None
    if p.is_file():
        st = p.stat()
        token = p.read_text().strip()
        if st.st_mode & 0o077 == 0 and st.st_uid == os.getuid() and token:
            return token, None
        why = (
            "was empty"
            if not token
            else f"had mode {st.st_mode & 0o777:o}, so other users could read it"
            if st.st_mode & 0o077
            else f"belonged to uid {st.st_uid}"
        )
        notice = (
            f"the token file {p} {why}: a new token was made in a file only you can read "
            "(clients that saved the old one need the new one: `smackctl env`)"
        )
        log.warning("%s", notice)
    elif p.exists():
        raise SmackError(f"{p} is not a file", f"remove it (`rm -r {p}`), then start again")
    return new_token(paths), notice


def new_token(paths: Paths) -> str:
    """A new operator's token, written (mode 0600, replaced whole) where the CLI reads it."""
    p = paths.token_path
    token = "smk-" + secrets.token_urlsafe(32)
    tmp = p.with_name(f".{p.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(tmp, p)
    return token


def lock(paths: Paths) -> IO[str]:
    """Hold an exclusive lock on the pid file for the life of the process."""
    f = open(paths.pid_path, "a+")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        other = f.read().strip()
        raise SmackError(
            f"another supervisor (pid {other or '?'}) holds {paths.pid_path}",
            "use `smackctl status`, or `smackctl stop` first",
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    # IPPROTO_TCP, not the default 0: accepted sockets inherit it, and asyncio sets
    # TCP_NODELAY only on sockets whose proto says TCP. Without it Nagle's algorithm held
    # every response's last segment for the client's delayed ACK: +40 ms per request.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(host, port) from exc
        raise SmackError(
            f"cannot listen on {host}:{port}: {exc.strerror}",
            "choose another address with `--host`/`--port`",
        ) from exc
    sock.listen(512)
    sock.set_inheritable(False)
    return sock


class _JsonFormatter(logging.Formatter):
    """One JSON object a line; request lines carry their fields as keys."""

    def format(self, record: logging.LogRecord) -> str:
        import json

        out = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.name == "smackctl.requests":
            for part in out["message"].split():
                key, eq, value = part.partition("=")
                if eq:
                    out[key] = value
        return json.dumps(out)


def setup_logging(paths: Paths, foreground: bool, json_logs: bool = False) -> None:
    handlers: list[logging.Handler] = [
        logging.handlers.RotatingFileHandler(
            paths.supervisor_log, maxBytes=10 * 1024**2, backupCount=3
        )
    ]
    fmt: logging.Formatter = (
        _JsonFormatter()
        if json_logs
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    for h in handlers:
        h.setFormatter(fmt)
    if foreground:  # the files `smackctl logs` reads, and stderr: a terminal or the journal
        stderr = logging.StreamHandler(sys.stderr)
        journal = stderr_is_journal(os.environ)
        stderr.setFormatter(JournalFormatter(fmt if json_logs else None) if journal else fmt)
        handlers.append(stderr)
    root = logging.getLogger()
    root.handlers.clear()
    for h in handlers:
        root.addHandler(h)
    root.setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per proxied request is ours
