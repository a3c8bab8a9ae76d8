"""The supervisor's HTTP connections, held to bounds: idle ones close, and there are never so
many that the supervisor runs out of file descriptors for its runners, its logs and SQLite.

uvicorn arms its keep-alive timer only once a response is sent, and any byte received
disarms it: a connection that never completes a request head (opened and left idle, or fed
a byte now and then) was held for good, and about a thousand of them took every descriptor
under a common 1024 limit. Here a connection must complete each request head within
``head_timeout`` of its start or of its last response, and past ``max_connections`` open ones
a new connection gets a 503 and is closed at once.
"""

from __future__ import annotations

import asyncio
import logging
import resource

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # httptools: a dependency

__all__ = ["DESCRIPTOR_RESERVE", "GuardedHttp", "connection_limit", "raise_fd_limit"]

log = logging.getLogger("smackctl.supervisor")

#: descriptors kept for the supervisor's own files: runners' pipes and logs, SQLite, sockets
DESCRIPTOR_RESERVE = 256

_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 1\r\nConnection: close\r\nContent-Length: 118\r\n\r\n"
    b'{"error": {"message": "too many open connections to the supervisor", '
    b'"type": "server_busy", "code": "too_many_connections"}}'
)


def raise_fd_limit() -> int:
    """Raise the soft limit on open descriptors to the hard one (a common default soft
    limit is 1024); return the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def connection_limit(fd_limit: int) -> int:
    """Open connections the supervisor takes at most with ``fd_limit`` descriptors."""
    return max(16, fd_limit - DESCRIPTOR_RESERVE)


class GuardedHttp(HttpToolsProtocol):
    """uvicorn's HTTP protocol with a head timeout and a cap on open connections (class
    attributes, set by ``configure`` before the server starts)."""

    head_timeout = 15.0
    max_connections = 4096
    refused = 0

    @classmethod
    def configure(cls, head_timeout: float, max_connections: int) -> type[GuardedHttp]:
        return type(
            "GuardedHttp",
            (cls,),
            {"head_timeout": head_timeout, "max_connections": max_connections, "refused": 0},
        )

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        if len(self.connections) > self.max_connections:
            cls = type(self)
            cls.refused += 1
            if cls.refused == 1 or cls.refused % 1000 == 0:
                log.warning(
                    "%d connection(s) refused: %d are open, the most the supervisor takes "
                    "(SMACKCTL_MAX_CONNECTIONS, or the descriptor limit: `ulimit -n`)",
                    cls.refused,
                    len(self.connections) - 1,
                )
            transport.write(_BUSY)
            transport.close()
            return
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        waiting = self.cycle is None or self.cycle.response_complete
        if waiting and not self.transport.is_closing():
            self.transport.close()  # no request came (or no whole head of one) in time

    def on_headers_complete(self) -> None:
        self._disarm()  # a request is under way: it has no time limit here
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request's head, on a kept-alive connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)
