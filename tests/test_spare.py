"""The spare runner: a process with llama_cpp.server imported, handed the next model to load."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from conftest import (
    Home,
    Supervisor,
    launch,
    profile_yaml,
    runner_pids,
    shutdown,
    spare_pids,
    wait_for,
)

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}


def _one_spare(sup: Supervisor) -> int:
    found: list[int] = wait_for(
        lambda: spare_pids(sup.home.root), 60, "a spare runner once nothing is loading"
    )
    assert len(found) == 1
    return found[0]


def test_the_next_load_runs_in_the_spare_and_a_new_spare_follows(supervisor: Supervisor) -> None:
    sup = supervisor
    with sup.client() as c:
        assert c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-a"}).status_code == 200
        spare = _one_spare(sup)  # started after tiny-a's load finished
        r = c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-b"})
        assert r.status_code == 200
        assert r.json()["choices"][0]["message"]["content"] is not None
    assert sup.model("tiny-b")["pid"] == spare  # tiny-b runs in the process that waited
    log = (sup.home.state / "logs" / "runner-tiny-b.log").read_text()
    assert "(in the spare process, imports done)" in log
    assert "--model=" in log and "Uvicorn running" in log  # llama_cpp.server's own output
    assert _one_spare(sup) != spare  # and a fresh spare waits for the load after
    assert sorted(runner_pids(sup.home.root)) == sorted(
        [sup.model("tiny-a")["pid"], sup.model("tiny-b")["pid"]]
    )


def test_a_dead_spare_is_passed_over_and_replaced(supervisor: Supervisor) -> None:
    sup = supervisor
    with sup.client() as c:
        assert c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-a"}).status_code == 200
        spare = _one_spare(sup)
        os.killpg(spare, signal.SIGKILL)  # say the OOM killer took it
        wait_for(lambda: not spare_pids(sup.home.root), 10, "the spare to be gone")
        assert c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-b"}).status_code == 200
    log = (sup.home.state / "logs" / "runner-tiny-b.log").read_text()
    assert "in the spare process" not in log  # started the usual way
    assert _one_spare(sup) != spare


def test_a_spare_that_dies_while_idle_is_replaced_without_a_load(
    supervisor: Supervisor,
) -> None:
    sup = supervisor
    with sup.client() as c:
        assert c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-a"}).status_code == 200
    spare = _one_spare(sup)
    os.killpg(spare, signal.SIGKILL)
    replacement = wait_for(
        lambda: [p for p in spare_pids(sup.home.root) if p != spare],
        60,
        "a new spare in place of the dead one",
    )
    assert len(replacement) == 1
    log = sup.home.state / "logs" / "runner-spare.log"
    wait_for(
        lambda: "spare: ready" in log.read_text().rsplit("spare starting", 1)[-1],
        60,
        "the new spare to finish its imports",
    )
    starts = log.read_text().count("spare starting")
    # three rounds of the reaper (it refills every second) later, that spare is still the one,
    # and no other was started and stopped as a surplus next to a dead one's memory
    t0 = sup.status()["uptime"]
    wait_for(lambda: sup.status()["uptime"] > t0 + 3, 30, "three reaper rounds")
    assert spare_pids(sup.home.root) == replacement
    assert log.read_text().count("spare starting") == starts


def test_spare_runner_false_keeps_none(home: Home, model_dir: Path) -> None:
    profile = profile_yaml(model_dir, "memory:\n  spare_runner: false\n")
    (home.root / "profiles" / "test.yaml").write_text(profile)
    sup = launch(home)
    try:
        with sup.client() as c:
            r = c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-a"})
            assert r.status_code == 200
        # the spare would start as soon as the load ended; a request later it still is not there
        with sup.client() as c:
            assert (
                c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-b"}).status_code == 200
            )
        assert spare_pids(home.root) == []
        assert "in the spare process" not in (home.state / "logs" / "runner-tiny-b.log").read_text()
    finally:
        shutdown(sup)
