"""The event stream (``/api/events``, ``smackctl events``) and profiles that reload
themselves when their file changes, on real supervisors, real runners and a real file watch."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from smackctl.daemon.events import Events

from conftest import CHAT, Home, Supervisor, profile_yaml, runner_pids, smackctl, wait_for

PATH = "/v1/chat/completions"


def _kept(sup: Supervisor, **query: Any) -> list[dict[str, Any]]:
    with sup.client() as c:
        r = c.get("/api/events", params={"follow": 0, **query})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    return [json.loads(x[6:]) for x in r.text.splitlines() if x.startswith("data: ")]


class Follower:
    """A real client following the stream in a thread, as `smackctl events` does."""

    def __init__(self, sup: Supervisor, **query: Any) -> None:
        self.events: list[dict[str, Any]] = []
        self.ended = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(sup, query), daemon=True)
        self._thread.start()
        wait_for(lambda: self.events or self.started, 10, "the stream to begin")

    started = False

    def _run(self, sup: Supervisor, query: dict[str, Any]) -> None:
        try:
            with sup.client(timeout=None) as c:
                with c.stream("GET", "/api/events", params=query) as r:
                    self.started = True
                    for line in r.iter_lines():
                        if line.startswith("data: "):
                            self.events.append(json.loads(line[6:]))
        except httpx.HTTPError:
            pass
        finally:
            self.ended.set()

    def saw(self, **match: Any) -> dict[str, Any] | None:
        return next((e for e in self.events if all(e.get(k) == v for k, v in match.items())), None)


def test_loads_and_crashes_are_events_as_they_happen_and_kept_for_late_readers(
    supervisor: Supervisor,
) -> None:
    follower = Follower(supervisor, since=0)
    with supervisor.client() as c:
        assert c.post(PATH, json={**CHAT, "model": "tiny-a"}).status_code == 200
    ready = wait_for(lambda: follower.saw(event="ready", model="tiny-a"), 10, "ready")
    assert ready["pid"] and ready["id"] >= 1
    pid = runner_pids(supervisor.home.root)[0]
    os.kill(pid, signal.SIGKILL)
    crash = wait_for(lambda: follower.saw(event="crash", model="tiny-a"), 10, "the crash")
    assert crash["signal"] == "SIGKILL" and crash["id"] > ready["id"]
    # a late reader sees the same history; after=ID gives only what came later
    kept = _kept(supervisor, since=0)
    assert [e["id"] for e in kept] == sorted(e["id"] for e in kept)
    assert any(e["event"] == "crash" and e["id"] == crash["id"] for e in kept)
    later = _kept(supervisor, after=crash["id"])
    assert all(e["id"] > crash["id"] for e in later)
    with supervisor.client() as c:  # a reconnecting SSE client sends Last-Event-ID
        r = c.get("/api/events", params={"follow": 0}, headers={"Last-Event-ID": str(ready["id"])})
    ids = [json.loads(x[6:])["id"] for x in r.text.splitlines() if x.startswith("data: ")]
    assert ids and min(ids) == ready["id"] + 1
    only = _kept(supervisor, since=0, types="crash")
    assert only and {e["event"] for e in only} == {"crash"}
    cli = smackctl(supervisor.home, "events", "--no-follow", "--since", "1h", "-t", "crash")
    assert cli.returncode == 0, cli.stderr
    assert "crash" in cli.stdout and "model=tiny-a" in cli.stdout and "SIGKILL" in cli.stdout
    assert "{" not in cli.stdout.splitlines()[0]  # a readable line, not a dump
    js = smackctl(supervisor.home, "events", "--no-follow", "--since", "1h", "--json")
    assert all(json.loads(line)["id"] for line in js.stdout.splitlines())


def test_a_slow_subscriber_loses_the_oldest_events_and_never_blocks() -> None:
    events = Events(history=5, queue=3)

    async def go() -> tuple[list[int], int, list[int]]:
        async with events.subscribe() as q:  # a reader that never reads
            for i in range(10):
                events.publish({"event": "state", "n": i})  # never waits for the reader
            got = [q.get_nowait()["n"] for _ in range(q.qsize())]
            return got, q.dropped, [e["n"] for e in events.since()]

    import asyncio

    got, dropped, kept = asyncio.run(go())
    assert got == [7, 8, 9] and dropped == 7 and events.dropped == 7
    assert kept == [5, 6, 7, 8, 9]  # the last HISTORY, for late readers


def test_a_tasks_progress_keeps_its_latest_in_the_history_and_reaches_every_subscriber() -> None:
    """A pull's thousands of progress events (one a MiB) would push every load, crash and
    switch out of the history: it keeps each task's latest (model and phase), while a
    subscriber gets every one."""
    events = Events(history=50, queue=5000)

    async def go() -> tuple[int, list[dict[str, object]]]:
        async with events.subscribe() as q:
            events.publish({"event": "crash", "model": "a"})
            for phase in ("downloading", "verifying"):
                for done in range(0, 2000, 1):
                    events.publish({"event": "progress", "model": "m", "phase": phase,
                                    "done": done})  # fmt: skip
                    if done == 1000:  # another model's pull between
                        events.publish({"event": "progress", "model": "n", "phase": phase,
                                        "done": 1})  # fmt: skip
            events.publish({"event": "ready", "model": "m"})
            return q.qsize(), events.since()

    import asyncio

    got, kept = asyncio.run(go())
    assert got == 1 + 2 * 2001 + 1  # every one reached the subscriber
    assert [(e["event"], e.get("phase"), e.get("done")) for e in kept] == [
        ("crash", None, None),
        ("progress", "downloading", 1),  # n's, then m's latest of each phase
        ("progress", "downloading", 1999),
        ("progress", "verifying", 1),
        ("progress", "verifying", 1999),
        ("ready", None, None),
    ]


def test_an_open_event_stream_does_not_hold_the_stop(home: Home) -> None:
    from conftest import launch

    sup = launch(home)
    follower = Follower(sup)
    t = time.monotonic()
    stop = smackctl(home, "stop")
    assert stop.returncode == 0, stop.stderr
    assert follower.ended.wait(10)
    sup.proc.wait(10)
    assert time.monotonic() - t < 20  # well under the drain timeout an open stream would cost


def test_the_profile_file_changing_is_applied_and_a_bad_change_is_reported(
    supervisor: Supervisor, home: Home, model_dir: Path
) -> None:
    follower = Follower(supervisor, types="reload,switch")
    profile = home.root / "profiles" / "test.yaml"
    with supervisor.client() as c:
        assert c.post(PATH, json={**CHAT, "model": "tiny-a"}).status_code == 200
        # a valid change: a new alias, and tiny-a's context changed (a reload of its runner)
        profile.write_text(
            profile_yaml(model_dir, **{"tiny-a": "aliases: [a, quick]\nn_ctx: 2048"})
        )
        wait_for(lambda: follower.saw(event="reload", ok=True), 30, "the reload")
        planned = follower.saw(event="reload", phase="planned")
        assert planned is not None and any("tiny-a: reload" in s for s in planned["steps"])
        assert supervisor.model("tiny-a")["n_ctx"] == 2048
        assert c.post(PATH, json={**CHAT, "model": "quick"}).status_code == 200
        # an invalid change: reported with file:line key, the running configuration stays
        profile.write_text(profile.read_text().replace("n_ctx: 2048", "n_ctx: -1"))
        bad = wait_for(lambda: follower.saw(event="reload", ok=False), 30, "the bad reload")
        assert any("models.tiny-a.n_ctx" in i and "test.yaml:" in i for i in bad["issues"])
        status = supervisor.status()
        assert any("models.tiny-a.n_ctx" in w for w in status["warnings"])
        assert c.post(PATH, json={**CHAT, "model": "quick"}).status_code == 200
    assert "is invalid, the running configuration stays" in supervisor.log()
    cli = smackctl(home, "profile", "reload")
    assert cli.returncode == 1 and "models.tiny-a.n_ctx" in cli.stdout
    profile.write_text(profile_yaml(model_dir, **{"tiny-a": "aliases: [a]"}))
    wait_for(lambda: not supervisor.status()["warnings"], 30, "the warning to go")
    again = smackctl(home, "profile", "reload")
    assert again.returncode == 0 and "as the supervisor runs it" in again.stdout
