"""Connections held to bounds: idle and trickling ones are closed, a flood of them is refused
at the door, and the supervisor keeps its descriptors for its runners (real sockets)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest

from conftest import Home, Supervisor, launch, shutdown, wait_for


@contextlib.contextmanager
def _supervisor(home: Home, head_timeout: str) -> Iterator[Supervisor]:
    home.env.update(
        SMACKCTL_HEAD_TIMEOUT=head_timeout,
        SMACKCTL_MAX_CONNECTIONS="40",
        SMACKCTL_BODY_TIMEOUT="1",
    )
    sup = launch(home)
    try:
        yield sup
    finally:
        shutdown(sup)


@pytest.fixture
def guarded(home: Home) -> Iterator[Supervisor]:
    """Heads must come within 1 s."""
    with _supervisor(home, "1") as sup:
        yield sup


@pytest.fixture
def capped(home: Home) -> Iterator[Supervisor]:
    """At most 40 connections; heads within 30 s (the flood stays for the test)."""
    with _supervisor(home, "30") as sup:
        yield sup


def _connect(sup: Supervisor) -> socket.socket:
    host, port = sup.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _closed_by_peer(s: socket.socket) -> bool:
    s.settimeout(0.05)
    try:
        return s.recv(4096) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_idle_and_trickling_connections_are_closed(guarded: Supervisor) -> None:
    idle = _connect(guarded)
    trickle = _connect(guarded)
    sent = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"x" * 2000
    i = 0

    def trickled_out() -> bool:
        nonlocal i
        if i < len(sent):  # a byte at a time: the head is never whole
            with contextlib.suppress(OSError):
                trickle.send(sent[i : i + 1])
            i += 1
        return _closed_by_peer(trickle)

    try:
        wait_for(lambda: _closed_by_peer(idle), 10, "the idle connection to be closed")
        wait_for(trickled_out, 10, "the trickling connection to be closed")
    finally:
        idle.close()
        trickle.close()
    assert i < len(sent)  # closed before its head could be whole
    # a client that sends its request is served as ever, and kept alive between requests
    with guarded.client() as c:
        for _ in range(3):
            assert c.get("/health").status_code == 200


def test_a_body_that_trickles_in_gets_408(guarded: Supervisor) -> None:
    s = _connect(guarded)
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {guarded.token}\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n{"
    )
    s.sendall(head.encode())
    s.settimeout(10)
    answer = b""
    while b"did not arrive" not in answer:  # the head and the body may come in two reads
        more = s.recv(65536)
        if not more:
            break
        answer += more
    s.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"did not arrive within 1s" in answer


def test_a_flood_of_connections_is_refused_and_the_supervisor_keeps_working(
    capped: Supervisor,
) -> None:
    guarded = capped
    with guarded.client(timeout=60) as kept:
        assert kept.get("/health").status_code == 200  # a connection made before the flood
        flood = [_connect(guarded) for _ in range(39)]
        try:
            extra = [_connect(guarded) for _ in range(5)]
            for s in extra:
                s.settimeout(10)
                answer = s.recv(4096)
                assert answer.startswith(b"HTTP/1.1 503"), answer[:100]
                assert b"too many open connections" in answer
                s.close()
            # the supervisor still has descriptors for a runner, its pipes, logs and SQLite
            r = kept.post(
                "/v1/chat/completions",
                json={"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}],
                      "max_tokens": 2},
            )  # fmt: skip
            assert r.status_code == 200, r.text
        finally:
            for s in flood:
                s.close()
    assert "connection(s) refused: 40 are open" in guarded.log()
    with guarded.client() as c:  # the idle flood is gone: new connections are taken again
        assert c.get("/health").status_code == 200
