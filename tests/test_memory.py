"""Memory-aware scheduling with real runners: eviction, pinning, busy models, 507, queues."""

from __future__ import annotations

import concurrent.futures
import json
import threading
from pathlib import Path

import httpx
import psutil
import pytest
from typer.testing import CliRunner

from smackctl.cli.app import app

from conftest import (
    CHAT,
    Home,
    Supervisor,
    ask,
    held_mid_stream,
    launch,
    planner_needs,
    profile_yaml,
    shutdown,
    wait_for,
)


def with_budget(home: Home, model_dir: Path, ram: int, **per_model: str) -> Supervisor:
    text = profile_yaml(model_dir, f"memory:\n  ram: {ram}\n", **per_model)
    (Path(home.env["SMACKCTL_PROFILE_DIR"]) / "test.yaml").write_text(text)
    return launch(home)


def loaded(sup: Supervisor) -> set[str]:
    return {m["name"] for m in sup.status()["models"] if m["state"] == "ready"}


def test_third_model_evicts_the_least_recently_used(home: Home, model_dir: Path) -> None:
    needs = planner_needs(home, model_dir)
    budget = sum(needs.values()) - min(needs.values()) // 2  # any two fit, not three
    sup = with_budget(home, model_dir, budget)
    try:
        assert ask(sup, "tiny-a").status_code == 200
        assert ask(sup, "tiny-b").status_code == 200
        assert ask(sup, "tiny-a").status_code == 200  # a is now more recent than b
        assert ask(sup, "tiny-c").status_code == 200
        assert loaded(sup) == {"tiny-a", "tiny-c"}
        assert "evicting tiny-b to make room for tiny-c" in sup.log()
        mem = sup.status()["memory"]
        assert mem["used_ram"] <= mem["budget_ram"] == budget
    finally:
        shutdown(sup)


def test_pinned_model_is_never_evicted(home: Home, model_dir: Path) -> None:
    needs = planner_needs(home, model_dir)
    budget = sum(needs.values()) - min(needs.values()) // 2
    sup = with_budget(home, model_dir, budget, **{"tiny-a": "pinned: true"})
    try:
        wait_for(lambda: "tiny-a" in loaded(sup), 30, "pinned tiny-a to load at start")
        assert ask(sup, "tiny-b").status_code == 200
        assert ask(sup, "tiny-c").status_code == 200  # a is least recent, but pinned
        assert loaded(sup) == {"tiny-a", "tiny-c"}
    finally:
        shutdown(sup)


def test_busy_model_is_never_evicted(home: Home, model_dir: Path) -> None:
    needs = planner_needs(home, model_dir)
    budget = sum(needs.values()) - min(needs.values()) // 2
    sup = with_budget(home, model_dir, budget)
    try:
        assert ask(sup, "tiny-a").status_code == 200
        assert ask(sup, "tiny-b").status_code == 200
        with held_mid_stream(sup, {**CHAT, "model": "tiny-a", "max_tokens": 1000}) as lines:
            # b, used twice after a's stream began, ranks above a (more recent and as
            # frequent): a is the least recently used, and only its stream keeps it
            assert ask(sup, "tiny-b").status_code == 200
            assert ask(sup, "tiny-b").status_code == 200
            assert ask(sup, "tiny-c").status_code == 200
            assert loaded(sup) == {"tiny-a", "tiny-c"}
        assert lines[-1] == "data: [DONE]"
        assert "evicting tiny-b to make room for tiny-c" in sup.log()
        assert "evicting tiny-a" not in sup.log()
    finally:
        shutdown(sup)


def test_impossible_model_gets_507_and_nothing_is_evicted(home: Home, model_dir: Path) -> None:
    extra = (f"  huge:\n    path: {model_dir / 'tiny-a.gguf'}\n    n_ctx: 2000000\n"
             "memory:\n  ram: 1GiB\n")  # fmt: skip
    (Path(home.env["SMACKCTL_PROFILE_DIR"]) / "test.yaml").write_text(
        profile_yaml(model_dir).replace("routing:", extra.split("memory:")[0] + "routing:")
        + "memory:\n  ram: 1GiB\n"
    )
    sup = launch(home)
    try:
        assert ask(sup, "tiny-b").status_code == 200
        r = ask(sup, "huge")
        assert r.status_code == 507
        msg = r.json()["error"]["message"]
        assert msg.startswith("huge needs ") and "but only" in msg and "1,024 MiB" not in msg
        assert "even after evicting every idle model" in msg
        assert "unload tiny-b (`smackctl models unload tiny-b`)" in msg
        assert "lower n_ctx (now 2000000)" in msg
        assert loaded(sup) == {"tiny-b"}  # nothing was evicted for a load that cannot fit
        runner = CliRunner()
        res = runner.invoke(app, ["models", "load", "huge", "--estimate-only"])
        assert res.exit_code == 1
        assert "does NOT fit, even after evicting every idle model" in res.stdout
        res = runner.invoke(app, ["models", "load", "tiny-c", "--estimate-only", "--json"])
        assert res.exit_code == 0 and json.loads(res.stdout)["fits"] is True
        assert loaded(sup) == {"tiny-b"}  # estimate-only changed nothing
        res = runner.invoke(app, ["models", "load", "huge", "--force"])  # the user's call
        assert res.exit_code == 0, res.stderr
        assert "warning: loading huge even if the memory estimate says" in res.stderr
        assert loaded(sup) == {"tiny-b", "huge"}
        assert "loading huge despite the estimate (--force)" in sup.log()
    finally:
        shutdown(sup)


