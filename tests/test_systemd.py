"""The supervisor under systemd: readiness and stopping notifications on a real notify
socket, journal lines on stderr while the log files stay whole, and SIGTERM's drain, all
against a real foreground supervisor (``python -m smackctl.daemon --foreground``)."""

from __future__ import annotations

import concurrent.futures
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from smackctl.daemon.systemd import JournalFormatter, notify_address, signal_action

from conftest import CHAT, Home, held_mid_stream, launch, runner_pids, wait_for


def test_notify_address_takes_paths_and_the_abstract_namespace() -> None:
    assert notify_address("/run/user/1000/systemd/notify") == "/run/user/1000/systemd/notify"
    assert notify_address("@smackctl/notify") == "\0smackctl/notify"
    assert notify_address("vsock:2:1234") is None  # a virtual machine's: not ours to use
    assert notify_address("") is None
    assert notify_address(None) is None


def test_the_first_stop_signal_drains_a_second_ctrl_c_stops_at_once() -> None:
    assert signal_action(signal.SIGTERM, 0) == "drain"
    assert signal_action(signal.SIGINT, 0) == "drain"
    assert signal_action(signal.SIGINT, 1) == "now"
    assert signal_action(signal.SIGTERM, 1) == "again"  # systemd sends SIGKILL itself


def test_journal_lines_carry_their_priority_on_every_line() -> None:
    record = logging.LogRecord(
        "smackctl.supervisor", logging.WARNING, __file__, 1, "one\ntwo", None, None
    )
    assert JournalFormatter().format(record) == "<4>smackctl.supervisor: one\n<4>two"


def _datagram(sock: socket.socket, timeout: float, what: str) -> dict[str, str]:
    sock.settimeout(timeout)  # a deadline on the wait, not a sleep
    try:
        data = sock.recv(4096).decode()
    except TimeoutError:
        raise AssertionError(f"no {what} notification within {timeout}s") from None
    return dict(line.split("=", 1) for line in data.splitlines())


def test_ready_is_sent_once_the_api_answers_stopping_at_sigterm(home: Home) -> None:
    """systemd's side as systemd sets it up for ``Type=notify``: a notify socket (here in
    the abstract namespace, ``@…``), ``INVOCATION_ID``, stderr a stream whose device and
    inode ``JOURNAL_STREAM`` names."""
    name = f"smackctl-test-{secrets.token_hex(6)}"
    port = int(home.env["SMACKCTL_PORT"])
    url = f"http://127.0.0.1:{port}"
    journal = home.root / "journal"
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify,
        journal.open("wb") as stderr,
    ):
        notify.bind("\0" + name)
        st = os.fstat(stderr.fileno())
        env = {
            **home.env,
            "NOTIFY_SOCKET": "@" + name,
            "INVOCATION_ID": secrets.token_hex(16),
            "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}",
        }
        argv = [sys.executable, "-m", "smackctl.daemon", "--foreground", "--port", str(port)]
        proc = subprocess.Popen([*argv, "--profile", "test"], env=env, stdout=stderr, stderr=stderr)
        try:
            ready = _datagram(notify, 30, "READY=1")
            # at that moment the API answers and the CLI can find it
            assert httpx.get(url + "/health", timeout=5).status_code == 200
            assert (home.state / "endpoint").read_text().strip() == url
            assert ready == {"READY": "1", "STATUS": f"ready at {url} (profile test)"}
            proc.send_signal(signal.SIGTERM)
            stopping = _datagram(notify, 30, "STOPPING=1")
            assert stopping == {"STOPPING": "1", "STATUS": "draining: 0 running, 0 queued"}
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    pid = proc.pid
    # the journal: each line ranked by its <priority>, no timestamp (the journal adds one)
    lines = journal.read_text().splitlines()
    assert f"<6>smackctl.supervisor: supervisor {pid} ready at {url} (profile test)" in lines
    assert "<6>smackctl.supervisor: SIGTERM: draining (up to 30s), then stopping" in lines
    assert f"<6>smackctl.supervisor: supervisor {pid} stopped" in lines
    # ... and the log file `smackctl logs` reads has every line too, with its time
    log = (home.state / "logs" / "supervisor.log").read_text()
    assert f"INFO smackctl.supervisor: supervisor {pid} ready at {url}" in log
    assert "drain: 0 request(s) running and 0 queued at the stop; all answered" in log
    assert not (home.state / "supervisor.pid").exists()


def _took_the_signal(url: str) -> bool:
    """The supervisor refuses new work (draining), or stopped listening altogether."""
    try:
        return httpx.get(url + "/health", timeout=5).json()["accepting"] is False
    except httpx.ConnectError:
        return True


def test_sigterm_in_the_foreground_drains_logs_and_removes_the_pid_file(home: Home) -> None:
    """What `systemctl stop` does: SIGTERM to the main process with a request running and
    one queued behind it (tiny-a has one slot). Both are answered, the log says so, the
    pid file goes, and the exit status is 0 (systemd's Restart=on-failure leaves it be)."""
    sup = launch(home, "--foreground")
    with sup.client() as c:
        assert c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-a"}).status_code == 200
    body = {**CHAT, "model": "tiny-a", "max_tokens": 1000}
    with (
        concurrent.futures.ThreadPoolExecutor(1) as pool,
        held_mid_stream(sup, body) as lines,
    ):

        def ask() -> int:
            with sup.client() as c:
                return c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-a"}).status_code

        queued = pool.submit(ask)
        wait_for(lambda: sup.model("tiny-a")["queued"] == 1, 10, "the second request to queue")
        os.kill(sup.pid, signal.SIGTERM)
        wait_for(lambda: _took_the_signal(sup.url), 10, "the supervisor to take SIGTERM")
    assert lines[-1] == "data: [DONE]"
    assert queued.result(30) == 200
    assert sup.proc.wait(60) == 0
    log = sup.log()
    assert "drain: 1 request(s) running and 1 queued at the stop; all answered" in log
    assert f"supervisor {sup.pid} stopped" in log
    assert not (home.state / "supervisor.pid").exists()
    assert not runner_pids(home.root)


def test_a_supervisor_without_a_notify_socket_sends_nothing(tmp_path: Path) -> None:
    from smackctl.daemon.systemd import Notifier

    environ = {"PATH": "/usr/bin"}
    assert Notifier.from_environ(environ).send("READY=1") is False
    # and one with a socket takes it out of the environment its runners inherit
    environ["NOTIFY_SOCKET"] = "@nobody-listens"
    notifier = Notifier.from_environ(environ)
    assert "NOTIFY_SOCKET" not in environ
    assert notifier.send("READY=1") is False  # no listener: a warning, never an exception
