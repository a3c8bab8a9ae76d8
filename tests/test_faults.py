"""Faults with real processes: killed runners, a killed supervisor, stop under load, bad files."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import threading

import httpx
import psutil

from conftest import (
    Home,
    Supervisor,
    held_mid_stream,
    launch,
    runner_pids,
    shutdown,
    smackctl,
    wait_for,
)

CHAT = {
    "model": "tiny-a",
    "messages": [{"role": "user", "content": "hello"}],
    "max_tokens": 8,
    "temperature": 0,
}
LONG = {**CHAT, "max_tokens": 3000, "stream": True}


def test_runner_killed_mid_stream_gets_error_event_then_restarts(supervisor: Supervisor) -> None:
    with supervisor.client() as c:
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
        first_pid = supervisor.model("tiny-a")["pid"]
        lines = []
        with c.stream("POST", "/v1/chat/completions", json=LONG) as r:
            assert r.status_code == 200
            it = r.iter_lines()
            for line in it:
                if line.startswith("data:"):
                    lines.append(line)
                    break
            os.kill(first_pid, signal.SIGKILL)
            lines += [line for line in it if line.startswith("data:")]
        assert lines[-1] != "data: [DONE]"  # never a fake end
        last = json.loads(lines[-1][5:])
        assert last["error"]["type"] == "runner_crashed"
        assert "incomplete" in last["error"]["message"]
        # the next request waits for the restart and succeeds on a new process
        r2 = c.post("/v1/chat/completions", json=CHAT)
        assert r2.status_code == 200, r2.text
    m = supervisor.model("tiny-a")
    assert m["state"] == "ready" and m["pid"] != first_pid
    assert "restart #1" in supervisor.log()


def test_request_whose_runner_died_before_answering_is_retried(supervisor: Supervisor) -> None:
    with supervisor.client() as c:
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
        pid = supervisor.model("tiny-a")["pid"]
        os.kill(pid, signal.SIGSTOP)  # hold it so the kill lands while our request is pending
        result: dict[str, httpx.Response] = {}
        t = threading.Thread(
            target=lambda: result.setdefault("r", c.post("/v1/chat/completions", json=CHAT))
        )
        t.start()
        wait_for(lambda: supervisor.model("tiny-a")["in_flight"] == 1, 10, "request in flight")
        os.kill(pid, signal.SIGKILL)
        t.join(60)
    assert result["r"].status_code == 200, result["r"].text
    assert "retrying once" in supervisor.log()


def test_killing_the_supervisor_leaves_no_runner(home: Home) -> None:
    sup = launch(home)
    with sup.client() as c:
        for model in ("tiny-a", "tiny-b"):
            assert c.post("/v1/chat/completions", json={**CHAT, "model": model}).status_code == 200
    assert len(runner_pids(home.root)) == 2
    os.kill(sup.pid, signal.SIGKILL)
    sup.proc.wait(10)
    wait_for(lambda: not runner_pids(home.root), 15, "runners to die with the supervisor")
    # the pid file is stale now; a new supervisor starts cleanly over it
    assert (home.state / "supervisor.pid").exists()
    sup2 = launch(home)
    shutdown(sup2)


def _stop(home: Home, timeout: str) -> subprocess.Popen[str]:
    """`smackctl stop --timeout T`, started and left running: the test holds the runner while
    the stop takes its count, so what is in flight then does not depend on the CPU's speed."""
    argv = [sys.executable, "-m", "smackctl", "stop", "--timeout", timeout]
    return subprocess.Popen(argv, env=home.env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _draining(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=5).json()["accepting"] is False
    except httpx.ConnectError:
        return True


def test_stop_while_two_requests_in_flight_lets_both_finish(supervisor: Supervisor) -> None:
    """One stream mid-answer (its runner held still) and one queued behind it (tiny-a has one
    slot) when the stop comes: both are answered whole, and stop says so."""
    with supervisor.client() as c:
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 200

    def stream() -> list[str]:
        with (
            supervisor.client() as c,
            c.stream("POST", "/v1/chat/completions", json={**LONG, "max_tokens": 1500}) as r,
        ):
            return [line for line in r.iter_lines() if line.startswith("data:")]

    with (
        concurrent.futures.ThreadPoolExecutor(1) as pool,
        held_mid_stream(supervisor, {**LONG, "max_tokens": 1500}) as held,
    ):
        queued = pool.submit(stream)
        wait_for(lambda: supervisor.model("tiny-a")["queued"] == 1, 10, "the second to queue")
        stopper = _stop(supervisor.home, "60")
        wait_for(lambda: _draining(supervisor.url), 30, "the stop to begin its drain")
    out, err = stopper.communicate(timeout=120)
    assert stopper.returncode == 0, err
    assert "smackctl stopped" in err
    for lines in ([ln for ln in held if ln.startswith("data:")], queued.result(30)):
        assert lines[-1] == "data: [DONE]"
        assert json.loads(lines[-2][5:])["choices"][0]["finish_reason"] in ("length", "stop")
    assert supervisor.proc.wait(10) == 0
    assert not runner_pids(supervisor.home.root)
    assert "drain: 1 request(s) running and 1 queued at the stop; all answered" in err


def test_a_drain_that_runs_out_of_time_ends_every_answer_cleanly(supervisor: Supervisor) -> None:
    """`stop --timeout 1` with a stream in flight (its runner held still) and one queued
    behind it (tiny-a has one slot): the stream gets an error event and the clean end of its
    body, the queued one a 503 with Retry-After; no connection is torn, and stop says what it
    cut."""
    with supervisor.client() as c:
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
    long = {**LONG, "max_tokens": 3500}
    got: dict[str, str] = {}

    def queued() -> tuple[int, list[str], dict[str, str]]:
        with (
            supervisor.client() as c,
            c.stream("POST", "/v1/chat/completions", json=long) as r,
        ):  # a torn body would raise here (httpx.RemoteProtocolError)
            return r.status_code, list(r.iter_lines()), dict(r.headers)

    with (
        concurrent.futures.ThreadPoolExecutor(1) as pool,
        held_mid_stream(supervisor, long) as held,  # a torn body would raise here too
    ):
        second = pool.submit(queued)
        wait_for(lambda: supervisor.model("tiny-a")["queued"] == 1, 10, "the second to queue")
        stopper = _stop(supervisor.home, "1")
        wait_for(lambda: "answer(s) were cut" in supervisor.log(), 30, "the drain to run out")
    got["out"], got["err"] = stopper.communicate(timeout=60)
    assert stopper.returncode == 0, got["err"]
    assert (
        "drain: 1 request(s) running and 1 queued at the stop; after 1s 1 answer(s) were cut"
        in got["err"]
    )
    assert "and 1 queued request(s) refused" in got["err"]
    events = [ln for ln in held if ln.startswith("data: ")]
    assert events[-1] != "data: [DONE]"
    err = json.loads(events[-1][6:])["error"]
    assert err["code"] == "drain_timeout" and "was cut before it was complete" in err["message"]
    status, lines, headers = second.result(30)
    assert status == 503 and headers["retry-after"] == "1"
    assert "its drain ran out of time before this request's turn came" in "".join(lines)
    assert supervisor.proc.wait(20) == 0
    assert not runner_pids(supervisor.home.root)


def test_corrupt_gguf_fails_clearly_and_others_keep_serving(supervisor: Supervisor) -> None:
    with supervisor.client() as c:
        # garbage after the magic: caught by the pre-flight read, no runner is spent on it
        r = c.post("/v1/chat/completions", json={**CHAT, "model": "broken"})
        assert r.status_code == 500
        err = r.json()["error"]
        assert err["type"] == "model_load_error"
        assert "corrupt.gguf is not a readable GGUF file" in err["message"]
        assert "pull it again" in err["message"]
        # well-formed but unloadable: the runner starts, fails, and its log says why
        r = c.post("/v1/chat/completions", json={**CHAT, "model": "alien"})
        assert r.status_code == 500
        msg = r.json()["error"]["message"]
        assert "the runner for alien exited with code" in msg and "while loading" in msg
        assert "nonesuch" in msg  # the runner's own log line naming the architecture
        assert "smackctl logs alien" in msg
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
    assert supervisor.model("alien")["state"] == "failed"
    assert supervisor.model("alien")["pid"] is None
    assert supervisor.proc.poll() is None


def test_not_a_gguf_is_refused_before_a_runner_starts(supervisor: Supervisor, tmp_path) -> None:  # type: ignore[no-untyped-def]
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"<html>not a model</html>")
    with supervisor.client() as c:
        r = c.post("/api/models", json={"path": str(junk), "name": "junk"})
        assert r.status_code == 400  # the path the user gave
        assert "is not a GGUF file" in r.json()["error"]["message"]


