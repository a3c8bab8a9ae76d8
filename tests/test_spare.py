"""The spare runner: a process with llama_cpp.server imported, handed the next model to load."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import psutil

from conftest import (
    Home,
    Supervisor,
    held_mid_stream,
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
        # a request in flight (held mid-answer) keeps the reaper from starting a new spare
        # in the dead one's place (it looks every second) before tiny-b asks for one
        held = {**CHAT, "model": "tiny-a", "max_tokens": 1000}
        with held_mid_stream(sup, held):
            os.killpg(spare, signal.SIGKILL)  # say the OOM killer took it
            wait_for(lambda: spare not in spare_pids(sup.home.root), 10, "the spare to go")
            r = c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-b"})
            assert r.status_code == 200
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
    """With spare_runner on, a spare starts within a reaper tick or two of the supervisor
    going idle. Here tiny-a's ttl of 1 s lets the reaper run while nothing else happens (it
    unloads tiny-a), and for three seconds after that no spare appears."""
    import time

    profile = profile_yaml(model_dir, "memory:\n  spare_runner: false\n", **{"tiny-a": "ttl: 1"})
    (home.root / "profiles" / "test.yaml").write_text(profile)
    sup = launch(home)
    try:
        with sup.client() as c:
            r = c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-a"})
            assert r.status_code == 200
        wait_for(lambda: sup.model("tiny-a")["state"] == "stopped", 20, "tiny-a's ttl unload")
        deadline = time.monotonic() + 3  # a bounded look for what must not appear
        while time.monotonic() < deadline:
            assert spare_pids(home.root) == []
            time.sleep(0.05)
        with sup.client() as c:
            assert (
                c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-b"}).status_code == 200
            )
        assert "in the spare process" not in (home.state / "logs" / "runner-tiny-b.log").read_text()
    finally:
        shutdown(sup)


def test_a_load_short_of_memory_stops_the_spare_before_evicting_a_model(home: Home) -> None:
    """FAKE machine memory (a machine short of RAM cannot be made safely here): the probe
    reports ``total`` minus what the scheduler's runners hold minus the spare's size while a
    spare exists. Once the spare waits, ``total`` drops (another program took memory) to
    where tiny-b fits beside tiny-a but not beside the spare as well. Runners, spare and
    loads are real."""
    import asyncio

    from smackctl.daemon.scheduler import SPARE_RAM, Scheduler
    from smackctl.daemon.store import Store
    from smackctl.paths import get_paths
    from smackctl.profile_file import load_profile

    async def scenario() -> None:
        paths = get_paths()
        paths.state_dir.mkdir(parents=True, exist_ok=True)
        profile_path = Path(home.env["SMACKCTL_PROFILE_DIR"]) / "test.yaml"
        profile = load_profile(profile_path)
        reserve = profile.memory.reserve
        total = 1 << 40

        def held() -> int:
            return sum(m.memory()[0] for m in sched.models.values() if m.loaded)

        def fake_probe() -> tuple[int, int]:
            spare = (
                SPARE_RAM if sched.loader.spare is not None or sched.loader.spare_starting else 0
            )
            return total - held() - spare, 0

        sched = Scheduler(paths, Store(paths.db_path), profile, profile_path)
        sched._budget_probe = fake_probe
        try:
            await sched.ensure_ready("tiny-a")
            a = sched.models["tiny-a"]
            await wait_until(lambda: a.measured_ram is not None, "tiny-a measured")
            sched.loader.refill_spare()
            await wait_until(lambda: sched.loader.spare is not None, "a spare")
            assert sched.loader.spare is not None and sched.loader.spare.proc is not None
            spare_pid = sched.loader.spare.proc.pid
            b = sched.models["tiny-b"]
            need_b = sched.loader.estimate(b, sched.registry.model_file(b)).ram
            total = reserve + held() + need_b + SPARE_RAM // 2
            await sched.ensure_ready("tiny-b")
            assert {m.name for m in sched.models.values() if m.loaded} == {"tiny-a", "tiny-b"}
            assert sched.loader.spare is None
            assert not os.path.exists(f"/proc/{spare_pid}") or _zombie(spare_pid)
            # and no new spare while the machine has no room for one
            sched.loader.refill_spare()
            assert sched.loader.spare is None and not sched.loader.spare_starting
        finally:
            await sched.shutdown()

    async def wait_until(cond: Callable[[], object], what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while not cond():
            assert loop.time() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)

    asyncio.run(scenario())


def _zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1].startswith("Z")


def test_a_spare_killed_is_dead_before_asyncio_has_reaped_it(tmp_path: Path) -> None:
    """A spare SIGKILLed (the OOM killer) is a zombie until asyncio's child watcher waits
    for it, and its ``returncode`` is None until then: a load handed to it in between went
    nowhere (CI saw it: tiny-b's load "exited with code -9", a 500). Asked of the kernel, it
    is dead at once, and nothing is handed to it."""
    import asyncio
    import sys

    from smackctl.daemon.spare import Spare

    async def go() -> tuple[bool, object]:
        spare = Spare(tmp_path / "runner-spare.log")
        spare.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import time; time.sleep(60)", stdin=asyncio.subprocess.PIPE
        )
        pid = spare.proc.pid
        os.kill(pid, signal.SIGKILL)

        def ended() -> bool:  # a zombie, or reaped already by asyncio's watcher thread
            try:
                return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
            except psutil.NoSuchProcess:
                return True

        wait_for(ended, 10, "the kernel to end it")
        alive = spare.alive  # no await since the kill: asyncio has not reaped it
        handed = spare.hand(["--model=x"], tmp_path / "runner-x.log", "key")
        return alive, handed

    alive, handed = asyncio.run(go())
    assert not alive and handed is None
