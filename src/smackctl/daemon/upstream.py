"""A lean HTTP/1.1 client for the supervisor's own runners.

The supervisor talks to one kind of server only: a runner on loopback that it started itself
(llama_cpp.server under uvicorn). For that, httpx's generality is pure cost: under py-spy,
httpx/httpcore/anyio were ~55% of the supervisor's CPU per proxied request (connection-pool
bookkeeping, h11 event objects, sniffio/anyio dispatch). This client writes the request in
one buffer, reads the status line and headers in one ``readuntil``, and reads the body by
Content-Length or by HTTP/1.1 chunks, which it hands out as they arrive (one SSE event per
chunk for a stream). Connections are kept alive and reused per runner address.

Errors are :class:`TransportError` (could not connect, reset, closed early, timed out);
anything the runner *answered*, 4xx and 5xx included, is an :class:`Answer`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

__all__ = ["Answer", "TransportError", "Upstream"]

_HEAD_LIMIT = 1 << 20  # a status line and headers longer than this are not a runner's


class TransportError(Exception):
    """The runner could not be reached, or its connection broke before the answer ended."""


def _why(exc: BaseException, timeout: float | None = None) -> str:
    """A low-level failure in words for a person: never an exception's repr."""
    if isinstance(exc, asyncio.IncompleteReadError):
        return "the connection closed before the answer ended"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return "the connection was reset"
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s" if timeout else "timed out"
    if isinstance(exc, asyncio.LimitOverrunError):
        return "an answer head longer than 1 MiB"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or "the connection failed"


class _Conn:
    __slots__ = ("key", "reader", "writer")

    def __init__(self, key: tuple[str, int], r: asyncio.StreamReader, w: asyncio.StreamWriter):
        self.key, self.reader, self.writer = key, r, w

    def usable(self) -> bool:
        return not (self.reader.at_eof() or self.writer.is_closing())

    def close(self) -> None:
        self.writer.close()


