"""Priorities and deadlines (issue 29): the rule that picks the next waiter as a pure
function of plain values, the queue itself on a real event loop, and a real supervisor where
a batch key fills a model's one slot while an interactive key's request goes before the
batch requests that queued first; a deadline that passes in the queue is a 504
``deadline_exceeded``, one that passes mid-answer ends the stream with an error event."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from smackctl.daemon.slots import AGE_MIN, AGE_SERVICES, DEADLINE, PRIORITY, Slots, pick
from smackctl.errors import DeadlineExceeded

from conftest import (
    CHAT,
    Supervisor,
    launch_on,
    make_key,
    profile_yaml,
    shutdown,
    smackctl,
    wait_for,
)


def test_interactive_goes_first_until_the_first_batch_request_has_aged() -> None:
    assert pick(None, None, 100.0, 1.0) is None
    assert pick(90.0, None, 100.0, 1.0) == "interactive"
    assert pick(None, 90.0, 100.0, 1.0) == "batch"
    assert pick(99.0, 97.0, 100.0, 1.0) == "interactive"  # batch waited 3 s < 5 s
    assert pick(99.0, 100.0 - AGE_MIN, 100.0, 0.1) == "batch"  # aged: never starved
    assert pick(99.0, 100.0 - AGE_MIN, 100.0, 2.0) == "interactive"  # 8 service times: 16 s
    assert pick(99.0, 100.0 - AGE_SERVICES * 2.0, 100.0, 2.0) == "batch"


def test_the_queue_serves_by_priority_and_gives_up_at_a_deadline() -> None:
    async def go() -> None:
        slots = Slots(parallel=1)
        await slots.acquire()  # a batch request runs
        order: list[str] = []

        async def wait(label: str, priority: str, deadline: float | None = None) -> None:
            PRIORITY.set(priority)
            if deadline is not None:
                DEADLINE.set(asyncio.get_running_loop().time() + deadline)
            await slots.acquire()
            order.append(label)
            slots.release()

        batch = [asyncio.create_task(wait(f"b{i}", "batch")) for i in range(3)]
        await asyncio.sleep(0)
        late = asyncio.create_task(wait("late", "interactive", deadline=0.05))
        mine = asyncio.create_task(wait("i", "interactive"))
        await asyncio.sleep(0)
        assert slots.queued_by_priority() == {"interactive": 2, "batch": 3}
        with pytest.raises(DeadlineExceeded, match="deadline passed while it waited"):
            await late
        assert slots.queued == 4  # it left the queue
        slots.release()  # the running batch request ends
        await asyncio.gather(*batch, mine)
        assert order == ["i", "b0", "b1", "b2"]
        assert slots.busy == 0 and slots.queued == 0  # nothing leaked

    asyncio.run(go())


# -- a real supervisor ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sup(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Supervisor]:
    s = launch_on(tmp_path_factory.mktemp("priorities"), "test", profile_yaml(model_dir))
    yield s
    shutdown(s)


class Held:
    """A stream of ``key``'s to tiny-b, its runner stopped after the first token: the model's
    one slot is held until ``go()``; ``rest`` then holds the stream's other lines."""

    def __init__(self, sup: Supervisor, key: str, **headers: str) -> None:
        self.pid = sup.model("tiny-b")["pid"]
        auth = {"Authorization": f"Bearer {key}", **headers}
        self.client = httpx.Client(base_url=sup.url, timeout=60, headers=auth)
        # long enough to be mid-answer when stopped, short enough that its rest after go()
        # adds little to the queued requests' wait (a batch one ages past 5 s: pick())
        body = {**CHAT, "model": "tiny-b", "max_tokens": 1000, "stream": True}
        self.cm = self.client.stream("POST", "/v1/chat/completions", json=body)
        self.response = self.cm.__enter__()
        self.lines = self.response.iter_lines()
        for line in self.lines:
            if line.startswith("data: {"):
                break
        os.kill(self.pid, signal.SIGSTOP)
        self.rest: list[str] = []

    def go(self) -> None:
        os.kill(self.pid, signal.SIGCONT)
        self.rest = [ln for ln in self.lines if ln]
        self.cm.__exit__(None, None, None)
        self.client.close()


