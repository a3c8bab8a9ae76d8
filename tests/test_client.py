"""The CLI's client of the supervisor (smackctl/client.py, on http.client), against a real
socket server on loopback that answers as each test scripts it."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from smackctl.client import Client
from smackctl.errors import ApiError, SupervisorNotRunning

Script = Callable[[socket.socket, int], None]  # (connection, request number on it)


def read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("client went away")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            while len(body) < int(line.split(b":")[1]):
                body += conn.recv(65536)
    return head


class Server:
    def __init__(self, script: Script) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.script = script
        self.connections = 0
        self.heads: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            n = 0
            try:
                while True:
                    self.heads.append(read_request(conn))
                    self.script(conn, n)
                    n += 1
            except (ConnectionError, OSError):
                pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def serve() -> Iterator[Callable[[Script], Server]]:
    servers: list[Server] = []

    def start(script: Script) -> Server:
        servers.append(Server(script))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def ok_json(conn: socket.socket, n: int) -> None:
    body = b'{"n": %d}' % n
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


def test_requests_share_one_connection_and_send_the_token(serve: Callable[[Script], Server]):
    srv = serve(ok_json)
    with Client(srv.url, token="t0k", explicit=True) as c:
        assert c.get("/api/status", params={"a": "1 2"}) == {"n": 0}
        assert c.post("/api/x", {"k": 1}) == {"n": 1}
    assert srv.connections == 1
    assert srv.heads[0].startswith(b"GET /api/status?a=1+2 HTTP/1.1")
    assert b"Authorization: Bearer t0k" in srv.heads[0]
    assert b"Content-Type: application/json" in srv.heads[1]


def test_a_connection_the_supervisor_closed_while_idle_is_replaced(serve):
    """The chat REPL waits on the user for minutes; uvicorn closes idle connections after
    5 s. The next request must go out on a new connection, not fail."""

    def once(conn: socket.socket, n: int) -> None:
        ok_json(conn, n)
        conn.shutdown(socket.SHUT_RDWR)  # as a keep-alive timeout would, no Connection: close

    srv = serve(once)
    with Client(srv.url, token="t", explicit=True) as c:
        assert c.get("/a") == {"n": 0}
        got = None
        for _ in range(200):  # the close reaches the client's socket a moment later
            got = c.get("/b")
        assert got == {"n": 0}
    assert srv.connections == 201


def test_errors_carry_the_supervisors_message_hint_and_exit_code(serve):
    def refuse(conn: socket.socket, n: int) -> None:
        body = (
            b'{"error": {"message": "unknown model x (fix: see models list)", '
            b'"type": "invalid_request_error", "code": "UnknownModel", "hint": "see models list"}}'
        )
        conn.sendall(b"HTTP/1.1 400 Bad\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    with Client(serve(refuse).url, token="t", explicit=True) as c, pytest.raises(ApiError) as e:
        c.get("/api/models/x")
    assert (e.value.message, e.value.hint, e.value.code) == (
        "unknown model x",
        "see models list",
        "UnknownModel",
    )
    assert (e.value.status, e.value.exit_code) == (400, 2)


def test_a_stream_arrives_line_by_line_and_a_cut_stream_is_an_error(serve):
    def cut(conn: socket.socket, n: int) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for n in (1, 2):
            line = b'{"event": %d}\n' % n
            conn.sendall(b"%x\r\n%s\r\n" % (len(line), line))
        conn.close()

    events = []
    with Client(serve(cut).url, token="t", explicit=True) as c, pytest.raises(ApiError) as e:
        for ev in c.ndjson("POST", "/api/models/x/load"):
            events.append(ev)
    assert events == [{"event": 1}, {"event": 2}]
    assert e.value.error_type == "connection_broken"
    assert "closed the connection in the middle of an answer" in e.value.message


def test_nothing_listening_and_no_answer_in_time(serve):
    free = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{free.getsockname()[1]}"
    free.close()
    with Client(url, token="t", explicit=True) as c, pytest.raises(SupervisorNotRunning):
        c.get("/api/status")

    silent = serve(lambda conn, n: conn.recv(1))  # reads the request, never answers
    with (
        Client(silent.url, token="t", timeout=0.3, explicit=True) as c,
        pytest.raises(ApiError) as e,
    ):
        c.get("/api/status")
    assert (e.value.status, e.value.error_type) == (504, "timeout")
