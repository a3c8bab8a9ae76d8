"""Past one machine: ``backend: openai`` deployments, groups, fallbacks, retries and circuit
breakers, against real servers on loopback standing in for remote hosts.

- two real ``llama-server`` processes (a tiny model, an API key) are the replicas of a group;
- a small real HTTP server answers what a test queues on purpose: a 429 with Retry-After,
  a 500, a stall, a stream cut after its first event, or a good answer; and what a hostile
  or broken server sends: a gzip bomb, a body dripped a byte at a time, a gzip-compressed
  stream, token counts that are not counts.

The breaker's own rules are checked on a stepped clock (no waiting); the supervisor's on real
failures, with ``breaker_open_for: 1`` and a health check every 0.2 s.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from smackctl.daemon.gateway.breaker import Breaker, backoff
from smackctl.daemon.gateway.remote import retry_after

from conftest import Supervisor, free_port, launch_on, shutdown, smackctl, wait_for

KEY = "remote-secret-4f1c9a"
CHAT = "/v1/chat/completions"
ASK = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}


# -- the breaker on a stepped clock ----------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_breaker_opens_after_three_connection_failures_and_one_probe_decides() -> None:
    clock, changes = Clock(), []
    b = Breaker("r", open_for=30, now=clock, on_change=lambda b, old, why: changes.append(b.state))
    b.failure("refused", connection=True)
    b.failure("refused", connection=True)
    assert b.state == "closed" and b.allows()
    b.failure("refused", connection=True)
    assert b.state == "open" and "3 connection failures in a row" in b.why
    assert not b.allows()
    clock.t += 29.9
    assert not b.allows() and b.retry_in() == pytest.approx(0.1)
    clock.t += 0.1
    assert b.allows() and b.state == "half-open"  # the one probe
    assert not b.allows()  # no second request while it decides
    b.failure("refused", connection=True)
    assert b.state == "open" and b.why.startswith("the probe failed")
    clock.t += 30
    assert b.allows()
    b.success()
    assert b.state == "closed" and b.allows()
    assert changes == ["open", "half-open", "open", "half-open", "closed"]


def test_breaker_judges_failures_over_the_last_minute_only() -> None:
    clock = Clock()
    b = Breaker("r", now=clock)
    for ok in (True, False, True, True, False):  # 5xx answers, not connection failures
        b.success() if ok else b.failure("answered 500", connection=False)
    assert b.state == "closed"  # 2 of 5: not more than half
    clock.t += 61  # the window forgets what is older than 60 s
    b.failure("answered 500", connection=False)
    b.failure("answered 500", connection=False)
    assert b.state == "closed"  # 2 of 2 failed, but 5 requests are needed to judge


def test_breaker_counts_three_of_five_as_more_than_half() -> None:
    b = Breaker("r", now=Clock())
    for ok in (False, True, False, True):
        b.success() if ok else b.failure("answered 503", connection=False)
    b.failure("answered 503", connection=False)
    assert b.state == "open" and "3 of the last 5 requests failed" in b.why


def test_backoff_is_full_jitter_capped_and_retry_after_reads_both_forms() -> None:
    assert [backoff(a, lambda: 1.0) for a in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert backoff(3, lambda: 0.25) == 1.0
    assert retry_after("2") == 2.0 and retry_after(None) is None and retry_after("soon") is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=lambda: 1445412470.0) == 10.0


# -- real servers ------------------------------------------------------------------------------


MIB = 1024**2


def _gzip_bomb(mib: int) -> bytes:
    """A valid gzip body of ~1 KB per MiB that inflates to ``mib`` MiB of zeros: one deflate
    block of a MiB, made independent of the ones before by a full flush, said ``mib`` times."""
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = z.compress(bytes(MIB)) + z.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(bytes(MIB), crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    return header + block * mib + z.flush() + struct.pack("<II", crc, (mib * MIB) & 0xFFFFFFFF)


def _event(model: str, content: str | None, finish: str | None = None) -> bytes:
    chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": model,
             "choices": [{"index": 0, "delta": {} if content is None else {"content": content},
                          "finish_reason": finish}]}  # fmt: skip
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


@dataclass
class Faulty:
    """A real HTTP server that answers what is queued: "ok", "429:N" (Retry-After N), "500",
    "stall" (answers nothing for 5 s), "cut" (a stream cut after its first event); and as a
    hostile or broken server would: "bomb" (a 10 KB gzip body that inflates to 512 MiB),
    "drip" (a body of 100 bytes, one every 0.2 s), "dripstream" (a stream's first event,
    then an SSE comment every 0.2 s), "gzipstream" (a stream compressed with gzip whatever
    was asked, flushed event by event), "badusage" (token counts of -5 and "7")."""

    port: int
    queue: list[str] = field(default_factory=list)
    seen: list[tuple[float, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None


def _faulty() -> Faulty:
    f = Faulty(free_port())

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # chunked bodies, kept-alive connections

        def log_message(self, *args: Any) -> None:
            pass

        def _json(self, status: int, body: dict[str, Any], **headers: str) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # the health check
            self._json(200, {"object": "list", "data": []})

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        def _drip(self, stream: bool) -> None:
            """Never quiet for the per-read timeout, never done: until the reader goes."""
            self.send_response(200)
            if stream:
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "100")
            self.end_headers()
            self.close_connection = True
            try:
                if stream:
                    self._chunk(_event("tiny", "Hel"))
                for _ in range(100):
                    if stream:
                        self._chunk(b": still here\n\n")
                    else:
                        self.wfile.write(b" ")
                        self.wfile.flush()
                    time.sleep(0.2)  # the server's pace, not the test's synchronisation
            except OSError:
                pass  # the supervisor hung up: what the test wants

        def _gzip_stream(self, model: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            z = zlib.compressobj(6, zlib.DEFLATED, 31)
            events = [_event(model, piece) for piece in ("Hel", "lo, ", "world")]
            events += [_event(model, None, "stop"), b"data: [DONE]\n\n"]
            for event in events:  # each flushed, as a proxy that compresses a stream does
                self._chunk(z.compress(event) + z.flush(zlib.Z_SYNC_FLUSH))
            self._chunk(z.flush())
            self.wfile.write(b"0\r\n\r\n")

        def _bomb(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(_bomb_body())))
            self.end_headers()
            self.close_connection = True
            try:
                self.wfile.write(_bomb_body())
            except OSError:
                pass  # refused at its cap, the rest unread

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            f.seen.append((time.monotonic(), body, dict(self.headers)))
            what = f.queue.pop(0) if f.queue else "ok"
            if what in ("drip", "dripstream"):
                self._drip(stream=what == "dripstream")
            elif what == "gzipstream":
                self._gzip_stream(body["model"])
            elif what == "bomb":
                self._bomb()
            elif what.startswith("429"):
                self._json(429, {"error": {"message": "slow down"}}, **{"Retry-After": what[4:]})
            elif what == "500":
                self._json(500, {"error": {"message": "on purpose"}})
            elif what == "401":  # the key it was sent, refused
                self._json(401, {"error": {"message": "missing or wrong API token or key"}})
            elif what == "403":  # a policy's answer to this request (moderation, a region)
                self._json(403, {"error": {"message": "flagged by moderation"}})
            elif what == "stall":
                time.sleep(5)
            elif what == "cut":  # one chunk of a chunked body, then the socket closes
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                event = {"choices": [{"index": 0, "delta": {"content": "Hel"}}]}
                data = b"data: " + json.dumps(event).encode() + b"\n\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                self.close_connection = True
            else:
                usage: dict[str, Any] = {"prompt_tokens": 3, "completion_tokens": 1}
                if what == "badusage":
                    usage = {"prompt_tokens": -5, "completion_tokens": "7"}
                self._json(
                    200,
                    {
                        "id": "x", "object": "chat.completion", "model": body["model"],
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": "fine"}}],
                        "usage": {**usage, "total_tokens": 4},
                    },
                )  # fmt: skip

    f.server = ThreadingHTTPServer(("127.0.0.1", f.port), Handler)
    # server_close() waits for the handlers (a stalled one too), so none leaves its socket
    # open past the test
    f.server.daemon_threads = False
    f.server.block_on_close = True
    threading.Thread(target=f.server.serve_forever, daemon=True).start()
    return f


@functools.cache
def _bomb_body() -> bytes:
    return _gzip_bomb(512)


def _llama_server(model: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    from smackctl.paths import find_llama_server

    binary = find_llama_server(None)
    assert binary is not None
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [binary, "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-np", "4",
             "-c", "2048", "--no-webui", "--api-key", KEY, "--threads", "1"],
            stdout=out, stderr=out, start_new_session=True,
        )  # fmt: skip

    def up() -> bool:
        assert proc.poll() is None, log.read_text()[-2000:]
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, 30, f"llama-server on {port}")
    return proc


@dataclass
class World:
    sup: Supervisor
    faulty: Faulty
    model: Path
    ports: list[int]
    replicas: list[subprocess.Popen[bytes]]
    root: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[World]:
    root = tmp_path_factory.mktemp("gateway")
    model = model_dir / "tiny-a.gguf"
    ports = [free_port(), free_port()]
    replicas = [_llama_server(model, p, root / f"replica-{i}.log") for i, p in enumerate(ports)]
    faulty = _faulty()
    remote = (
        "    backend: openai\n    api_key_env: REMOTE_KEY\n    upstream_model: tiny\n"
        "    breaker_open_for: 1\n    health_interval: 0.2\n    connect_timeout: 1\n"
    )
    sup = launch_on(
        root,
        "gw",
        "name: gw\nmodels:\n"
        f"  r1:\n    url: http://127.0.0.1:{ports[0]}/v1\n{remote}    retries: 0\n"
        f"  r2:\n    url: http://127.0.0.1:{ports[1]}/v1\n{remote}    retries: 0\n"
        f"  flaky:\n    url: http://127.0.0.1:{faulty.port}/v1\n{remote}"
        "    timeout: 2\n    fallbacks: [r2]\n"
        f"  local:\n    path: {model}\n    n_ctx: 512\n    fallbacks: [r2]\n"
        f"  broken:\n    path: {model_dir / 'corrupt.gguf'}\n    fallbacks: [r2]\n"
        f"  plain:\n    path: {model}\n    n_ctx: 512\n"
        f"  keyed:\n    url: http://127.0.0.1:{faulty.port}/v1\n{remote}"
        "    retries: 2\n    fallbacks: [r2]\n"
        f"  nokey:\n    url: http://127.0.0.1:{ports[1]}/v1\n    backend: openai\n"
        "    api_key_env: SMACKCTL_TEST_NEVER_SET\n"
        f"  priced:\n    url: http://127.0.0.1:{ports[0]}/v1\n{remote}"
        "    price: {input: 1000, output: 2000}\n"
        "groups:\n  pair:\n    deployments: [r1, r2]\n    policy: round-robin\n"
        "    aliases: [replicas]\n",
        REMOTE_KEY=KEY,
    )
    yield World(sup, faulty, model, ports, replicas, root)
    shutdown(sup)
    for p in replicas:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)
    assert faulty.server is not None
    faulty.server.shutdown()
    faulty.server.server_close()


def _post(sup: Supervisor, model: str, **extra: Any) -> httpx.Response:
    with sup.client(timeout=60) as c:
        return c.post(CHAT, json={**ASK, "model": model, **extra})


def _backend(sup: Supervisor, name: str) -> dict[str, Any]:
    with sup.client() as c:
        view = c.get("/api/backends").json()
    return next(d for d in view["deployments"] if d["name"] == name)  # type: ignore[no-any-return]


def _closed(world: World, name: str) -> None:
    wait_for(
        lambda: _backend(world.sup, name)["breaker"]["state"] == "closed", 15, f"{name} closed"
    )


def test_a_group_spreads_requests_and_answers_in_openai_shape(world: World) -> None:
    who = []
    for _ in range(4):
        r = _post(world.sup, "replicas")  # the group's alias
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] is not None
        who.append(r.headers["X-Smackctl-Deployment"])
    assert sorted(who) == ["r1", "r1", "r2", "r2"]  # round-robin
    with world.sup.client() as c:
        ids = {m["id"] for m in c.get("/v1/models").json()["data"]}
    assert {"r1", "r2", "flaky", "local", "pair"} <= ids


def test_a_replica_killed_under_load_fails_no_request_and_its_breaker_recovers(
    world: World,
) -> None:
    def one(_: int) -> tuple[int, str]:
        r = _post(world.sup, "pair")
        return r.status_code, r.headers.get("X-Smackctl-Deployment", "")

    with ThreadPoolExecutor(8) as pool:
        first = list(pool.map(one, range(16)))
        os.killpg(world.replicas[0].pid, signal.SIGKILL)  # r1's host goes away under load
        world.replicas[0].wait(5)
        after = list(pool.map(one, range(32)))
    assert all(status == 200 for status, _ in first + after), first + after
    assert {who for _, who in after[-8:]} == {"r2"}
    wait_for(lambda: _backend(world.sup, "r1")["breaker"]["state"] != "closed", 10, "r1 open")
    r1 = _backend(world.sup, "r1")
    assert "connection" in r1["breaker"]["why"] or "health check" in r1["breaker"]["why"]
    status = world.sup.status()
    assert any("deployment r1: circuit breaker" in w for w in status["warnings"])
    # back on the same port: the half-open probe closes the breaker, r1 serves again
    world.replicas[0] = _llama_server(world.model, world.ports[0], world.root / "replica-0b.log")
    wait_for(lambda: _backend(world.sup, "r1")["breaker"]["state"] == "closed", 15, "r1 closed")
    served = {_post(world.sup, "pair").headers["X-Smackctl-Deployment"] for _ in range(4)}
    assert served == {"r1", "r2"}
    with world.sup.client() as c:
        metrics = c.get("/metrics").text
    assert 'smackctl_breaker_changes_total{deployment="r1",state="open"}' in metrics
    assert 'smackctl_breaker_state{deployment="r1"} 0.0' in metrics


def test_retry_after_is_honoured(world: World) -> None:
    world.faulty.seen.clear()
    world.faulty.queue[:] = ["429:1", "ok"]
    r = _post(world.sup, "flaky")
    assert r.status_code == 200 and r.headers["X-Smackctl-Deployment"] == "flaky"
    (t1, body, headers), (t2, _, _) = world.faulty.seen
    assert t2 - t1 >= 1.0  # it waited what the server asked
    assert body["model"] == "tiny" and headers["Authorization"] == f"Bearer {KEY}"


def test_5xx_and_stalls_are_retried_then_fall_back_before_the_first_byte(world: World) -> None:
    world.faulty.seen.clear()
    world.faulty.queue[:] = ["stall", "500", "ok"]
    r = _post(world.sup, "flaky")
    assert r.status_code == 200 and r.headers["X-Smackctl-Deployment"] == "flaky"
    assert len(world.faulty.seen) == 3  # two retries on the same server
    world.faulty.queue[:] = ["500", "500", "500"]
    r = _post(world.sup, "flaky")
    assert r.status_code == 200, r.text
    assert r.headers["X-Smackctl-Deployment"] == "r2"
    assert r.headers["X-Smackctl-Fallback-From"] == "flaky"
    # 429, ok, stall, 500, ok, 500: more than half of the last 6 failed, so the breaker
    # opened at once and the retries stopped; the health check's probe closes it again
    breaker = _backend(world.sup, "flaky")["breaker"]
    assert breaker["state"] == "open" and "4 of the last 6 requests failed" in breaker["why"]
    assert len(world.faulty.seen) == 4
    world.faulty.queue.clear()
    _closed(world, "flaky")
    with world.sup.client() as c:
        usage = c.get("/api/usage", params={"since": "0"}).json()
    rows = {(u["model"], u["errors"] > 0) for u in usage}
    assert ("flaky", True) in rows and ("r2", False) in rows


def test_a_server_that_refuses_our_key_is_not_the_clients_401(world: World) -> None:
    """A server elsewhere that answers 401 refused the key smackctl sent it, not the
    client's: never passed on as the client's own 401; it counts as that deployment's
    failure (its fallback answers) and the log says which variable the key comes from. A
    key variable the supervisor does not have is a warning in `status`."""
    world.faulty.seen.clear()
    world.faulty.queue[:] = ["401"] * 3
    r = _post(world.sup, "keyed")
    world.faulty.queue.clear()
    assert r.status_code == 200, r.text
    assert r.headers["X-Smackctl-Deployment"] == "r2"
    assert r.headers["X-Smackctl-Fallback-From"] == "keyed"
    assert "refused the key it was sent (401: " in world.sup.log()
    assert "check the key in $REMOTE_KEY" in world.sup.log()
    assert len(world.faulty.seen) == 1  # not asked again with the same key (retries: 2)
    world.faulty.queue[:] = ["403"]  # a 403 is that server's answer to this request: as it is
    r = _post(world.sup, "keyed")
    world.faulty.queue.clear()
    assert r.status_code == 403 and "flagged by moderation" in r.text
    warnings = world.sup.status()["warnings"]
    assert any(
        "deployment nokey: its key's variable SMACKCTL_TEST_NEVER_SET is not set" in w
        for w in warnings
    ), warnings


def test_an_unknown_or_missing_model_names_every_name_a_request_may_give(world: World) -> None:
    """The 404 for an unknown model lists the servers elsewhere and the groups too (it
    listed the local models only); a request that names none, to a profile without a
    default model, is a 400 that says so (it was "unknown model '(none given)'")."""
    r = _post(world.sup, "nope")
    assert r.status_code == 404
    message = r.json()["error"]["message"]
    assert all(n in message for n in ("r1", "flaky", "pair", "replicas", "plain")), message
    with world.sup.client() as c:
        r = c.post(CHAT, json=ASK)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert "the request names no model" in error["message"] and "default_model" in error["hint"]
    with world.sup.client() as c:  # a server elsewhere has no runner, file or log here
        r = c.get("/api/models/r1")
    assert r.status_code == 400 and "r1 is not a model this supervisor runs" in r.text
    assert "did you mean" not in r.text
    # the CLI asks no local model's view of a server elsewhere (each chat logged a 404)
    done = smackctl(world.sup.home, "chat", "-m", "r1", "--max-tokens", "2", "hi")
    assert done.returncode == 0, done.stderr
    assert "route=/api/models/r1 status=404" not in world.sup.log()


def test_a_request_deadline_bounds_a_server_elsewhere_too(world: World) -> None:
    """A stalling server elsewhere (5 s of nothing) and a request that gives itself 0.5 s:
    504 deadline_exceeded, no retry, no fallback, and the breaker not blamed."""
    _closed(world, "flaky")
    world.faulty.seen.clear()
    world.faulty.queue[:] = ["stall"]
    with world.sup.client(timeout=60) as c:
        r = c.post(CHAT, json={**ASK, "model": "flaky"}, headers={"X-Smackctl-Deadline": "0.5"})
    world.faulty.queue.clear()
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded", r.text
    assert "passed while flaky (a server elsewhere) answered" in r.json()["error"]["message"]
    assert len(world.faulty.seen) == 1  # no retry on it, and no fallback (its r2 not asked)
    assert _backend(world.sup, "flaky")["breaker"]["state"] == "closed"  # not its fault


def test_a_stream_cut_after_its_first_byte_ends_with_an_error_event(world: World) -> None:
    _closed(world, "flaky")
    world.faulty.seen.clear()
    world.faulty.queue[:] = ["cut"]
    with world.sup.client(timeout=30) as c:
        with c.stream("POST", CHAT, json={**ASK, "model": "flaky", "stream": True}) as r:
            assert r.status_code == 200 and r.headers["X-Smackctl-Deployment"] == "flaky"
            events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert '"Hel"' in events[0]
    error = json.loads(events[-1].removeprefix("data: "))["error"]
    assert error["code"] == "stream_cut" and "the answer is incomplete" in error["message"]
    assert len(world.faulty.seen) == 1  # never silently switched to the fallback


def test_a_local_model_falls_back_when_it_cannot_load(world: World) -> None:
    r = _post(world.sup, "local")
    assert r.status_code == 200 and r.headers["X-Smackctl-Deployment"] == "local"
    with world.sup.client(timeout=60) as c:  # a plain local model says who answered too
        r = c.post(CHAT, json={**ASK, "model": "plain"})
        assert r.headers["X-Smackctl-Deployment"] == "plain"
        with c.stream("POST", CHAT, json={**ASK, "model": "plain", "stream": True}) as s:
            assert s.headers["X-Smackctl-Deployment"] == "plain"
            s.read()
    # `backends` counts a local model's requests as `status` does, however they came
    plain = _backend(world.sup, "plain")
    assert plain["served"] == world.sup.model("plain")["requests_served"] >= 2
    r = _post(world.sup, "broken")  # a corrupt file: the load fails (500), r2 answers
    assert r.status_code == 200, r.text
    assert r.headers["X-Smackctl-Deployment"] == "r2"
    assert r.headers["X-Smackctl-Fallback-From"] == "broken"


def test_a_request_cannot_choose_an_upstream_and_the_key_is_never_shown(world: World) -> None:
    r = _post(world.sup, "flaky", api_base="http://evil.example/v1")
    assert r.status_code == 400 and "api_base" in r.json()["error"]["message"]
    world.faulty.queue[:] = ["500", "500", "500"]
    _post(world.sup, "flaky")
    with world.sup.client() as c:
        shown = c.get("/api/backends").text + c.get("/api/status").text + c.get("/metrics").text
    assert KEY not in shown and KEY not in world.sup.log()
    cli = smackctl(world.sup.home, "backends")
    assert cli.returncode == 0 and "r1" in cli.stdout and "group pair (round-robin)" in cli.stdout


def test_a_remote_stream_without_a_usage_event_is_counted_by_its_events(world: World) -> None:
    """A stream from a server elsewhere that sends no usage event (the client did not ask,
    and the deployment has no price to ask it for): its tokens out are counted from its
    events, as a local runner's are, so that tokens per day and budgets see it."""
    with world.sup.client(timeout=60) as c:
        with c.stream("POST", CHAT, json={**ASK, "model": "r2", "stream": True}) as r:
            assert r.status_code == 200
            events = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
            rid = r.headers["x-request-id"]
    assert not any('"usage"' in e and '"choices": []' in e for e in events)  # not asked
    mark = f"request id={rid} "
    line = wait_for(
        lambda: next((ln for ln in world.sup.log().splitlines() if mark in ln), None),
        10, "the stream's line",
    )  # fmt: skip
    assert "tokens_out=None" not in line and "tokens_out=0 " not in line, line


