"""What the supervisor does for systemd when it runs as a service: readiness and stopping
notifications, log lines the journal can rank, and a drain on SIGTERM.

Standard library only. The notification protocol (sd_notify(3)) is one datagram of
newline-separated ``VAR=value`` fields sent to the AF_UNIX socket that ``$NOTIFY_SOCKET``
names; a name starting with ``@`` is in the abstract namespace. ``JOURNAL_STREAM`` holds
``device:inode`` of the stream systemd connected to stderr (systemd.exec(5)): stderr is the
journal only when it is still that stream, not merely because a variable was inherited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import uvicorn

__all__ = [
    "JournalFormatter",
    "Notifier",
    "draining_server",
    "notify_address",
    "signal_action",
    "stderr_is_journal",
]

log = logging.getLogger("smackctl.supervisor")


def notify_address(value: str | None) -> str | None:
    """The socket address ``$NOTIFY_SOCKET`` names, or None when there is none we can use
    (unset, empty, or a ``vsock:`` address, which is for virtual machines)."""
    if not value:
        return None
    if value[0] == "@":
        return "\0" + value[1:]
    if value[0] == "/":
        return value
    return None


class Notifier:
    """Sends state changes to the service manager; does nothing when none listens."""

    def __init__(self, address: str | None) -> None:
        self.address = address

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str]) -> Notifier:
        """Takes ``NOTIFY_SOCKET`` out of ``environ``: runners must not inherit it (they
        would be able to speak for the supervisor)."""
        return cls(notify_address(environ.pop("NOTIFY_SOCKET", None)))

    def send(self, *fields: str) -> bool:
        """Send ``READY=1``, ``STATUS=…`` and the like in one datagram. Never blocks, never
        raises: a manager that stopped listening must not stop the supervisor."""
        if self.address is None:
            return False
        data = "\n".join(f.replace("\n", " ") for f in fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(data, socket.MSG_DONTWAIT, self.address)
        except OSError as exc:
            log.warning("could not notify systemd (%s): %s", fields[0], exc.strerror or exc)
            return False
        return True


def stderr_is_journal(environ: Mapping[str, str], fd: int = 2) -> bool:
    """Whether ``fd`` is the journal stream systemd gave this service."""
    dev, _, ino = environ.get("JOURNAL_STREAM", "").partition(":")
    if not (dev.isascii() and dev.isdigit() and ino.isascii() and ino.isdigit()):
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class JournalFormatter(logging.Formatter):
    """Each line starts with ``<N>``, its syslog priority, which journald reads (its
    ``SyslogLevelPrefix=`` is on by default) so that ``journalctl -p warning`` finds the
    warnings; no timestamp, the journal stamps every line itself."""

    PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}

    def __init__(self, inner: logging.Formatter | None = None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{self.PRIORITY.get(record.levelname, 6)}>"
        # a traceback's lines are entries of their own: each gets the priority too
        return prefix + self.inner.format(record).replace("\n", "\n" + prefix)


def signal_action(sig: int, received_before: int) -> str:
    """What a stop signal does: the first one drains (``drain``), as `smackctl stop` does; a
    second Ctrl-C stops without waiting (``now``); any other repeat changes nothing
    (``again``: systemd sends SIGKILL itself once TimeoutStopSec= has passed)."""
    if received_before == 0:
        return "drain"
    return "now" if sig == signal.SIGINT else "again"


def draining_server(
    config: uvicorn.Config,
    request_shutdown: Callable[[float, bool], None],
    drain_timeout: float,
) -> uvicorn.Server:
    """uvicorn's server, with SIGTERM and SIGINT handed to the supervisor's own drain
    (``request_shutdown(timeout, force)``). uvicorn's handling stopped serving without that
    drain, logged nothing, and raised the signal again once the server had stopped: its
    default action then killed the process before the clean-up (runners left to
    PR_SET_PDEATHSIG, the pid file left behind, exit status -15)."""
    import uvicorn

    received: list[int] = []

    class Server(uvicorn.Server):
        def on_signal(self, sig: int) -> None:
            name = signal.Signals(sig).name
            action = signal_action(sig, len(received))
            received.append(sig)
            if action == "drain":
                log.info("%s: draining (up to %gs), then stopping", name, drain_timeout)
                request_shutdown(drain_timeout, False)
            elif action == "now":
                log.warning("%s again: stopping now, without waiting for the drain", name)
                request_shutdown(0.0, True)
                self.force_exit = True
            else:
                log.info("%s: already stopping", name)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.on_signal, sig)
            try:
                yield
            finally:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)

    return Server(config)
