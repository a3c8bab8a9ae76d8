"""The queue in front of a runner's slots: bounded by memory, with a Retry-After it can keep."""

from __future__ import annotations

import asyncio
import concurrent.futures
from pathlib import Path

import pytest

from smackctl.daemon.slots import QUEUED_OVERHEAD, QueueBudget, Slots
from smackctl.errors import QueueFull

from conftest import CHAT, Home, Supervisor, ask, held_mid_stream, launch, shutdown, wait_for


def test_the_queue_is_bounded_by_memory_not_by_a_count() -> None:
    async def scenario() -> None:
        # room for 3 waiting requests of 1 KiB (or 1 of 150 KiB), over two models' slots
        budget = QueueBudget(lambda: 3 * (1024 + QUEUED_OVERHEAD))
        a, b = Slots(1, budget=budget), Slots(1, budget=budget)
        await a.acquire(1024)
        await b.acquire(1024)  # both running: nothing waits yet
        assert budget.held == 0
        waiting = [asyncio.create_task(a.acquire(1024)) for _ in range(2)]
        waiting.append(asyncio.create_task(b.acquire(1024)))
        await asyncio.sleep(0)
        assert budget.waiting == 3 and a.queued == 2 and b.queued == 1
        with pytest.raises(QueueFull) as refused:
            await b.acquire(1024)  # the supervisor's queue memory is full, whatever the model
        assert "queue memory is full (3 requests waiting" in refused.value.message
        assert "memory.queue" in (refused.value.hint or "")
        waiting[0].cancel()  # a client that went away gives its room back
        await asyncio.sleep(0)
        assert budget.waiting == 2
        a.release()  # the slot passes to the next waiter, which leaves the queue
        await asyncio.sleep(0)
        assert budget.waiting == 1 and a.queued == 0
        a.release()
        b.release()
        await asyncio.gather(waiting[1], waiting[2], return_exceptions=True)
        assert budget.waiting == 0 and budget.held == 0

    asyncio.run(scenario())


def test_a_refusal_says_when_a_slot_is_expected_to_be_free() -> None:
    async def scenario() -> None:
        slots = Slots(parallel=2, max_queue=3)
        for _ in range(3):
            slots.served(4.0)  # the moving average goes from 1 s towards 4 s
        service = slots.service
        assert 2.0 < service < 4.0
        await slots.acquire()
        await slots.acquire()
        waiters = [asyncio.create_task(slots.acquire()) for _ in range(3)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull) as refused:
            await slots.acquire()
        # 3 ahead and itself over 2 slots: two rounds of service
        assert refused.value.retry_after == pytest.approx(2 * service)
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)

    asyncio.run(scenario())


def test_a_waiter_failed_by_a_stop_gives_its_memory_back() -> None:
    async def scenario() -> None:
        budget = QueueBudget(lambda: 10 * 2**20)
        slots = Slots(1, budget=budget)
        await slots.acquire()
        waiter = asyncio.create_task(slots.acquire(5000))
        await asyncio.sleep(0)
        assert budget.held == 5000 + QUEUED_OVERHEAD
        assert slots.fail_waiters(RuntimeError("the drain ran out of time")) == 1
        with pytest.raises(RuntimeError):
            await waiter
        assert budget.held == 0 and budget.waiting == 0

    asyncio.run(scenario())


# -- through a real supervisor on the shipped settings ---------------------------------------


def _crowd(sup: Supervisor, n: int) -> list[int]:
    """``n`` clients at once on tiny-a, whose one slot a held stream keeps: each client's
    status; every one of them waited in the queue (or was refused) before the slot was let go."""
    body = {**CHAT, "model": "tiny-a"}
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        with held_mid_stream(sup, {**body, "max_tokens": 1000}):
            futures = [pool.submit(lambda: ask(sup, "tiny-a").status_code) for _ in range(n)]
            wait_for(
                lambda: sup.model("tiny-a")["queued"] + sum(f.done() for f in futures) == n,
                30,
                "every client to be queued or answered",
            )
            refused_at_once = [f.result() for f in futures if f.done()]
        return refused_at_once + [f.result() for f in futures if f not in refused_at_once]


def test_the_shipped_settings_queue_sixty_clients_on_one_slot(home: Home, model_dir: Path) -> None:
    """No count bounds the queue by default (before issue 26, 32 per model: the 33rd got a
    503); the memory it holds does, from `memory.queue`, wired to every model's slots."""
    sup = launch(home)
    try:
        assert ask(sup, "tiny-a").status_code == 200
        statuses = _crowd(sup, 60)
        assert statuses == [200] * 60, statuses
    finally:
        shutdown(sup)
    # the same crowd with room for about five waiting requests: the rest are refused at once
    profile = Path(home.env["SMACKCTL_PROFILE_DIR"]) / "test.yaml"
    room = 5 * (QUEUED_OVERHEAD + 1024) // 1024
    profile.write_text(profile.read_text() + f"memory:\n  queue: {room}KiB\n")
    sup = launch(home)
    try:
        assert ask(sup, "tiny-a").status_code == 200
        statuses = _crowd(sup, 60)
        assert 1 < statuses.count(200) <= 6 and set(statuses) == {200, 503}, statuses
    finally:
        shutdown(sup)