def _in_thread(results: dict[str, Any], label: str, key: str, sup: Supervisor) -> threading.Thread:
    def run() -> None:
        with httpx.Client(base_url=sup.url, timeout=120) as c:
            r = c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-b"},
                       headers={"Authorization": f"Bearer {key}"})  # fmt: skip
            results[label] = r

    t = threading.Thread(target=run)
    t.start()
    return t


def test_an_interactive_request_goes_before_the_batch_requests_queued_first(
    sup: Supervisor,
) -> None:
    batch = make_key(sup, "nightly", "--priority", "batch")
    mine = make_key(sup, "person")
    with sup.client() as c:
        assert c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-b"}).is_success
    held = Held(sup, batch)
    results: dict[str, Any] = {}
    threads = []
    try:
        for i in range(3):
            threads.append(_in_thread(results, f"batch{i}", batch, sup))
            wait_for(lambda n=i + 1: sup.model("tiny-b")["queued"] == n, 30, f"{i + 1} queued")
        threads.append(_in_thread(results, "person", mine, sup))
        m = wait_for(lambda: (m := sup.model("tiny-b"))["queued"] == 4 and m, 30, "4 queued")
        assert m["queued_by_priority"] == {"interactive": 1, "batch": 3}
        top = smackctl(sup.home, "top", "--once")
        assert "4 (3 batch)" in top.stdout
    finally:
        held.go()
        for t in threads:
            t.join(60)
    assert all(r.status_code == 200 for r in results.values())
    pattern = r"key=(nightly|person) model=tiny-b route=/v1/chat/completions status=200"
    # a whole answer's line is written just after it is sent: wait for the five
    served = wait_for(lambda: len(found := re.findall(pattern, sup.log())) >= 5 and found,
                      30, "the five answers' lines")  # fmt: skip
    # the held stream ends first, then the one interactive request, then the batch ones
    assert served == ["nightly", "person", "nightly", "nightly", "nightly"]
    waited = {label: float(r.headers["x-smackctl-queued-ms"]) for label, r in results.items()}
    assert waited["person"] < min(waited[f"batch{i}"] for i in range(3))
    with sup.client() as c:  # each said where it waits while it waited
        kept = c.get("/api/events", params={"follow": 0, "types": "queued"}).text
    queued = [json.loads(ln[6:]) for ln in kept.splitlines() if ln.startswith("data: {")]
    places = [(e["priority"], e["position"]) for e in queued if e["model"] == "tiny-b"]
    assert places[-4:] == [("batch", 1), ("batch", 2), ("batch", 3), ("interactive", 1)]
    assert all(e["expected_wait"] > 0 for e in queued)


def test_a_deadline_that_passes_in_the_queue_is_a_504_and_mid_answer_an_error_event(
    sup: Supervisor,
) -> None:
    key = make_key(sup, "hasty")
    with sup.client() as c:
        assert c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-b"}).is_success
    # it runs, stopped mid-answer; its deadline passes before the queued one's below
    held = Held(sup, key, **{"X-Smackctl-Deadline": "0.3"})
    try:
        with httpx.Client(base_url=sup.url, timeout=60) as c:
            r = c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-b"},
                       headers={"Authorization": f"Bearer {key}",
                                "X-Smackctl-Deadline": "0.5"})  # fmt: skip
            bad = c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-b"},
                         headers={"Authorization": f"Bearer {key}",
                                  "X-Smackctl-Deadline": "soon"})  # fmt: skip
        assert r.status_code == 504, r.text
        assert r.json()["error"]["code"] == "deadline_exceeded"
        assert "deadline (X-Smackctl-Deadline) passed while it waited" in r.text
        assert bad.status_code == 400 and "X-Smackctl-Deadline must be seconds" in bad.text
        wait_for(lambda: sup.model("tiny-b")["queued"] == 0, 10, "the 504 to leave the queue")
    finally:
        held.go()  # its deadline passed (before the 504's): its next piece ends it
    last = json.loads(held.rest[-1].removeprefix("data: "))
    assert last["error"]["code"] == "deadline_exceeded" and "data: [DONE]" not in held.rest
    wait_for(lambda: sup.model("tiny-b")["in_flight"] == 0, 30, "the slot to be given back")
    assert "key=hasty model=tiny-b route=/v1/chat/completions status=504" in sup.log()
    with sup.client() as c:  # the model serves on
        assert c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-b"}).is_success


