"""The response cache on a real supervisor and real runners: deterministic requests replayed
byte for byte (plain and streamed), never another model file or other load parameters,
opt-outs honoured, TTL and size eviction on real SQLite."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from smackctl.daemon.cache import Cache

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
            assert 'smackctl_cache_total{result="hit"} 3.0' in c.get("/metrics").text
        stats = smackctl(home, "cache", "stats")
        assert stats.returncode == 0 and "3 hit(s)" in stats.stdout and "tiny-a" in stats.stdout
        cleared = smackctl(home, "cache", "clear", "tiny-a")
        assert cleared.returncode == 0 and "cleared 3 entries" in cleared.stdout
        with sup.client(timeout=60) as c:
            assert (
                c.post(PATH, json={**ASK, "model": "tiny-a"}).headers["X-Smackctl-Cache"] == "miss"
            )
    finally:
        shutdown(sup)


def test_entries_expire_and_the_oldest_go_past_the_size(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache.db")
    cache.put("old", "m", b"x" * 400, "application/json", ttl=3600, max_size=1000)
    cache.put("gone", "m", b"y" * 10, "application/json", ttl=0, max_size=1000)
    time.sleep(0.01)  # a clock step for the TTL (not synchronisation): 0 s has passed
    assert cache.get("gone") is None and cache.get("old") is not None
    cache.put("mid", "m", b"z" * 400, "application/json", ttl=3600, max_size=1000)
    cache.put("new", "n", b"w" * 400, "application/json", ttl=3600, max_size=1000)
    assert cache.get("old") is None  # 1200 bytes > 1000: the oldest went
    assert cache.get("mid") is not None and cache.get("new") is not None
    st = cache.stats()
    assert st["entries"] == 2 and st["bytes"] == 800 and st["hits"] == 3 and st["misses"] == 2
    assert cache.clear("n") == 1 and cache.stats()["entries"] == 1
    cache.close()
    again = Cache(tmp_path / "cache.db")  # kept across restarts, in SQLite
    assert again.get("mid") == (b"z" * 400, "application/json")
    again.close()