class Answer:
    """A runner's answer: status and headers read; the body is read with :meth:`read` or
    :meth:`chunks`, after which the connection goes back to the pool (or is closed)."""

    def __init__(self, up: Upstream, conn: _Conn, status: int, headers: dict[bytes, bytes]):
        self._up, self._conn = up, conn
        self.status = status
        self.headers = headers
        self._done = self._released = False

    @property
    def content_type(self) -> str | None:
        value = self.headers.get(b"content-type")
        return value.decode("latin-1") if value is not None else None

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives: one piece per HTTP chunk (or the whole Content-Length)."""
        reader, timeout = self._conn.reader, self._up.read_timeout
        try:
            length = self.headers.get(b"content-length")
            if self.status in (204, 304) or self.status < 200:  # no body, whatever the headers
                self._done = True
            elif length is not None:
                async with asyncio.timeout(timeout):
                    data = await reader.readexactly(int(length))
                self._done = True
                if data:
                    yield data
            elif b"chunked" in self.headers.get(b"transfer-encoding", b"").lower():
                while True:
                    async with asyncio.timeout(timeout):
                        line = await reader.readuntil(b"\r\n")
                        size = int(line.split(b";", 1)[0], 16)
                        if size == 0:  # the last chunk, then trailers up to an empty line
                            while await reader.readuntil(b"\r\n") != b"\r\n":
                                pass
                            self._done = True
                            return
                        data = await reader.readexactly(size + 2)
                    yield data[:-2]
            else:  # the body ends when the runner closes the connection
                while True:
                    async with asyncio.timeout(timeout):
                        data = await reader.read(65536)
                    if not data:
                        break
                    yield data
                self.headers[b"connection"] = b"close"
                self._done = True
        except (OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise TransportError(f"the connection to the runner broke: {_why(exc)}") from exc
        except TimeoutError as exc:
            why = _why(exc, timeout)
            raise TransportError(f"the runner stalled in the middle of its answer: {why}") from exc
        except ValueError as exc:
            raise TransportError("the runner sent a malformed HTTP body") from exc
        finally:
            self.release()

    def release(self) -> None:
        """Give the connection back when the body was read to its end, else close it (which
        tells the runner that nobody is listening any more). Safe to call more than once."""
        if self._released:
            return
        self._released = True
        if self._done and self.headers.get(b"connection", b"").lower() != b"close":
            self._up._put(self._conn)
        else:
            self._conn.close()


class Upstream:
    def __init__(self, connect_timeout: float = 5.0, read_timeout: float = 600.0) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._idle: dict[tuple[str, int], list[_Conn]] = {}

    async def post(
        self, host: str, port: int, path: str, body: bytes, headers: dict[str, str]
    ) -> Answer:
        """Send ``POST path`` with ``body``; return once the status line and headers are in."""
        return await self.request("POST", host, port, path, body, headers)

    async def request(
        self, method: str, host: str, port: int, path: str, body: bytes, headers: dict[str, str]
    ) -> Answer:
        head = [
            f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {len(body)}\r\n"
        ]
        head += [f"{k}: {v}\r\n" for k, v in headers.items()]
        request = "".join(head).encode("latin-1") + b"\r\n" + body
        key = (host, port)
        while True:
            conn, reused = self._take(key), True
            if conn is None:
                conn, reused = await self._connect(key), False
            try:
                conn.writer.write(request)
                async with asyncio.timeout(self.read_timeout):
                    raw = await conn.reader.readuntil(b"\r\n\r\n")
            except (OSError, EOFError, asyncio.IncompleteReadError) as exc:
                conn.close()
                if reused and isinstance(exc, asyncio.IncompleteReadError) and not exc.partial:
                    continue  # the runner closed this idle connection as we sent: a new one
                if reused and isinstance(exc, (ConnectionResetError, BrokenPipeError)):
                    continue
                raise TransportError(
                    f"the runner at {host}:{port} did not answer: {_why(exc)}"
                ) from exc
            except (TimeoutError, asyncio.LimitOverrunError) as exc:
                conn.close()
                why = _why(exc, self.read_timeout)
                raise TransportError(f"no answer from the runner at {host}:{port}: {why}") from exc
            except BaseException:
                conn.close()
                raise
            return _parse_head(self, conn, raw)

    def _take(self, key: tuple[str, int]) -> _Conn | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.usable():
                return conn
            conn.close()
        return None

    def _put(self, conn: _Conn) -> None:
        if conn.usable():
            self._idle.setdefault(conn.key, []).append(conn)
        else:
            conn.close()

    async def _connect(self, key: tuple[str, int]) -> _Conn:
        self._prune()
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(*key, limit=_HEAD_LIMIT)
        except (OSError, TimeoutError) as exc:
            why = _why(exc, self.connect_timeout)
            raise TransportError(
                f"cannot connect to the runner at {key[0]}:{key[1]}: {why}"
            ) from exc
        return _Conn(key, reader, writer)

    def _prune(self) -> None:
        """Close idle connections whose runner hung up (runners that stopped, keep-alive
        timeouts): a new connection is the moment to look, as it comes with a new runner."""
        for key, conns in list(self._idle.items()):
            for c in conns:
                if not c.usable():
                    c.close()
            if keep := [c for c in conns if c.usable()]:
                self._idle[key] = keep
            else:
                del self._idle[key]

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for c in conns:
                c.close()
        self._idle.clear()


def _parse_head(up: Upstream, conn: _Conn, raw: bytes) -> Answer:
    lines = raw[:-4].split(b"\r\n")
    try:
        status = int(lines[0].split(b" ", 2)[1])
    except (IndexError, ValueError) as exc:
        conn.close()
        head = lines[0][:100].decode("latin-1")
        raise TransportError(f"not an HTTP answer from the runner: {head}") from exc
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return Answer(up, conn, status, headers)