def test_queue_overflow_gets_503_and_queued_requests_finish_in_order(
    home: Home, model_dir: Path
) -> None:
    (Path(home.env["SMACKCTL_PROFILE_DIR"]) / "test.yaml").write_text(
        profile_yaml(model_dir, **{"tiny-a": "max_queue: 2"})
    )
    sup = launch(home)
    try:
        assert ask(sup, "tiny-a").status_code == 200
        order: list[int] = []
        lock = threading.Lock()

        def stream(i: int, tokens: int) -> int:
            with (
                sup.client() as c,
                c.stream(
                    "POST",
                    "/v1/chat/completions",
                    json={**CHAT, "model": "tiny-a", "max_tokens": tokens, "stream": True},
                ) as r,
            ):
                lines = []
                for ln in r.iter_lines():
                    if ln.startswith("data:") and not lines:
                        with lock:  # its turn came (at its first token, not its end: the
                            order.append(i)  # slot is given back before the last chunk)
                    if ln.startswith("data:"):
                        lines.append(ln)
                assert lines[-1] == "data: [DONE]"
            return r.status_code

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            body = {**CHAT, "model": "tiny-a", "max_tokens": 1000}
            with held_mid_stream(sup, body) as lines:  # the first runs until this block ends
                order.append(0)
                queued = [pool.submit(stream, 1, 20)]
                wait_for(lambda: sup.model("tiny-a")["queued"] == 1, 10, "one queued")
                queued.append(pool.submit(stream, 2, 20))
                wait_for(lambda: sup.model("tiny-a")["queued"] == 2, 10, "two queued")
                r = ask(sup, "tiny-a")
                assert r.status_code == 503
                # when a slot is expected to be free: the queue's length times the measured
                # time a request holds one (its formula: test_slots)
                assert 1 <= int(r.headers["retry-after"]) <= 30
                assert "the queue is full (2 waiting, 1 running)" in r.json()["error"]["message"]
                assert not any(f.done() for f in queued)
            assert lines[-1] == "data: [DONE]"
            assert [f.result() for f in queued] == [200, 200]
        assert order == [0, 1, 2]
        m = sup.model("tiny-a")
        assert m["queued"] == 0 and m["in_flight"] == 0
    finally:
        shutdown(sup)


def test_client_that_disconnects_while_queued_leaves_no_leaked_slot(supervisor: Supervisor) -> None:
    assert ask(supervisor, "tiny-a").status_code == 200
    with held_mid_stream(supervisor, {**CHAT, "model": "tiny-a", "max_tokens": 1000}) as lines:
        with (
            pytest.raises(httpx.ReadTimeout),  # we hang up while queued
            supervisor.client(timeout=httpx.Timeout(10, read=0.5)) as c,
        ):
            c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-a"})
    assert lines[-1] == "data: [DONE]"
    wait_for(lambda: supervisor.model("tiny-a")["queued"] == 0, 10, "the queue to empty")
    assert supervisor.model("tiny-a")["in_flight"] == 0
    assert ask(supervisor, "tiny-a").status_code == 200  # the slot is free again


def test_unload_gives_the_memory_back(supervisor: Supervisor) -> None:
    assert ask(supervisor, "tiny-a").status_code == 200
    m = supervisor.model("tiny-a")
    pid, used_before = m["pid"], supervisor.status()["memory"]["used_ram"]
    assert used_before > 0
    with supervisor.client() as c:
        assert c.post("/api/models/tiny-a/unload").json() == {"unloaded": ["tiny-a"]}
    assert not psutil.pid_exists(pid)  # unload waited for the process to be gone
    assert supervisor.status()["memory"]["used_ram"] == 0
    assert supervisor.model("tiny-a")["state"] == "stopped"
