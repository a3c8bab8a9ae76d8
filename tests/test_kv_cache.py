"""Conversations that survive swaps (issue 32), on the llama-cpp-python backend with real
runners: the KV cache saved as a model goes (an unload, a swap in the same process, the
supervisor's stop) and restored when a prompt with that prefix comes back; usage reports
``prompt_tokens_details.cached_tokens`` in plain answers and in the streamed usage chunk.
Nothing is restored for a prompt that differs in its first tokens, for another ``n_ctx``,
or from a corrupt file (discarded, the request still answered); the folder keeps to its
cap, least recently used out first."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Supervisor, launch, launch_on, make_key, profile_yaml, shutdown, wait_for

#: a long first turn: the history a returning conversation shares (~600 tokens)
HISTORY = " ".join(f"Fact {i}: the {i}th lighthouse on the coast is blue." for i in range(40))


def turn(extra: str = "", first: str = HISTORY) -> dict[str, Any]:
    return {
        "model": "tiny-a",
        "messages": [
            {"role": "system", "content": "You answer questions about lighthouses."},
            {"role": "user", "content": first},
            {"role": "assistant", "content": "Noted."},
            {"role": "user", "content": "Which lighthouse is painted blue? " + extra},
        ],
        "max_tokens": 4,
        "temperature": 0,
    }


def cached(sup: Supervisor, body: dict[str, Any], key: str = "") -> tuple[int, int]:
    with sup.client(timeout=120) as c:
        auth = {"Authorization": f"Bearer {key}"} if key else {}
        r = c.post("/v1/chat/completions", json=body, headers=auth)
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    return usage["prompt_tokens_details"]["cached_tokens"], usage["prompt_tokens"]


def states(sup: Supervisor) -> list[Path]:
    return sorted((sup.home.state / "kv").glob("*/*.kv"))


def unload(sup: Supervisor, model: str = "tiny-a") -> None:
    with sup.client(timeout=60) as c:
        assert c.post(f"/api/models/{model}/unload").status_code == 200


@pytest.fixture
def sup(tmp_path: Path, model_dir: Path) -> Iterator[Supervisor]:
    s = launch_on(tmp_path, "test", profile_yaml(model_dir))
    yield s
    shutdown(s)


def test_a_conversation_comes_back_after_an_unload_with_its_prefix_restored(
    sup: Supervisor,
) -> None:
    first, total = cached(sup, turn())
    assert first == 0 and total > 300
    warm, _ = cached(sup, turn("Say it again."))  # the same process: its own prefix cache
    assert warm > total // 2
    unload(sup)
    [saved] = states(sup)
    assert saved.stat().st_mode & 0o777 == 0o600 and saved.parent.stat().st_mode & 0o777 == 0o700
    back, total = cached(sup, turn("And the next one?"))  # a new process: restored from disk
    assert back >= total // 2, (back, total)
    runner_log = (sup.home.state / "logs" / "runner-tiny-a.log").read_text()
    assert "restored a saved KV cache" in runner_log
    # streamed: the usage chunk says it too
    body = {**turn("Once more."), "stream": True, "stream_options": {"include_usage": True}}
    with sup.client(timeout=120) as c:
        r = c.post("/v1/chat/completions", json=body)
    usage = [json.loads(x[6:]) for x in r.text.splitlines() if x.startswith("data: {")][-1]
    assert usage["usage"]["prompt_tokens_details"]["cached_tokens"] > 0


def test_a_prompt_that_differs_at_its_start_restores_nothing_and_a_corrupt_state_is_dropped(
    sup: Supervisor,
) -> None:
    cached(sup, turn())
    unload(sup)
    other = turn(first="Completely different words at the very start. " + HISTORY)
    assert cached(sup, other)[0] < 40  # at most the system prompt's few tokens, from its own
    unload(sup)
    for path in states(sup):  # every state on disk now broken
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    back, _ = cached(sup, turn("Still there?"))
    assert back == 0
    log = (sup.home.state / "logs" / "runner-tiny-a.log").read_text()
    assert "discarded the saved state" in log


def test_a_swap_in_one_process_and_a_restart_keep_the_conversation(
    tmp_path: Path, model_dir: Path
) -> None:
    sup = launch_on(tmp_path, "test", profile_yaml(model_dir, "memory:\n  max_loaded: 1\n"))
    try:
        cached(sup, turn())
        with sup.client(timeout=120) as c:  # tiny-b takes tiny-a's process
            b = c.post("/v1/chat/completions", json={**turn(), "model": "tiny-b"})
            assert b.status_code == 200
        # written on a thread of the runner's while tiny-b loads: the swap waits for no disk
        wait_for(lambda: states(sup), 30, "the model that went to keep its conversation")
        back, total = cached(sup, turn("After the swap?"))
        assert back >= total // 2
        with sup.client() as c:
            assert c.post("/api/shutdown", json={"timeout": 30}).status_code == 202
        sup.proc.wait(60)
        sup = launch(sup.home)  # the same home: its kv/ folder
        back, total = cached(sup, turn("After the restart?"))
        assert back >= total // 2
    finally:
        shutdown(sup)


def test_another_n_ctx_restores_nothing_and_the_cap_keeps_the_folder_small(
    tmp_path: Path, model_dir: Path
) -> None:
    profile = profile_yaml(model_dir)
    sup = launch_on(tmp_path, "test", profile)
    try:
        cached(sup, turn())
        unload(sup)
        [one] = states(sup)
        size = one.stat().st_size
        # n_ctx changes what the cache is: nothing of the old one is restored
        path = sup.home.root / "profiles" / "test.yaml"
        path.write_text(profile.replace("n_ctx: 4096", "n_ctx: 3584", 1)
                        + f"kv_cache:\n  max_size: {int(size * 1.5)}\n")  # fmt: skip
        with sup.client() as c:
            assert c.post("/api/profiles/reload").json()["ok"]
        assert cached(sup, turn("Again?"))[0] == 0
        unload(sup)  # a second state, in the new n_ctx's folder: over the cap with the first
        kept = states(sup)
        assert len(kept) == 1 and kept[0] != one, kept
        wait_for(lambda: not one.exists(), 5, "the oldest state to go")
    finally:
        shutdown(sup)


def test_llama_server_says_its_cached_tokens_and_keeps_interleaved_conversations_apart(
    tmp_path: Path, model_dir: Path
) -> None:
    """llama-server's own prefix cache, its slot chosen by the prompt's likeness (two
    conversations over ``parallel: 2`` do not evict each other), counted in usage as it is
    on llama-cpp-python: plain and streamed."""
    yaml = profile_yaml(model_dir, **{"tiny-a": "backend: llama-server\nparallel: 2"})
    sup = launch_on(tmp_path, "test", yaml)
    try:
        one = turn()
        two = turn(first="Another history altogether: " + HISTORY.replace("blue", "red"))
        assert cached(sup, one)[0] == 0 and cached(sup, two)[0] < 40
        for n in range(2):  # A, B, A, B: each comes back to its own slot
            back_one, total_one = cached(sup, turn(f"Turn {n}."))
            two["messages"][-1]["content"] = f"Which is red? Turn {n}."
            back_two, total_two = cached(sup, two)
            assert back_one >= total_one // 2 and back_two >= total_two // 2
        body = {**turn("Streamed."), "stream": True, "stream_options": {"include_usage": True}}
        with sup.client(timeout=120) as c:
            r = c.post("/v1/chat/completions", json=body)
        usage = [json.loads(x[6:]) for x in r.text.splitlines() if x.startswith("data: {")][-1]
        assert usage["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    finally:
        shutdown(sup)


def test_llama_server_keeps_a_conversation_across_an_unload(
    tmp_path: Path, model_dir: Path
) -> None:
    yaml = profile_yaml(model_dir, **{"tiny-a": "backend: llama-server"})
    sup = launch_on(tmp_path, "test", yaml)
    try:
        cached(sup, turn())
        unload(sup)
        saved = sorted((sup.home.state / "kv" / "slots").glob("*.bin"))
        assert len(saved) == 1 and saved[0].stat().st_mode & 0o777 == 0o600
        other = turn(first="Completely different words at the very start. " + HISTORY)
        assert cached(sup, other)[0] < 40  # shares nothing useful: nothing restored
        back, total = cached(sup, turn("Back again?"))  # a slot of its own: restored
        assert back >= total // 2, (back, total)
        assert "restored a saved KV cache into slot" in sup.log()
    finally:
        shutdown(sup)


@pytest.mark.parametrize("backend", ["llama-cpp-python", "llama-server"])
def test_a_saved_conversation_is_restored_for_the_key_that_made_it_unless_shared(
    tmp_path: Path, model_dir: Path, backend: str
) -> None:
    """Another key's prompt with the same words restores nothing of key A's saved state (its
    speed would tell what A asked); A's own next turn does; ``kv_cache: {shared: true}``
    restores one key's conversation for another."""
    yaml = profile_yaml(model_dir, **{"tiny-a": f"backend: {backend}"})
    sup = launch_on(tmp_path, "test", yaml)
    try:
        a, b = make_key(sup, "alice"), make_key(sup, "bob")
        cached(sup, turn(), a)
        unload(sup)
        assert cached(sup, turn("Bob asks."), b)[0] < 40  # A's words, B's key: computed
        unload(sup)  # B's own state kept beside A's
        back, total = cached(sup, turn("Alice again."), a)
        assert back >= total // 2, (back, total)
        if backend == "llama-server":  # a runner that served two keys: its slots are no one's
            before = list((sup.home.state / "kv" / "slots").glob("*.bin"))
            cached(sup, turn("Bob again."), b)
            unload(sup)
            assert sorted((sup.home.state / "kv" / "slots").glob("*.bin")) == sorted(before)
            assert "its slots are not saved: it served 2 keys" in sup.log()
            return
        path = sup.home.root / "profiles" / "test.yaml"
        path.write_text(yaml + "kv_cache:\n  shared: true\n")
        with sup.client() as c:
            assert c.post("/api/profiles/reload").json()["ok"]
        cached(sup, turn("Alice, shared."), a)  # the states made from now are everyone's
        unload(sup)
        back, total = cached(sup, turn("Bob, shared."), b)
        assert back >= total // 2, (back, total)
    finally:
        shutdown(sup)


