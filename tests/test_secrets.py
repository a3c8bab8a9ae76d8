"""Secrets stay secret: no key on a command line, runners with a small environment, keys
compared in constant time, no path taken from a caller, no secret sent to a port another
process took (real supervisors, runners and listeners)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from smackctl.config import ModelSpec
from smackctl.daemon.backends.base import llama_cpp_server_argv
from smackctl.daemon.process import signal_group
from smackctl.daemon.runner import Runner

from conftest import Home, Supervisor, launch, profile_yaml, shutdown, smackctl, wait_for

REMOTE_SECRET = "sk-remote-secret-0123456789"


def _runners(sup: Supervisor) -> list[tuple[psutil.Process, dict[str, str]]]:
    """The supervisor's runner processes (and the spare, if any), with their environments."""
    found = []
    for p in psutil.Process(sup.pid).children():
        try:
            cmd = p.cmdline()
            if (
                "smackctl.daemon.backends.llama_cpp_python.runner" in cmd
                or "llama-server" in cmd[0]
            ):
                found.append((p, p.environ()))
        except psutil.Error:
            continue  # one that ended meanwhile
    return found


@pytest.fixture
def mixed(home: Home, model_dir: Path) -> Iterator[Supervisor]:
    """tiny-a started cold (no spare), tiny-b in the spare process, tiny-c on llama-server;
    the supervisor's environment holds a remote deployment's key."""
    text = profile_yaml(model_dir, **{"tiny-c": "backend: llama-server"})
    (Path(home.env["SMACKCTL_PROFILE_DIR"]) / "test.yaml").write_text(text)
    home.env["REMOTE_KEY"] = REMOTE_SECRET
    sup = launch(home)
    yield sup
    shutdown(sup)


def test_no_runner_key_on_any_command_line_and_runners_get_a_small_environment(
    mixed: Supervisor,
) -> None:
    sup = mixed
    with sup.client() as c:
        for model in ("tiny-a", "tiny-b", "tiny-c"):
            r = c.post(
                "/v1/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": "hi"}],
                      "max_tokens": 2},
            )  # fmt: skip
            assert r.status_code == 200, r.text
    runners = _runners(sup)
    assert len(runners) >= 3
    keys = set()
    for _, env in runners:
        assert REMOTE_SECRET not in json.dumps(env)  # a remote server's key stays ours
        assert sup.token not in json.dumps(env)
        assert "REMOTE_KEY" not in env and "SMACKCTL_PORT" not in env
        key = env.get("SMACKCTL_RUNNER_KEY") or env.get("LLAMA_API_KEY")
        if key:
            keys.add(key)
    assert keys  # the cold-started runners read theirs from the environment
    every_cmdline = []
    for p in psutil.process_iter(["cmdline"]):
        with_args = " ".join(p.info["cmdline"] or [])
        every_cmdline.append(with_args)
    for key in keys | {sup.token}:
        assert not any(key in line for line in every_cmdline)
    assert not any("--api_key" in line for line in every_cmdline if "smackctl" in line)


def test_a_runner_takes_no_path_from_a_caller_and_checks_keys(
    model_dir: Path, tmp_path: Path
) -> None:
    spec = ModelSpec(path=str(model_dir / "tiny-a.gguf"), n_ctx=256, threads=1)
    target = tmp_path / "victim" / "authorized_keys"
    target.parent.mkdir()

    async def scenario() -> None:
        r = Runner(
            "tiny-a",
            lambda port: llama_cpp_server_argv(spec, Path(spec.path or ""), port),
            tmp_path / "logs" / "runner-tiny-a.log",
        )
        await r.start()
        try:
            async with httpx.AsyncClient(base_url=r.base_url, timeout=30) as c:
                auth = {"Authorization": f"Bearer {r.api_key}"}
                args = ["--model=" + str(spec.path), "--n_ctx=256", "--n_threads=1"]
                for log in (str(target), "../victim/authorized_keys", "runner-x.log/../../y"):
                    order = {"args": args, "log": log}
                    answer = await c.post("/smackctl/load", json=order, headers=auth)
                    assert answer.status_code == 400, answer.text
                    assert "not a runner log's name" in answer.json()["message"]
                assert not target.exists()
                wrong = {"Authorization": "Bearer " + r.api_key[:-1] + "x"}
                for path in ("/smackctl/load", "/smackctl/count", "/v1/chat/completions"):
                    answer = await c.post(path, json={}, headers=wrong)
                    assert answer.status_code == 401, (path, answer.text)
                ok = await c.post(
                    "/v1/chat/completions",
                    json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
                    headers=auth,
                )
                assert ok.status_code == 200
        finally:
            await r.stop(grace=2)

    asyncio.run(scenario())


