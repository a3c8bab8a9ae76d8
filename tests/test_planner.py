"""The eviction planner and the memory estimator: pure functions, plain values."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smackctl.daemon.planner import Budget, Loaded, plan_evictions
from smackctl.daemon.slots import Slots
from smackctl.errors import QueueFull
from smackctl.estimate import RUNNER_BASELINE, estimate_memory
from smackctl.gguf import GGUFInfo

MiB = 1024**2


def L(name: str, ram: int, **kw: object) -> Loaded:  # noqa: N802
    return Loaded(name=name, ram=ram * MiB, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("need", "loaded", "budget", "fits", "evict", "wait"),
    [
        (100, [], 1000, True, (), False),
        (100, [L("a", 500, last_used=1), L("b", 300, last_used=2)], 1000, True, (), False),
        (300, [L("a", 500, last_used=2), L("b", 300, last_used=1)], 1000, True, ("b",), False),
        (600, [L("a", 500, last_used=2), L("b", 300, last_used=1)], 1000, True, ("b", "a"), False),
        (
            300,
            [L("a", 500, last_used=1, pinned=True), L("b", 300, last_used=2)],
            1000,
            True,
            ("b",),
            False,
        ),
        (
            300,
            [L("a", 500, last_used=1, in_flight=1), L("b", 300, last_used=2)],
            1000,
            True,
            ("b",),
            False,
        ),
        (
            700,
            [L("a", 500, last_used=1, in_flight=1), L("b", 300, last_used=2)],
            1000,
            False,
            (),
            True,
        ),
        (2000, [L("a", 500, last_used=1), L("b", 300, last_used=2)], 1000, False, (), False),
        (700, [L("a", 500, pinned=True), L("b", 300)], 1000, False, (), False),
    ],
)
def test_plan_table(
    need: int, loaded: list[Loaded], budget: int, fits: bool, evict: tuple[str, ...], wait: bool
) -> None:
    plan = plan_evictions(need * MiB, 0, loaded, Budget(ram=budget * MiB))
    assert (plan.fits, plan.evict, plan.wait) == (fits, evict, wait)


def test_frequency_buys_time() -> None:
    # b was used a little later, but a is used far more often: b goes first
    loaded = [L("a", 500, last_used=100, use_count=1000), L("b", 500, last_used=130, use_count=1)]
    assert plan_evictions(400 * MiB, 0, loaded, Budget(ram=1000 * MiB)).evict == ("b",)


def test_max_loaded_counts_models() -> None:
    loaded = [L("a", 1, last_used=1), L("b", 1, last_used=2)]
    plan = plan_evictions(1 * MiB, 0, loaded, Budget(ram=10**12, max_loaded=2))
    assert plan.fits and plan.evict == ("a",)


models = st.lists(
    st.builds(
        Loaded,
        name=st.uuids().map(str),
        ram=st.integers(0, 10**10),
        vram=st.integers(0, 10**9),
        pinned=st.booleans(),
        in_flight=st.integers(0, 2),
        last_used=st.floats(0, 1e6),
        use_count=st.integers(0, 100),
    ),
    max_size=8,
)


@given(
    models,
    st.integers(0, 10**10),
    st.integers(0, 10**9),
    st.integers(0, 5 * 10**10),
    st.integers(0, 10**10),
)
def test_plan_properties(
    loaded: list[Loaded], need_ram: int, need_vram: int, ram: int, vram: int
) -> None:
    plan = plan_evictions(need_ram, need_vram, loaded, Budget(ram=ram, vram=vram))
    by_name = {m.name: m for m in loaded}
    for name in plan.evict:
        assert not by_name[name].pinned and by_name[name].in_flight == 0
    if plan.fits:
        kept = [m for m in loaded if m.name not in plan.evict]
        assert sum(m.ram for m in kept) + need_ram <= ram
        assert sum(m.vram for m in kept) + need_vram <= vram
    else:
        assert plan.evict == ()  # nothing is evicted for a load that will not fit


def _info(**kw: object) -> GGUFInfo:
    base: dict[str, object] = {
        "path": "x", "file_size": 100 * MiB, "architecture": "llama", "name": None,
        "parameter_count": None, "quantization": None, "context_length": 8192, "layers": 30,
        "embedding_length": 576, "heads": 9, "heads_kv": 3, "key_length": 64,
        "value_length": 64, "vocab_size": 49152, "has_chat_template": True,
    }  # fmt: skip
    base.update(kw)
    return GGUFInfo(**base)  # type: ignore[arg-type]


def test_estimate_kv_cache_formula() -> None:
    est = estimate_memory(_info(), n_ctx=2048)
    assert est.kv_cache == 2048 * 30 * 3 * (64 + 64) * 2  # n_ctx × layers × kv_heads × dims × f16
    assert est.weights == 100 * MiB and est.vram == 0
    assert est.baseline == RUNNER_BASELINE + 49152 * 250  # the runner + its vocabulary tables
    assert est.ram == est.baseline + est.weights + est.kv_cache + est.compute
    assert est.compute == 512 * 2048 * 9 * 4  # one micro-batch of f32 KQ scores
    assert estimate_memory(_info(), n_ctx=8192).kv_cache == 4 * est.kv_cache


def test_estimate_splits_by_gpu_layers() -> None:
    half = estimate_memory(_info(), n_ctx=2048, n_gpu_layers=15)
    full = estimate_memory(_info(), n_ctx=2048, n_gpu_layers=-1)
    assert 0 < half.vram < full.vram
    assert full.ram == full.baseline
    assert half.total > 0 and half.ram + half.vram >= half.weights


def test_slots_fifo_cancel_and_overflow() -> None:
    async def scenario() -> None:
        slots = Slots(parallel=1, max_queue=2)
        await slots.acquire()
        order: list[int] = []

        async def waiter(i: int) -> None:
            await slots.acquire()
            order.append(i)
            slots.release()

        t1 = asyncio.create_task(waiter(1))
        t2 = asyncio.create_task(waiter(2))
        await asyncio.sleep(0)
        assert slots.queued == 2
        with pytest.raises(QueueFull):
            await slots.acquire()
        t1.cancel()  # a client that went away leaves the queue
        await asyncio.sleep(0)
        assert slots.queued == 1
        t3 = asyncio.create_task(waiter(3))
        await asyncio.sleep(0)
        slots.release()
        await asyncio.gather(t2, t3)
        assert order == [2, 3] and slots.busy == 0 and slots.queued == 0

    asyncio.run(scenario())