def test_an_idle_unload_keeps_the_conversation_and_a_changed_file_restores_nothing(
    tmp_path: Path, model_dir: Path
) -> None:
    """``ttl: 1``: the model goes when idle, its conversation kept, and comes back restored.
    Its file then changes (a new download in its place): the next load restores nothing of
    the old cache, and the old file's states are removed as the new one's are saved."""
    models = tmp_path / "models"
    shutil.copytree(model_dir, models)
    sup = launch_on(tmp_path, "test", profile_yaml(models, **{"tiny-a": "ttl: 1"}))

    def gone() -> bool:
        return sup.model("tiny-a")["state"] != "ready"

    try:
        cached(sup, turn())
        wait_for(lambda: gone() and states(sup), 60, "the idle model to go, its state kept")
        [old] = states(sup)
        back, total = cached(sup, turn("After its idle time?"))
        assert back >= total // 2, (back, total)
        wait_for(gone, 60, "the idle model to go again")
        path = models / "tiny-a.gguf"
        path.write_bytes(path.read_bytes())  # the same bytes, a new file: another model
        assert cached(sup, turn("And with the new file?"))[0] == 0
        wait_for(lambda: gone() and not old.parent.exists(), 60,
                 "the old file's states to be removed as the new one's are saved")  # fmt: skip
        assert states(sup) and all(p.parent != old.parent for p in states(sup))
    finally:
        shutdown(sup)
