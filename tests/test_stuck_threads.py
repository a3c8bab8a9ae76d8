"""A runner whose HTTP side answers while one compute thread is stuck: the hang is found by
progress, not by a probe. One thread of a real runner is stopped with ptrace mid-stream (a
deadlocked decode or a hung GPU kernel looks like this from outside), on both backends."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Home, Supervisor, launch, profile_yaml, shutdown, wait_for

PTRACE_SEIZE, PTRACE_INTERRUPT = 0x4206, 0x4207
WALL = 0x40000000  # waitpid's __WALL: a thread that is not its group's leader

HANG = 3  # seconds: the models' hang_timeout here
LONG = {
    "messages": [{"role": "user", "content": "hello"}],
    "max_tokens": 3500,
    "temperature": 0,
    "stream": True,
    "logit_bias": {"2": -100.0},  # SmolLM2's end of text: the answer runs its whole length
}


def _cpu_of_threads(pid: int) -> dict[int, int]:
    """utime + stime of each thread of ``pid`` (clock ticks)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            out[int(tid)] = int(fields[11]) + int(fields[12])
    return out


def _compute_thread(pid: int, stream: Iterator[str]) -> int:
    """A compute thread of a runner that is decoding: the thread that worked most while
    the next 200 lines of ``stream`` were decoded, not counting the process's main thread
    (the main thread answers HTTP on llama-cpp-python and leads the decode on
    llama-server; the one stopped here is another of the decode's threads). Over a window
    of the decode, not the process's life: a pool thread that decoded an earlier request
    may be idle now."""
    before = _cpu_of_threads(pid)
    for _ in range(200):
        next(stream)
    after = _cpu_of_threads(pid)
    worked = {tid: t - before.get(tid, 0) for tid, t in after.items() if tid != pid}
    return max(worked, key=lambda tid: worked[tid])


@contextlib.contextmanager
def stopped(tid: int) -> Iterator[None]:
    """Stop one thread (and only it) with ptrace, from a tracer thread that then waits for
    the thread's end: a traced thread that exits is reaped by its tracer, and its process
    could not be reaped by the supervisor before."""
    seized = threading.Event()
    problem: list[str] = []

    def tracer() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
        for request in (PTRACE_SEIZE, PTRACE_INTERRUPT):
            if libc.ptrace(request, tid, None, None) != 0:
                problem.append(os.strerror(ctypes.get_errno()))
                seized.set()
                return
        seized.set()
        while True:
            try:
                _, status = os.waitpid(tid, WALL)
            except ChildProcessError:
                return
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                return

    threading.Thread(target=tracer, daemon=True).start()
    seized.wait(10)
    assert not problem, f"ptrace failed: {problem}"
    yield


@pytest.fixture(params=["llama-cpp-python", "llama-server"])
def quick(
    request: pytest.FixtureRequest, home: Home, model_dir: Path, smollm2_file: Path
) -> Iterator[Supervisor]:
    """The model named tiny-a here is SmolLM2 on two threads: the tiny random model decodes
    thousands of tokens a second, so its whole answer could be made (and sit in the sockets)
    before the thread is stopped; SmolLM2's ~60 tokens/s leave minutes of it to make."""
    text = profile_yaml(model_dir, **{"tiny-a": f"backend: {request.param}\nhang_timeout: {HANG}"})
    text = text.replace("    threads: 1\n", "    threads: 2\n", 1)  # tiny-a's: two threads
    text = text.replace(str(model_dir / "tiny-a.gguf"), str(smollm2_file), 1)
    (Path(home.env["SMACKCTL_PROFILE_DIR"]) / "test.yaml").write_text(text)
    sup = launch(home)
    yield sup
    shutdown(sup)


def test_a_stuck_compute_thread_ends_the_stream_and_the_runner_restarts(
    quick: Supervisor,
) -> None:
    sup = quick
    with sup.client(timeout=120) as c:
        warm = {**LONG, "model": "tiny-a", "max_tokens": 2, "stream": False}
        assert c.post("/v1/chat/completions", json=warm).status_code == 200
        pid = sup.model("tiny-a")["pid"]
        lines: list[str] = []
        with c.stream("POST", "/v1/chat/completions", json={**LONG, "model": "tiny-a"}) as s:
            it = s.iter_lines()
            for line in it:
                if '"content"' in line:
                    break
            with stopped(_compute_thread(pid, it)):
                began = time.monotonic()
                lines = [ln for ln in it if ln.startswith("data: ")]
                took = time.monotonic() - began
        # the process's HTTP side answered all along: only progress tells
        assert lines and lines[-1] != "data: [DONE]", lines[-3:]
        err = json.loads(lines[-1][6:])["error"]
        assert f"hung (no progress for {HANG}s while answering a request)" in err["message"]
        assert took < HANG + 15, took  # the bound: hang_timeout + 15 s
        wait_for(lambda: sup.model("tiny-a")["state"] == "ready", 60, "the restart")
        m = sup.model("tiny-a")
        assert m["pid"] != pid and m["crashes"] == 1
        again = c.post("/v1/chat/completions", json=warm)
        assert again.status_code == 200, again.text
    assert f"tiny-a made no progress for {HANG}s while answering a request" in sup.log()