def test_a_priced_remote_stream_is_counted_and_costed_without_showing_its_usage(
    world: World,
) -> None:
    """A stream from a priced server elsewhere: the supervisor asks it for its usage event
    (its cost is counted from it) and leaves that event out for a client that did not ask."""
    with (
        world.sup.client(timeout=60) as c,
        c.stream("POST", CHAT, json={**ASK, "model": "priced", "stream": True}) as r,
    ):
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: {")]
    assert lines and not any('"choices":[]' in ln.replace(" ", "") for ln in lines)
    with world.sup.client() as c:
        rows = c.get("/api/usage", params={"by": "deployment"}).json()
    priced = [r for r in rows if r["deployment"] == "priced"]
    assert priced and priced[0]["tokens_out"] > 0 and priced[0]["cost"] > 0


def test_when_every_deployment_fails_the_error_says_each_reason(world: World) -> None:
    os.killpg(world.replicas[1].pid, signal.SIGKILL)
    world.replicas[1].wait(5)
    world.faulty.queue[:] = ["500", "500", "500"]
    r = _post(world.sup, "flaky")
    assert r.status_code == 503
    msg = r.json()["error"]["message"]
    assert "no deployment of flaky could answer" in msg and "flaky: answered 500" in msg
    assert "r2:" in msg and "smackctl backends" in msg


# -- a hostile or broken server elsewhere ------------------------------------------------------


@dataclass
class Hostile:
    sup: Supervisor
    faulty: Faulty


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    """A supervisor whose deployments all lead to the faulty server: one each, so that one's
    breaker never decides another's test; no retries, no fallbacks, a 2 s deadline and an
    8 MiB cap on a whole answer."""
    faulty = _faulty()
    root = tmp_path_factory.mktemp("hostile")
    one = (
        f"    url: http://127.0.0.1:{faulty.port}/v1\n    backend: openai\n"
        "    upstream_model: tiny\n    retries: 0\n    timeout: 5\n    deadline: 2\n"
        "    max_answer_size: 8MiB\n    breaker_open_for: 1\n    health_interval: 0.2\n"
    )
    names = ("bomb", "drip", "gz", "counts")
    sup = launch_on(
        root,
        "hostile",
        "name: hostile\nmemory:\n  spare_runner: false\nmodels:\n"
        + "".join(f"  {name}:\n{one}" for name in names),
    )
    yield Hostile(sup, faulty)
    shutdown(sup)
    assert faulty.server is not None
    faulty.server.shutdown()
    faulty.server.server_close()


def _peak_rss_reset(pid: int) -> None:
    """The kernel's peak RSS of ``pid`` (VmHWM) set back to its RSS now."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def test_a_gzip_bomb_is_refused_at_the_cap_with_memory_bounded(hostile: Hostile) -> None:
    hostile.faulty.queue[:] = ["bomb"]
    _peak_rss_reset(hostile.sup.pid)
    before = _kib(hostile.sup.pid, "VmRSS")
    r = _post(hostile.sup, "bomb")
    assert r.status_code == 502, r.text
    msg = r.json()["error"]["message"]
    assert "bomb: its answer is larger than 8 MiB once decoded" in msg
    assert "raise `max_answer_size` for bomb in the profile" in r.text
    # 512 MiB inflated whole would raise the peak by as much, twice over; read up to the
    # cap, 64 KiB at a time, it rises by about the cap
    grew_mib = (_kib(hostile.sup.pid, "VmHWM") - before) / 1024
    assert grew_mib < 64, f"the supervisor's peak RSS grew {grew_mib:.0f} MiB"
    assert httpx.get(hostile.sup.url + "/health").status_code == 200


def test_a_server_that_drips_is_cut_at_the_deadline(hostile: Hostile) -> None:
    hostile.faulty.queue[:] = ["drip"]  # a byte every 0.2 s: under the per-read timeout
    r = _post(hostile.sup, "drip")
    assert r.status_code == 504, r.text
    msg = r.json()["error"]["message"]
    assert "drip: took longer than its deadline of 2s" in msg
    assert "raise `deadline` for drip in the profile" in msg
    _closed_on(hostile.sup, "drip")
    hostile.faulty.queue[:] = ["dripstream"]  # a stream that began, then only keeps alive
    with hostile.sup.client(timeout=30) as c:
        with c.stream("POST", CHAT, json={**ASK, "model": "drip", "stream": True}) as s:
            assert s.status_code == 200
            events = [line for line in s.iter_lines() if line.startswith("data: ")]
    assert '"Hel"' in events[0]
    error = json.loads(events[-1].removeprefix("data: "))["error"]
    assert error["code"] == "stream_cut" and "longer than its deadline of 2s" in error["message"]


def test_a_gzip_stream_reaches_an_openai_client_decoded(hostile: Hostile) -> None:
    from openai import OpenAI

    hostile.faulty.queue[:] = ["gzipstream"]
    client = OpenAI(base_url=hostile.sup.url + "/v1", api_key=hostile.sup.token, max_retries=0)
    stream = client.chat.completions.create(
        model="gz", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Hello, world"
    asked = hostile.faulty.seen[-1][2]
    assert asked["Accept-Encoding"] == "identity"  # it asked for a plain stream, and got gzip
    hostile.faulty.queue[:] = ["gzipstream"]
    with hostile.sup.client() as c:
        with c.stream("POST", CHAT, json={**ASK, "model": "gz", "stream": True}) as s:
            assert "content-encoding" not in s.headers  # none stale: the bytes are decoded
            raw = b"".join(s.iter_raw())
    assert raw.startswith(b"data: {") and raw.endswith(b"data: [DONE]\n\n")


def test_token_counts_that_are_not_counts_still_log_the_request(hostile: Hostile) -> None:
    def counted() -> list[dict[str, Any]]:
        with hostile.sup.client() as c:
            rows = c.get("/api/usage", params={"since": "0"}).json()
        return [u for u in rows if u["model"] == "counts"]

    hostile.faulty.queue[:] = ["badusage"]  # prompt_tokens -5, completion_tokens "7"
    r = _post(hostile.sup, "counts")
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "fine"
    (row,) = wait_for(counted, 10, "the request's usage row")
    assert row["requests"] == 1 and row["errors"] == 0
    assert row["tokens_in"] == 0 and row["tokens_out"] == 0  # unknown, not -5 or "7"
    with hostile.sup.client() as c:
        metrics = c.get("/metrics").text.splitlines()
    assert not [m for m in metrics if m.startswith("smackctl_tokens_total") and "counts" in m]


def _closed_on(sup: Supervisor, name: str) -> None:
    wait_for(lambda: _backend(sup, name)["breaker"]["state"] == "closed", 15, f"{name} closed")
