"""A runner that stops answering is noticed while requests wait on it: real runner processes
stopped for real (SIGSTOP, what a deadlock or a hung GPU looks like from outside)."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import (
    Home,
    Supervisor,
    launch,
    profile_yaml,
    shutdown,
    signal_mid_stream,
    wait_for,
)

LONG = {
    "model": "tiny-a",
    "messages": [{"role": "user", "content": "hello"}],
    "max_tokens": 3500,
    "temperature": 0,
}


@pytest.fixture
def quick_to_hang(home: Home, model_dir: Path) -> Iterator[Supervisor]:
    """tiny-a must make progress within 2 s; tiny-b within half a second."""
    text = profile_yaml(model_dir, **{"tiny-a": "hang_timeout: 2", "tiny-b": "hang_timeout: 0.5"})
    (Path(home.env["SMACKCTL_PROFILE_DIR"]) / "test.yaml").write_text(text)
    sup = launch(home)
    yield sup
    shutdown(sup)


def _generations(sup: Supervisor, model: str) -> int:
    log = sup.home.state / "logs" / f"runner-{model}.log"
    return log.read_text(errors="replace").count("generating after") if log.exists() else 0


def test_a_stopped_runner_is_killed_and_the_waiting_request_retried(
    quick_to_hang: Supervisor,
) -> None:
    sup = quick_to_hang
    with sup.client() as c:
        assert c.post("/v1/chat/completions", json={**LONG, "max_tokens": 2}).status_code == 200
    pid = sup.model("tiny-a")["pid"]
    result: dict[str, httpx.Response] = {}

    def ask() -> None:
        with sup.client(timeout=120) as c:  # far longer than the hang rule takes
            result["r"] = c.post("/v1/chat/completions", json=LONG)

    t = threading.Thread(target=ask)
    t.start()
    wait_for(lambda: _generations(sup, "tiny-a") >= 2, 30, "the long answer to start")
    os.kill(pid, signal.SIGSTOP)
    t.join(120)
    r = result["r"]
    assert r.status_code == 200, r.text  # no byte had gone back: retried on the new runner
    assert r.json()["usage"]["completion_tokens"] > 0
    m = sup.model("tiny-a")
    assert m["pid"] != pid and m["crashes"] == 1
    assert m["last_crash"].startswith("hung (no progress for 2s while answering a request)")
    assert "tiny-a made no progress for 2s while answering a request: killing it" in sup.log()


def test_a_stream_whose_runner_stops_ends_with_an_error_event(quick_to_hang: Supervisor) -> None:
    sup = quick_to_hang
    with sup.client(timeout=120) as c:
        assert c.post("/v1/chat/completions", json={**LONG, "max_tokens": 2}).status_code == 200
        pid = sup.model("tiny-a")["pid"]
        rest = signal_mid_stream(c, LONG, pid, signal.SIGSTOP)
    assert rest[-1] != "data: [DONE]"
    err = json.loads(rest[-1][6:])["error"]
    assert "the runner for tiny-a hung (no progress for 2s" in err["message"]
    assert re.search(r"after \d+ tokens? of the answer", err["message"])  # 1 token, or more
    wait_for(lambda: sup.model("tiny-a")["state"] == "ready", 30, "the restart")
    assert sup.model("tiny-a")["pid"] != pid


def test_a_slow_runner_that_moves_is_left_alone(quick_to_hang: Supervisor) -> None:
    """tiny-b's answer (not streamed: no byte until it is done) takes far longer than its
    half-second rule; its progress counter moves while it computes, so it is not killed."""
    sup = quick_to_hang
    with sup.client(timeout=120) as c:
        assert c.post("/v1/chat/completions", json={**LONG, "model": "tiny-b", "max_tokens": 2})
        pid = sup.model("tiny-b")["pid"]
        r = c.post("/v1/chat/completions", json={**LONG, "model": "tiny-b"})
    assert r.status_code == 200, r.text
    assert "tiny-b: no answer for 0.125s, but it makes progress: waiting" in sup.log()
    m = sup.model("tiny-b")
    assert m["pid"] == pid and m["crashes"] == 0


@pytest.mark.parametrize("backend", ["llama-cpp-python", "llama-server"])
def test_a_long_prompt_that_moves_is_left_alone(
    home: Home, smollm2_file: Path, backend: str
) -> None:
    """SmolLM2 decodes a prompt of ~1,500 tokens, longer than its 3 s rule, and says
    nothing until it is done (not streamed). The prompt's progress moves (each graph node
    on llama-cpp-python; each batch on llama-server, here of 32 tokens: its progress comes a
    batch at a time, so a batch must take less than `hang_timeout`, ~0.2 s here, several
    times that on a machine that runs other work too), so it is not killed."""
    args = "\n    args: {batch-size: 32}" if backend == "llama-server" else ""
    (Path(home.env["SMACKCTL_PROFILE_DIR"]) / "test.yaml").write_text(
        f"models:\n  smol:\n    path: {smollm2_file}\n    n_ctx: 4096\n    threads: 2\n"
        f"    backend: {backend}\n    hang_timeout: 3{args}\n"
    )
    prompt = "Summarise this list: " + ", ".join(f"item {i} of the list" for i in range(300))
    sup = launch(home)
    try:
        with sup.client(timeout=300) as c:
            ask = {"model": "smol", "max_tokens": 2, "temperature": 0}
            first = c.post("/v1/completions", json={**ask, "prompt": "hi"})
            assert first.status_code == 200, first.text
            pid = sup.model("smol")["pid"]
            began = time.monotonic()
            r = c.post("/v1/completions", json={**ask, "prompt": prompt})
            took = time.monotonic() - began
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["prompt_tokens"] > 1500
        assert took > 3, f"the prompt took {took:.1f}s: no longer than the rule, nothing shown"
        assert "smol: no answer for 0.75s, but it makes progress: waiting" in sup.log()
        m = sup.model("smol")
        assert m["pid"] == pid and m["crashes"] == 0
    finally:
        shutdown(sup)
