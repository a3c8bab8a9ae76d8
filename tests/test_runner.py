"""One runner process: start, key handling, state table, and group kill with real processes."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import psutil
import pytest

from smackctl.config import ModelSpec
from smackctl.daemon.backends.base import llama_cpp_server_argv
from smackctl.daemon.runner import Runner, RunnerState
from smackctl.errors import ModelLoadError


def test_api_key_starting_with_dash_still_starts(model_dir: Path, tmp_path: Path) -> None:
    """A key like '-abc' once read as a flag by argparse and failed 1 load in 64."""
    spec = ModelSpec(path=str(model_dir / "tiny-a.gguf"), n_ctx=256, threads=1)

    async def scenario() -> None:
        r = Runner(
            "tiny-a",
            lambda port: llama_cpp_server_argv(spec, Path(spec.path or ""), port),
            tmp_path / "r.log",
        )
        r.api_key = "-" + r.api_key
        await r.start()
        assert r.state == RunnerState.READY
        await r.stop(grace=2)
        assert r.state == RunnerState.STOPPED and r.exited.is_set()

    asyncio.run(scenario())


def test_stop_kills_the_whole_group_even_if_sigterm_is_ignored(tmp_path: Path) -> None:
    # a "runner" that ignores SIGTERM and has a child that does too
    script = (
        "import signal, subprocess, sys, time, http.server\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "subprocess.Popen([sys.executable, '-c', 'import signal,time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'])\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.end_headers()\n"
        "    def log_message(self, *a): pass\n"
        "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
    )

    async def scenario() -> list[int]:
        r = Runner(
            "stub",
            lambda port: [sys.executable, "-c", script, str(port)],
            tmp_path / "stub.log",
        )
        await r.start()
        assert r.pid is not None
        group = [r.pid, *(c.pid for c in psutil.Process(r.pid).children(recursive=True))]
        await r.stop(grace=0.3)
        return group

    group = asyncio.run(scenario())
    assert len(group) == 2

    def gone(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    from conftest import wait_for

    wait_for(lambda: all(gone(p) for p in group), 10, "the whole process group to be killed")


def test_a_runner_that_exits_while_loading_raises_with_its_log(tmp_path: Path) -> None:
    async def scenario() -> None:
        r = Runner(
            "x",
            lambda port: [
                sys.executable,
                "-c",
                "import sys; print('error: no such tensor'); sys.exit(3)",
            ],
            tmp_path / "x.log",
        )
        with pytest.raises(ModelLoadError) as exc:
            await r.start()
        assert "exited with code 3 while loading" in exc.value.message
        assert "error: no such tensor" in exc.value.message

    asyncio.run(scenario())


def test_illegal_transitions_are_refused(tmp_path: Path) -> None:
    r = Runner("x", lambda port: [], tmp_path / "x.log")
    with pytest.raises(RuntimeError, match="illegal transition stopped → ready"):
        r.mark(RunnerState.READY)
