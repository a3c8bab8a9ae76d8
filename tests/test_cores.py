"""Sharing the CPU cores between runners: the gate itself, then through a real supervisor."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from pathlib import Path

import pytest

from smackctl.daemon.cores import Cores

from conftest import Home, Supervisor, held_mid_stream, launch, profile_yaml, shutdown, wait_for


def test_requests_that_fit_run_together_and_the_rest_wait_in_order() -> None:
    async def scenario() -> None:
        cores = Cores(2)
        order: list[str] = []
        await cores.acquire(1)
        await cores.acquire(1)  # two 1-thread runners compute side by side
        assert cores.view() == {"cores": 2, "busy": 2, "waiting": 0}

        async def request(name: str, n: int) -> None:
            await cores.acquire(n)
            order.append(name)

        big = asyncio.create_task(request("big", 2))
        small = asyncio.create_task(request("small", 1))
        await asyncio.sleep(0)  # let both reach the queue
        assert cores.waiting == 2
        cores.release(1)
        await asyncio.sleep(0)
        # one core is free, but "big" came first and needs two: "small" must not overtake it
        assert order == [] and cores.waiting == 2
        cores.release(1)
        await big
        assert order == ["big"] and cores.busy == 2
        cores.release(2)
        await small
        assert order == ["big", "small"] and cores.view() == {"cores": 2, "busy": 1, "waiting": 0}

    asyncio.run(scenario())


def test_a_cancelled_waiter_leaves_the_queue_and_lets_the_next_one_through() -> None:
    async def scenario() -> None:
        cores = Cores(2)
        await cores.acquire(1)
        first = asyncio.create_task(cores.acquire(2))  # needs both: waits
        second = asyncio.create_task(cores.acquire(1))  # fits, but is behind `first`
        await asyncio.sleep(0)
        assert cores.waiting == 2
        first.cancel()  # its client went away
        with pytest.raises(asyncio.CancelledError):
            await first
        await second
        assert cores.view() == {"cores": 2, "busy": 2, "waiting": 0}

    asyncio.run(scenario())


def test_a_request_larger_than_the_machine_runs_alone_and_resize_wakes_waiters() -> None:
    async def scenario() -> None:
        cores = Cores(4)
        await cores.acquire(3)
        waiter = asyncio.create_task(cores.acquire(4))
        await asyncio.sleep(0)
        cores.resize(2)  # a profile with `cpu: {cores: 2}`: 4 is now more than there is
        cores.release(3)
        await waiter  # it runs alone rather than waiting for ever
        assert cores.view() == {"cores": 2, "busy": 4, "waiting": 0}
        assert cores.units(8) == 2 and cores.units(1) == 1

    asyncio.run(scenario())


def test_a_runner_holding_cores_lets_a_waiting_runner_go_first() -> None:
    """A llama-server kept busy by its own clients must not keep the cores for ever: once
    another runner's request waits, its new requests queue behind it."""

    async def scenario() -> None:
        cores = Cores(2)
        await cores.acquire(2, "server")  # a llama-server computing one request
        await cores.acquire(2, "server")  # a second joins its batch: no wait, no more cores
        assert cores.view() == {"cores": 2, "busy": 2, "waiting": 0}
        other = asyncio.create_task(cores.acquire(2, "gemma"))
        await asyncio.sleep(0)
        late = asyncio.create_task(cores.acquire(2, "server"))  # a third, after gemma asked
        await asyncio.sleep(0)
        assert cores.waiting == 2 and not late.done()  # it waits behind gemma
        cores.release(2, "server")
        cores.release(2, "server")
        await other
        assert not late.done() and cores.busy == 2
        cores.release(2, "gemma")
        await late
        assert cores.view() == {"cores": 2, "busy": 2, "waiting": 0}

    asyncio.run(scenario())


def _stream(sup: Supervisor, model: str, max_tokens: int) -> tuple[list[str], int]:
    body = {
        "model": model,
        "prompt": "hello",
        "max_tokens": max_tokens,
        "stream": True,
        "logit_bias": {"2": -100},  # no end-of-text: exactly max_tokens tokens
    }
    with sup.client() as c, c.stream("POST", "/v1/completions", json=body) as r:
        return [line for line in r.iter_lines() if line], r.status_code


@pytest.fixture
def one_core(home: Home, model_dir: Path) -> Supervisor:
    (home.root / "profiles" / "test.yaml").write_text(profile_yaml(model_dir, "cpu:\n  cores: 1\n"))
    return launch(home)


def test_with_one_core_a_second_model_waits_until_the_first_request_is_done(
    one_core: Supervisor,
) -> None:
    sup = one_core
    for name in ("tiny-a", "tiny-b"):  # both loaded, so only the cores can hold a request back
        assert _stream(sup, name, 1)[1] == 200
    first = {"model": "tiny-a", "prompt": "hello", "max_tokens": 1000, "logit_bias": {"2": -100}}
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            with held_mid_stream(sup, first) as lines_a:  # tiny-a computes all along
                second = pool.submit(_stream, sup, "tiny-b", 8)
                # tiny-b's runner is idle, yet its request waits: the one core is tiny-a's
                held = wait_for(
                    lambda: (st := sup.status())["cpu"]["waiting"] == 1 and st,
                    30,
                    "tiny-b's request to wait for the core",
                )
                assert held["cpu"] == {"cores": 1, "busy": 1, "waiting": 1}
                assert not second.done()
            lines_b, status_b = second.result(120)
        assert status_b == 200
        for lines, n in ((lines_a, 1000), (lines_b, 8)):
            events = [json.loads(x[6:]) for x in lines if x.startswith("data: {")]
            assert lines[-1] == "data: [DONE]"
            assert events[-1]["choices"][0]["finish_reason"] == "length"
            assert len(events) >= n  # every token came (the last event may carry none)
        assert sup.status()["cpu"] == {"cores": 1, "busy": 0, "waiting": 0}
    finally:
        shutdown(sup)