def test_a_loaded_models_queue_goes_before_a_swap(tmp_path: Path, model_dir: Path) -> None:
    """One model at a time (max_loaded: 1): tiny-b is busy with a held stream and has two
    requests queued when one for tiny-a comes. tiny-b's queue is served first, then tiny-a
    is loaded: one swap, where taking tiny-b away under its queue would cost two. (A freed
    slot passes straight to the next waiter, so tiny-b's queue also went first before its
    queued requests counted in the plan; now the plan says so, and the log with it.)"""
    one_at_a_time = "memory:\n  max_loaded: 1\n  spare_runner: false\n"
    sup = launch_on(tmp_path, "test", profile_yaml(model_dir, one_at_a_time))
    try:
        with sup.client() as c:
            assert c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-b"}).is_success
        held = Held(sup, sup.token)
        results: dict[str, Any] = {}
        threads = []
        try:
            for i in range(2):
                threads.append(_in_thread(results, f"b{i}", sup.token, sup))
                wait_for(lambda n=i + 1: sup.model("tiny-b")["queued"] == n, 30, f"{i + 1} queued")

            def other() -> None:
                with sup.client(timeout=120) as c:
                    results["a"] = c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-a"})

            threads.append(threading.Thread(target=other))
            threads[-1].start()
            wait_for(lambda: "tiny-a waits for the 2 queued request(s) of tiny-b before its "
                     "load: that saves a swap" in sup.log(), 30, "the swap to wait")  # fmt: skip
        finally:
            held.go()
            for t in threads:
                t.join(120)
        assert all(r.status_code == 200 for r in results.values()), results
        wait_for(lambda: "model=tiny-a route=/v1/chat/completions status=200" in sup.log(), 30,
                 "tiny-a's line (written just after its answer is sent)")  # fmt: skip
        served = re.findall(r"model=(tiny-[ab]) route=/v1/chat/completions status=200", sup.log())
        assert served[-4:] == ["tiny-b", "tiny-b", "tiny-b", "tiny-a"]  # b's queue, then a
        with sup.client() as c:
            kept = c.get("/api/events", params={"follow": 0, "types": "evict"}).text
        evictions = [json.loads(ln[6:]) for ln in kept.splitlines() if ln.startswith("data: {")]
        assert [(e["model"], e["for"]) for e in evictions] == [("tiny-b", "tiny-a")]  # one swap
    finally:
        shutdown(sup)


def test_aged_batch_requests_go_first_one_at_a_time_never_a_run_of_them() -> None:
    """Three batch requests that all waited past their age limit, and an interactive one:
    one aged batch request goes first, then the interactive one (its wait stays within one
    service time), then the other batch ones."""

    async def go() -> None:
        slots = Slots(parallel=1)
        await slots.acquire()
        order: list[str] = []

        async def wait(label: str, priority: str) -> None:
            PRIORITY.set(priority)
            await slots.acquire()
            order.append(label)
            slots.release()

        batch = [asyncio.create_task(wait(f"b{i}", "batch")) for i in range(3)]
        await asyncio.sleep(0)
        mine = asyncio.create_task(wait("i", "interactive"))
        await asyncio.sleep(0)
        long_ago = asyncio.get_running_loop().time() - 1000  # as if queued long ago
        queue = slots._queues["batch"]
        queue.extend((long_ago, fut) for _, fut in [queue.popleft() for _ in range(len(queue))])
        slots.release()
        await asyncio.gather(*batch, mine)
        assert order == ["b0", "i", "b1", "b2"]

    asyncio.run(go())
