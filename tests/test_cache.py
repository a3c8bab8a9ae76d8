"""The response cache on a real supervisor and real runners: deterministic requests replayed
byte for byte (plain and streamed), never another model file or other load parameters,
never another request (each field that changes the answer is in the key, the profile's
defaults and stream options included), opt-outs honoured, TTL, size and entry caps on real
SQLite, a damaged cache.db set aside, the file private."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from smackctl.config import CacheSettings
from smackctl.daemon.gateway.cache import Cache, kept_stream

from conftest import Home, launch, shutdown, smackctl

PATH = "/v1/chat/completions"
ASK = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 12, "temperature": 0}


def _served(c: httpx.Client, name: str) -> int:
    return next(m for m in c.get("/api/status").json()["models"] if m["name"] == name)[
        "requests_served"
    ]


def test_deterministic_answers_are_replayed_and_nothing_else_is(
    home: Home, model_dir: Path
) -> None:
    a = model_dir / "tiny-a.gguf"
    (home.root / "profiles" / "test.yaml").write_text(
        "name: test\ncache:\n  ttl: 1h\n  max_size: 1MiB\nmodels:\n"
        f"  tiny-a:\n    path: {a}\n    n_ctx: 1024\n    threads: 1\n"
        f"  tiny-a2:\n    path: {a}\n    n_ctx: 2048\n    threads: 1\n"  # same file, other n_ctx
        f"  tiny-c:\n    path: {model_dir / 'tiny-c.gguf'}\n    n_ctx: 1024\n    threads: 1\n"
        f"  off:\n    path: {a}\n    n_ctx: 1024\n    threads: 1\n    cache: false\n"
        f"  backed:\n    path: {a}\n    n_ctx: 1536\n    threads: 1\n    fallbacks: [tiny-c]\n"
    )
    sup = launch(home)
    try:
        with sup.client(timeout=60) as c:
            first = c.post(PATH, json={**ASK, "model": "tiny-a"})
            again = c.post(PATH, json={**ASK, "model": "tiny-a"})
            assert first.headers["X-Smackctl-Cache"] == "miss"
            assert again.headers["X-Smackctl-Cache"] == "hit"
            assert again.content == first.content  # byte for byte
            assert _served(c, "tiny-a") == 1  # the runner answered once
            # streamed: kept as its stream and replayed as it was
            with c.stream("POST", PATH, json={**ASK, "model": "tiny-a", "stream": True}) as r:
                assert r.headers["X-Smackctl-Cache"] == "miss"
                streamed = r.read()
            with c.stream("POST", PATH, json={**ASK, "model": "tiny-a", "stream": True}) as r:
                assert r.headers["X-Smackctl-Cache"] == "hit"
                assert r.headers["content-type"].startswith("text/event-stream")
                assert r.read() == streamed and streamed.endswith(b"data: [DONE]\n\n")
            # never another file, never other load parameters
            for other in ("tiny-c", "tiny-a2"):
                r = c.post(PATH, json={**ASK, "model": other})
                assert r.headers["X-Smackctl-Cache"] == "miss", other
            # not cached: sampled answers, an opt-out, a model kept out
            sampled = c.post(PATH, json={**ASK, "model": "tiny-a", "temperature": 0.8})
            assert "X-Smackctl-Cache" not in sampled.headers
            seeded = {**ASK, "model": "tiny-a", "temperature": 0.8, "seed": 7}
            c.post(PATH, json=seeded)
            assert c.post(PATH, json=seeded).headers["X-Smackctl-Cache"] == "hit"
            served = _served(c, "tiny-a")
            r = c.post(PATH, json={**ASK, "model": "tiny-a"}, headers={"Cache-Control": "no-cache"})
            assert "X-Smackctl-Cache" not in r.headers and _served(c, "tiny-a") == served + 1
            assert "X-Smackctl-Cache" not in c.post(PATH, json={**ASK, "model": "off"}).headers
            # a local model with fallbacks goes through a chain, and its cache with it
            first = c.post(PATH, json={**ASK, "model": "backed"})
            again = c.post(PATH, json={**ASK, "model": "backed"})
            assert first.status_code == 200, first.text
            assert first.headers["X-Smackctl-Deployment"] == "backed"
            assert (first.headers["X-Smackctl-Cache"], again.headers["X-Smackctl-Cache"]) == (
                "miss", "hit",
            )  # fmt: skip
            assert again.content == first.content and _served(c, "backed") == 1
            assert 'smackctl_cache_total{result="hit"} 4.0' in c.get("/metrics").text
        stats = smackctl(home, "cache", "stats")
        assert stats.returncode == 0 and "4 hit(s)" in stats.stdout and "tiny-a" in stats.stdout
        cleared = smackctl(home, "cache", "clear", "tiny-a")
        assert cleared.returncode == 0 and "cleared 3 entries" in cleared.stdout
        with sup.client(timeout=60) as c:
            assert (
                c.post(PATH, json={**ASK, "model": "tiny-a"}).headers["X-Smackctl-Cache"] == "miss"
            )
    finally:
        shutdown(sup)


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def test_entries_expire_and_the_oldest_go_past_the_size(tmp_path: Path) -> None:
    clock = Clock()
    cache = Cache(tmp_path / "cache.db", now=clock)
    small = CacheSettings(ttl=3600, max_size=1000)
    cache.put("old", "m", b"x" * 400, "application/json", small)
    cache.put("gone", "m", b"y" * 10, "application/json", CacheSettings(ttl=0, max_size=1000))
    clock.t += 0.01
    assert cache.get("gone") is None and cache.get("old") is not None
    cache.put("mid", "m", b"z" * 400, "application/json", small)
    cache.put("new", "n", b"w" * 400, "application/json", small)
    assert cache.get("old") is None  # 1200 bytes > 1000: the oldest went
    assert cache.get("mid") is not None and cache.get("new") is not None
    st = cache.stats()
    assert st["entries"] == 2 and st["bytes"] == 800 and st["hits"] == 3 and st["misses"] == 2
    assert cache.clear("n") == 1 and cache.stats()["entries"] == 1
    cache.close()
    again = Cache(tmp_path / "cache.db", now=clock)  # kept across restarts, in SQLite
    assert again.get("mid") == (b"z" * 400, "application/json")
    again.close()


def _rows(path: Path) -> set[str]:
    """The keys in the file, expired or not, as another reader of it sees them."""
    db = sqlite3.connect(path)
    try:
        return {k for (k,) in db.execute("SELECT key FROM entries")}
    finally:
        db.close()


def test_expired_entries_are_purged_at_open_and_when_read(tmp_path: Path) -> None:
    clock, path = Clock(), tmp_path / "cache.db"
    cache = Cache(path, now=clock)
    for key, ttl in (("a", 10), ("b", 10), ("c", 1000)):
        cache.put(key, "m", b"x", "application/json", CacheSettings(ttl=ttl))
    clock.t += 20
    assert cache.get("a") is None
    assert _rows(path) == {"b", "c"}  # the entry read expired: gone
    clock.t += 60
    assert cache.get("c") is not None
    assert _rows(path) == {"c"}  # and once a minute, a read purges every expired one
    cache.put("d", "m", b"x", "application/json", CacheSettings(ttl=10))
    cache.close()
    clock.t += 20
    Cache(path, now=clock).close()
    assert _rows(path) == {"c"}  # and so does an open, with no read or write


def test_an_entry_past_its_cap_is_not_kept(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache.db")
    capped = CacheSettings(max_entry=100)
    assert cache.put("small", "m", b"x" * 100, "application/json", capped)
    assert not cache.put("large", "m", b"x" * 101, "application/json", capped)
    assert cache.get("large") is None and cache.get("small") is not None
    assert CacheSettings.model_validate({"max_entry": "2MiB"}).max_entry == 2 * 1024**2
    cache.close()


def test_the_file_is_the_users_alone_whatever_the_umask(tmp_path: Path) -> None:
    def mode(f: Path) -> int:
        return stat.S_IMODE(f.stat().st_mode)

    old = os.umask(0o022)
    try:
        cache = Cache(tmp_path / "cache.db")
        cache.put("k", "m", b"x", "application/json", CacheSettings())
        assert mode(tmp_path / "cache.db") == 0o600
        assert mode(tmp_path / "cache.db-wal") == 0o600  # SQLite gives it the file's mode
        cache.close()
        loose = tmp_path / "loose.db"  # one an older smackctl made, 0644
        loose.touch(0o644)
        Cache(loose).close()
        assert mode(loose) == 0o600
    finally:
        os.umask(old)


def test_a_damaged_file_is_set_aside_and_the_cache_keeps_working(tmp_path: Path) -> None:
    path, notices = tmp_path / "cache.db", []
    junk = b"not a database: what a crash mid-copy left\n" * 100
    path.write_bytes(junk)
    cache = Cache(path, on_notice=notices.append)
    assert cache.put("k", "m", b"x", "application/json", CacheSettings())
    assert cache.get("k") == (b"x", "application/json")
    (aside,) = tmp_path.glob("cache.db.corrupt-*")
    assert aside.read_bytes() == junk  # kept, byte for byte
    assert len(notices) == 1 and "could not be read" in notices[0] and "kept as" in notices[0]
    # damaged while in use: pages in the middle of the table, found by a read
    for i in range(400):
        cache.put(f"k{i}", "m", os.urandom(2000), "application/json", CacheSettings())
    cache.close()
    raw = bytearray(path.read_bytes())
    raw[8 * 4096 : 40 * 4096] = b"\xa5" * (32 * 4096)
    path.write_bytes(bytes(raw))
    cache = Cache(path, on_notice=notices.append)
    assert [cache.get(f"k{i}") for i in range(400)].count(None) > 0  # misses, never raises
    assert len(notices) == 2 and len(list(tmp_path.glob("cache.db.corrupt-*"))) >= 1
    assert cache.put("after", "m", b"y", "application/json", CacheSettings())
    assert cache.get("after") == (b"y", "application/json")
    cache.close()


# -- the key: every field that changes the answer ----------------------------------------------

BASE: dict[str, Any] = {
    "messages": [{"role": "user", "content": "hello"}],
    "temperature": 0,
    "stream": True,
}
#: one change each, each changing the answer (or, for stream_options, its events)
CHANGED = {
    "messages": {"messages": [{"role": "user", "content": "goodbye"}]},
    "a system message": {"messages": [{"role": "system", "content": "terse"}, *BASE["messages"]]},
    "tools": {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
    "tool_choice": {"tool_choice": "none"},
    "response_format": {"response_format": {"type": "json_object"}},
    "stream_options": {"stream_options": {"include_usage": True}},
    "max_tokens": {"max_tokens": 5},
    "stop": {"stop": ["\n"]},
    "seed": {"seed": 7},
    "not streamed": {"stream": False},
}


@pytest.mark.parametrize("field", list(CHANGED))
def test_a_request_that_differs_in_one_field_has_another_key(field: str) -> None:
    base = Cache.key("/v1/chat/completions", BASE, {}, "model-identity")
    changed = Cache.key("/v1/chat/completions", {**BASE, **CHANGED[field]}, {}, "model-identity")
    assert changed != base


def test_the_key_is_the_request_the_runner_gets_with_the_profiles_defaults() -> None:
    route, identity = "/v1/chat/completions", "model-identity"
    before = Cache.key(route, BASE, {"max_tokens": 16, "top_p": None}, identity)
    assert Cache.key(route, BASE, {"max_tokens": 64}, identity) != before  # a reload raised it
    # the same request, said two ways: a field set to the default, or left to it
    assert Cache.key(route, {**BASE, "max_tokens": 16}, {"max_tokens": 16}, identity) == before
    assert Cache.key(route, {**BASE, "user": "ann"}, {"max_tokens": 16}, identity) == before
    assert Cache.key("/v1/completions", BASE, {"max_tokens": 16}, identity) != before
    assert Cache.key(route, BASE, {"max_tokens": 16}, "another-file") != before


# -- a stream is kept only when it is whole and clean --------------------------------------------

EVENT = b'data: {"choices": [{"delta": {"content": "Hi"}}]}\n\n'
ERROR = b'data: {"error": {"message": "the runner died", "code": "runner_lost"}}\n\n'


def _kept(chunks: list[bytes], max_entry: int = 1 << 20) -> list[bytes]:
    kept: list[bytes] = []

    async def source() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    async def drain() -> list[bytes]:
        return [chunk async for chunk in kept_stream(source(), kept.append, max_entry)]

    assert asyncio.run(drain()) == chunks  # the client gets every chunk as it came
    return kept


def test_a_stream_that_carried_an_error_is_never_kept_wherever_it_was_split() -> None:
    whole = EVENT + ERROR + b"data: [DONE]\n\n"
    assert _kept([EVENT, b"data: [DONE]\n\n"]) == [EVENT + b"data: [DONE]\n\n"]
    for cut in range(1, len(whole)):
        assert _kept([whole[:cut], whole[cut:]]) == [], f"split at {cut}: {whole[:cut]!r}"
    assert _kept([EVENT * 10], max_entry=len(EVENT) * 10 - 1) == []  # past its cap


# -- on a real supervisor -------------------------------------------------------------------------


def _cache_profile(home: Home, model_dir: Path, max_tokens: int) -> None:
    (home.root / "profiles" / "test.yaml").write_text(
        "name: test\ncache:\n  ttl: 1h\nmemory:\n  spare_runner: false\n"
        f"defaults:\n  max_tokens: {max_tokens}\nmodels:\n"
        f"  tiny-a:\n    path: {model_dir / 'tiny-a.gguf'}\n    n_ctx: 1024\n    threads: 1\n"
    )


def test_a_corrupt_cache_db_is_set_aside_and_requests_are_answered(
    home: Home, model_dir: Path
) -> None:
    _cache_profile(home, model_dir, 4)
    home.state.mkdir(parents=True, exist_ok=True)
    junk = b"this is not a database\n" * 100
    (home.state / "cache.db").write_bytes(junk)
    sup = launch(home)
    try:
        with sup.client(timeout=60) as c:
            first = c.post(PATH, json={**ASK, "model": "tiny-a"})
            assert first.status_code == 200, first.text
            assert first.headers["X-Smackctl-Cache"] == "miss"
            again = c.post(PATH, json={**ASK, "model": "tiny-a"})
            assert again.headers["X-Smackctl-Cache"] == "hit" and again.content == first.content
        (aside,) = home.state.glob("cache.db.corrupt-*")
        assert aside.read_bytes() == junk
        assert "the response cache" in sup.log() and "could not be read" in sup.log()
        assert any("response cache" in w for w in sup.status()["warnings"])
    finally:
        shutdown(sup)


def _usage_events(stream: bytes) -> list[str]:
    return [line for line in stream.decode().splitlines() if '"usage"' in line]


def test_a_request_is_never_answered_with_another_ones_answer(home: Home, model_dir: Path) -> None:
    """Each field of the key, end to end: one request's entry is never replayed for another
    that differs in its messages, tools, response format, stream options, or the profile's
    defaults after a reload."""
    _cache_profile(home, model_dir, 4)
    sup = launch(home)
    asked = {"messages": ASK["messages"], "temperature": 0, "model": "tiny-a"}
    try:
        with sup.client(timeout=60) as c:
            assert c.post(PATH, json=asked).headers["X-Smackctl-Cache"] == "miss"
            assert c.post(PATH, json=asked).headers["X-Smackctl-Cache"] == "hit"
            others = [
                {"messages": [{"role": "user", "content": "something else"}]},
                {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
                {"response_format": {"type": "json_object"}},
            ]
            for other in others:
                r = c.post(PATH, json={**asked, **other})
                assert r.headers.get("X-Smackctl-Cache") != "hit", other
            streamed = {**asked, "stream": True}
            with_usage = {**streamed, "stream_options": {"include_usage": True}}
            r = c.post(PATH, json=with_usage)
            assert r.headers["X-Smackctl-Cache"] == "miss" and _usage_events(r.content)
            r = c.post(PATH, json=streamed)  # did not ask for the usage event: never gets it
            assert r.headers["X-Smackctl-Cache"] == "miss" and not _usage_events(r.content)
            r = c.post(PATH, json=with_usage)
            assert r.headers["X-Smackctl-Cache"] == "hit" and _usage_events(r.content)
            # a reload raises the defaults' max_tokens: the answers cut at 4 are not served
            _cache_profile(home, model_dir, 12)
            assert c.post("/api/profiles/reload").status_code == 200
            r = c.post(PATH, json=asked)
            assert r.headers["X-Smackctl-Cache"] == "miss"
            assert c.post(PATH, json=asked).headers["X-Smackctl-Cache"] == "hit"
    finally:
        shutdown(sup)


@pytest.mark.parametrize("shared", [False, True])
def test_one_keys_cached_answers_are_its_own_unless_the_cache_is_shared(
    home: Home, model_dir: Path, shared: bool
) -> None:
    """A hit would tell one key what another asked: each key has its own entries, unless the
    profile says `cache: {shared: true}`."""
    (home.root / "profiles" / "test.yaml").write_text(
        f"name: test\ncache:\n  ttl: 1h\n  shared: {str(shared).lower()}\nmodels:\n"
        f"  tiny-a:\n    path: {model_dir / 'tiny-a.gguf'}\n    n_ctx: 1024\n    threads: 1\n"
    )
    sup = launch(home)
    try:
        ann, bob = (smackctl(home, "keys", "create", n).stdout.strip() for n in ("ann", "bob"))

        def ask(key: str) -> str:
            r = httpx.post(sup.url + PATH, json={**ASK, "model": "tiny-a"}, timeout=60,
                           headers={"Authorization": f"Bearer {key}"})  # fmt: skip
            assert r.status_code == 200, r.text
            return r.headers["X-Smackctl-Cache"]

        assert ask(ann) == "miss" and ask(ann) == "hit"
        assert ask(bob) == ("hit" if shared else "miss")
        assert ask(bob) == "hit"
    finally:
        shutdown(sup)