class _Listener:
    """A TCP listener on a port, keeping every byte sent to it (an impostor)."""

    def __init__(self, port: int, answer: bytes = b"") -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.got = b""
        self.answer = answer
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    data = conn.recv(65536)
                except OSError:
                    data = b""
                self.got += data
                if self.answer:
                    body = self.answer
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                        + body
                    )

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept
        self.thread.join(10)
        self.sock.close()


def test_a_port_taken_before_the_runner_binds_it_fails_the_load_and_gets_no_key(
    home: Home, model_dir: Path
) -> None:
    text = profile_yaml(model_dir, "memory:\n  spare_runner: false\n")
    (Path(home.env["SMACKCTL_PROFILE_DIR"]) / "test.yaml").write_text(text)
    sup = launch(home)
    try:
        result: dict[str, httpx.Response] = {}

        def ask() -> None:
            with sup.client(timeout=120) as c:
                result["r"] = c.post(
                    "/v1/chat/completions",
                    json={"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}]},
                )

        t = threading.Thread(target=ask)
        t.start()

        def runner_port() -> int | None:
            for p in psutil.Process(sup.pid).children():
                for arg in p.cmdline():
                    if arg.startswith("--port="):
                        return int(arg[7:])
            return None

        # llama_cpp.server binds its port only once its imports and its model are loaded:
        # a local process can take the port in between
        port = wait_for(runner_port, 30, "the runner process")
        impostor = _Listener(port)
        t.join(120)
        impostor.close()
        r = result["r"]
        assert r.status_code >= 500
        message = r.json()["error"]["message"]
        assert f"another process took 127.0.0.1:{port}" in message
        assert "key was not sent" in message
        assert b"Authorization" not in impostor.got and b"Bearer" not in impostor.got
    finally:
        shutdown(sup)


def test_the_cli_sends_its_token_only_to_the_supervisor(home: Home) -> None:
    token_file = home.state / "token"
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token_file.write_text("smk-the-real-token\n")
    token_file.chmod(0o600)
    port = int(home.env["SMACKCTL_PORT"])
    impostor = _Listener(port, answer=json.dumps({"status": "ok", "pid": 1}).encode())
    try:
        r = smackctl(home, "models", "ps")
    finally:
        impostor.close()
    assert r.returncode == 3, r.stderr
    assert f"another program listens at http://127.0.0.1:{port}" in r.stderr
    assert "not the supervisor" in r.stderr
    assert "the token and the request were not sent" in r.stderr
    assert b"smk-the-real-token" not in impostor.got
    # the user's own choice of URL is theirs to trust
    explicit = {**home.env, "SMACKCTL_URL": f"http://127.0.0.1:{port}"}
    impostor = _Listener(port, answer=b'{"models": [], "memory": {}}')
    try:
        subprocess.run(
            [sys.executable, "-m", "smackctl", "models", "ps"],
            env=explicit,
            capture_output=True,
            timeout=60,
        )
    finally:
        impostor.close()
    assert b"smk-the-real-token" in impostor.got


def test_the_cli_reaches_its_own_supervisor(supervisor: Supervisor) -> None:
    r = smackctl(supervisor.home, "models", "ps", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["models"] == []


def test_without_a_token_a_page_of_another_origin_is_refused(home: Home) -> None:
    sup = launch(home, "--no-auth")
    try:
        with httpx.Client(base_url=sup.url, timeout=30) as c:
            simple = c.post("/api/shutdown", content=b"{}", headers={"Content-Type": "text/plain"})
            assert simple.status_code == 415
            assert "application/json" in simple.json()["error"]["message"]
            for headers in (
                {"Origin": "http://evil.example"},
                {"Origin": "http://localhost:1"},  # another local web app
                {"Sec-Fetch-Site": "cross-site"},
            ):
                r = c.post("/api/shutdown", json={}, headers=headers)
                assert r.status_code == 403, headers
                assert "another origin" in r.json()["error"]["message"]
            assert c.get("/health").json()["status"] == "ok"  # still running
            own = c.get("/api/status", headers={"Origin": sup.url}).status_code
            assert own == 200
    finally:
        shutdown(sup)


def test_a_group_is_signalled_only_while_its_id_is_still_its_own(tmp_path: Path) -> None:
    # a leader with a child in its group; the leader exits (and is reaped), the child lives on
    leader = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', "
         "'import time; time.sleep(600)']); print(p.pid, flush=True)"],
        stdout=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    assert leader.stdout is not None
    with leader.stdout:
        orphan = int(leader.stdout.readline())
    leader.wait()
    assert psutil.pid_exists(orphan)
    signal_group(leader.pid, signal.SIGKILL, leader_gone=True)  # the group is still ours
    wait_for(lambda: not _alive(orphan), 10, "the orphan of a reaped leader to be killed")
    # a process that has the pid a reaped leader had: its group is someone else's
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                             start_new_session=True)  # fmt: skip
    try:
        signal_group(other.pid, signal.SIGKILL, leader_gone=True)
        assert other.poll() is None  # left alone
        signal_group(other.pid, signal.SIGKILL)  # a live leader of ours: signalled
        assert other.wait(10) == -signal.SIGKILL
    finally:
        if other.poll() is None:
            other.kill()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_no_environment_variable_of_the_user_reaches_a_runner_unless_needed() -> None:
    from smackctl.daemon.process import runner_env

    os.environ["AWS_SECRET_ACCESS_KEY"] = "x"
    os.environ["OMP_NUM_THREADS"] = "2"
    try:
        env = runner_env({"SMACKCTL_RUNNER_KEY": "k"})
    finally:
        del os.environ["AWS_SECRET_ACCESS_KEY"], os.environ["OMP_NUM_THREADS"]
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert env["OMP_NUM_THREADS"] == "2" and env["SMACKCTL_RUNNER_KEY"] == "k"
    assert env["PATH"] == os.environ["PATH"]


def test_what_the_supervisor_and_the_cli_write_is_the_users_alone(supervisor: Supervisor) -> None:
    """Started with umask 022 (as the tests are), every file under the home that the
    supervisor, its runners or the CLI wrote (state.db, logs, chats.db, kv/…) can be read by
    the user alone: prompts and answers are in some of them."""
    old = os.umask(0o022)
    try:
        done = smackctl(supervisor.home, "chat", "-m", "tiny-a", "--max-tokens", "2", "hi")
        assert done.returncode == 0, done.stderr
    finally:
        os.umask(old)
    loose = [
        f"{p.relative_to(supervisor.home.root)} {stat.S_IMODE(p.lstat().st_mode):o}"
        for p in supervisor.home.root.rglob("*")
        if (p.is_file() or p.is_dir()) and not p.is_symlink()
        and stat.S_IMODE(p.lstat().st_mode) & 0o077
        # the test's own files: its profiles, the supervisor's output as the test keeps it
        and "profiles" not in p.parts and p.name != "supervisor-test.out"
    ]  # fmt: skip
    assert (supervisor.home.state / "chats.db").exists()
    assert loose == []