def test_port_in_use_names_the_port_and_the_flag(home: Home) -> None:
    port = int(home.env["SMACKCTL_PORT"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        r = smackctl(home, "start", timeout=60)
    assert r.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in r.stderr
    assert f"--port {port + 1}" in r.stderr


def test_a_failed_start_shows_its_own_error_and_leaves_no_pid_file(home: Home) -> None:
    """Two starts that fail in turn (a host that does not resolve, then a profile that does
    not exist): the second quotes its own error only (supervisor.out keeps every run's), and
    neither leaves a pid file that the next start would call stale."""
    first = smackctl(home, "start", "--host", "nosuchhost.invalid", timeout=60)
    assert first.returncode != 0 and "cannot listen on nosuchhost.invalid" in first.stderr
    assert not (home.state / "supervisor.pid").exists()
    second = smackctl(home, "start", "--profile", "nosuchprofile", timeout=60)
    assert second.returncode != 0
    assert "no profile named 'nosuchprofile'" in second.stderr
    assert "nosuchhost" not in second.stderr and "stale" not in second.stderr
    assert not (home.state / "supervisor.pid").exists()


def test_stale_pid_file_is_detected_and_cleaned(home: Home) -> None:
    state = home.state
    state.mkdir(parents=True, exist_ok=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (state / "supervisor.pid").write_text(f"{dead.pid}\n")
    r = smackctl(home, "start", timeout=60)
    try:
        assert r.returncode == 0, r.stderr
        assert f"removed a stale pid file (supervisor pid {dead.pid} is not running)" in r.stderr
        pid = int((state / "supervisor.pid").read_text())
        assert psutil.pid_exists(pid) and pid != dead.pid
    finally:
        smackctl(home, "stop", "--force", timeout=60)


def test_idle_model_is_unloaded_after_its_ttl_but_pinned_stays(home: Home) -> None:
    from pathlib import Path

    from conftest import profile_yaml

    profile = Path(home.env["SMACKCTL_PROFILE_DIR"]) / "test.yaml"
    model_dir = Path(profile.read_text().split("path: ")[1].split("\n")[0]).parent
    profile.write_text(profile_yaml(model_dir, **{"tiny-a": "ttl: 1\npinned: true",
                                                  "tiny-b": "ttl: 1"}))  # fmt: skip
    sup = launch(home)
    try:
        with sup.client() as c:
            for model in ("tiny-a", "tiny-b"):
                assert (
                    c.post("/v1/chat/completions", json={**CHAT, "model": model}).status_code == 200
                )
        wait_for(lambda: sup.model("tiny-b")["state"] == "stopped", 15, "tiny-b to idle out")
        assert "unloading tiny-b: idle for more than 1s" in sup.log()
        assert sup.model("tiny-a")["state"] == "ready"  # pinned: stays
    finally:
        shutdown(sup)


def test_crash_loop_ends_in_failed_shown_in_status(supervisor: Supervisor) -> None:
    with supervisor.client() as c:
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
    pids: set[int] = set()

    def fresh_ready() -> dict[str, object] | None:
        m = supervisor.model("tiny-a")
        return m if m["state"] == "ready" and m["pid"] not in pids else None

    def failed() -> dict[str, object] | None:
        m = supervisor.model("tiny-a")
        return m if m["state"] == "failed" else None

    for _ in range(5):  # kill every runner the moment it is ready: 5 quick failures in a row
        pid = wait_for(fresh_ready, 40, "a (re)started runner")["pid"]
        pids.add(pid)
        os.kill(pid, signal.SIGKILL)
    m = wait_for(failed, 20, "tiny-a to be marked failed")
    assert m["failures"] == 5 and "crashed 5 times in a row" in str(m["last_error"])
    assert m["pid"] is None
    with supervisor.client() as c:  # a new request tries again from scratch
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_stop_force_cuts_at_once_and_says_so(supervisor: Supervisor) -> None:
    """`stop --force` with a stream mid-answer (its runner held still: it would never end
    by itself) and one queued: the stream gets an error event that names --force and the
    clean end of its body, the queued one a 503, and the supervisor exits by itself (status
    0), not by the CLI's SIGKILL after its 5 s."""
    with supervisor.client() as c:
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
    long = {**LONG, "max_tokens": 3500}

    def queued() -> tuple[int, str]:
        with supervisor.client() as c:
            r = c.post("/v1/chat/completions", json={**long, "stream": False})
            return r.status_code, r.text

    with (
        concurrent.futures.ThreadPoolExecutor(1) as pool,
        held_mid_stream(supervisor, long) as held,
    ):
        second = pool.submit(queued)
        wait_for(lambda: supervisor.model("tiny-a")["queued"] == 1, 10, "the second to queue")
        r = smackctl(supervisor.home, "stop", "--force", timeout=60)
        assert r.returncode == 0, r.stderr
        assert supervisor.proc.wait(20) == 0  # its own exit, not a SIGKILL (-9)
    events = [ln for ln in held if ln.startswith("data: ")]
    assert events[-1] != "data: [DONE]"
    err = json.loads(events[-1][6:])["error"]
    assert err["code"] == "stopped_at_once" and "stop --force" in err["message"]
    status, text = second.result(30)
    assert status == 503 and "stop --force" in text
    assert "stop --force: 1 request(s) running and 1 queued: 1 answer(s) cut" in supervisor.log()
    assert not runner_pids(supervisor.home.root)
