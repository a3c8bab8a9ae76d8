"""The supervisor's HTTP/1.1 client to its runners (daemon/upstream.py), against a real
asyncio server on loopback that answers the way a test scripts it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from smackctl.daemon.upstream import Answer, TransportError, Upstream

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]


class Server:
    """Counts connections and requests; each request is answered by ``script``. ``up`` is
    the client under test, closed with the server."""

    def __init__(self, script: Script, **client: float) -> None:
        self.script = script
        self.up = Upstream(**client)
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed = asyncio.Event()  # a client closed a connection (EOF seen)
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        await self.up.aclose()
        self._server.close()

    async def post(
        self, path: str = "/", body: bytes = b"{}", headers: dict[str, str] | None = None
    ) -> Answer:
        return await self.up.post("127.0.0.1", self.port, path, body, headers or {})

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                self.requests.append(head + await r.readexactly(length))
                await self.script(r, w, self)
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed.set()
        finally:
            w.close()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def answer_ok(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
    w.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n")
    w.write(b'{"ok":true}')


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))  # type: ignore[arg-type]


def test_a_body_by_content_length_and_the_connection_is_reused() -> None:
    async def main() -> None:
        async with Server(answer_ok) as srv:
            for _ in range(3):
                a = await srv.post("/v1/x", b'{"a":1}', {"X-Id": "7"})
                assert (a.status, a.content_type) == (200, "application/json")
                assert await a.read() == b'{"ok":true}'
            assert srv.connections == 1  # keep-alive: one connection for three requests
            assert srv.requests[0].startswith(b"POST /v1/x HTTP/1.1\r\n")
            assert b"X-Id: 7\r\n" in srv.requests[0] and srv.requests[0].endswith(b'{"a":1}')

    run(main())


def test_an_answer_without_a_body_needs_no_length() -> None:
    async def no_content(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        w.write(b"HTTP/1.1 204 No Content\r\n\r\n")

    async def main() -> None:
        async with Server(no_content, read_timeout=5) as srv:
            for _ in range(2):
                a = await srv.post()
                assert (a.status, await a.read()) == (204, b"")
            assert srv.connections == 1

    run(main())


def test_chunks_are_handed_out_as_they_arrive() -> None:
    """The first SSE event reaches the caller while the runner has not written the second:
    the client does not buffer a stream."""
    go_on = asyncio.Event()

    async def stream(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        w.write(chunk(b"data: 1\n\n"))
        await w.drain()
        await go_on.wait()
        w.write(chunk(b"data: 2\n\n") + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")

    async def main() -> None:
        async with Server(stream) as srv:
            a = await srv.post("/v1/x")
            chunks = a.chunks()
            assert await anext(chunks) == b"data: 1\n\n"
            go_on.set()
            assert [c async for c in chunks] == [b"data: 2\n\n", b"data: [DONE]\n\n"]
            # the stream ended cleanly, so its connection serves the next request
            go_on.clear()
            b = await srv.post("/v1/x")
            go_on.set()
            assert await b.read() == b"data: 1\n\ndata: 2\n\ndata: [DONE]\n\n"
            assert srv.connections == 1

    run(main())


def test_an_idle_connection_the_runner_closed_is_replaced() -> None:
    """uvicorn closes idle keep-alive connections after 5 s; the next request must not fail."""

    async def once(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        await answer_ok(r, w, s)
        await w.drain()
        raise ConnectionError("closing, as a keep-alive timeout would")

    async def main() -> None:
        async with Server(once) as srv:
            for _ in range(3):
                a = await srv.post()
                assert await a.read() == b'{"ok":true}'
            assert srv.connections == 3

    run(main())


def test_a_stream_cut_midway_raises_and_the_connection_is_dropped() -> None:
    async def cut(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunk(b"data: 1\n\n"))
        await w.drain()
        raise ConnectionError("the runner died")

    async def main() -> None:
        async with Server(cut) as srv:
            a = await srv.post()
            got = []
            why = "the connection to the runner broke: the connection closed before the answer"
            with pytest.raises(TransportError, match=why):
                async for c in a.chunks():
                    got.append(c)
            assert got == [b"data: 1\n\n"]
            assert srv.up._idle == {}  # a broken connection never goes back to the pool

    run(main())


def test_a_caller_that_stops_reading_closes_the_connection() -> None:
    """A client that goes away mid-stream: the runner must see the connection close, which
    is what makes llama_cpp.server stop generating."""

    async def endless(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        while True:
            w.write(chunk(b"data: x\n\n"))
            await w.drain()
            await asyncio.sleep(0.01)

    async def main() -> None:
        async with Server(endless) as srv:
            a = await srv.post()
            chunks = a.chunks()
            assert await anext(chunks) == b"data: x\n\n"
            await chunks.aclose()
            await asyncio.wait_for(srv.closed.wait(), 10)
            assert srv.up._idle == {}

    run(main())


def test_nothing_listening_and_garbage_answers_are_transport_errors() -> None:
    async def garbage(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        w.write(b"SSH-2.0-OpenSSH\r\n\r\n")

    async def main() -> None:
        async with Server(garbage) as srv:
            port = srv.port
            with pytest.raises(TransportError, match="not an HTTP answer"):
                await srv.post()
        with pytest.raises(TransportError, match="cannot connect"):
            await Upstream().post("127.0.0.1", port, "/", b"{}", {})

    run(main())
