"""A response cache hit (issue 19): a deterministic chat request whose answer is ~1 KB (the
tiny model, 1000 tokens of printable bytes), asked once (a miss: the runner answers) and then
300 times (hits: the supervisor answers from cache.db). Goal: p50 ≤ 5 ms."""

from __future__ import annotations

import time
from pathlib import Path

from ._harness import percentile, profile_text, supervisor, tiny_model, verdict

RUNS = 300
ASK = {"model": "tiny", "max_tokens": 1000, "temperature": 0,
       "messages": [{"role": "user", "content": "Tell me a long story."}]}  # fmt: skip


def run(cache: Path) -> tuple[list[str], bool]:
    profile = profile_text(
        {"tiny": {"path": str(tiny_model(cache)), "n_ctx": 2048, "preload": True}},
        cache={"ttl": "1h", "max_size": "64MiB"},
    )
    with supervisor(profile) as sup, sup.client() as c:
        sup.wait_ready("tiny")
        t = time.perf_counter()
        miss = c.post("/v1/chat/completions", json=ASK)
        miss_ms = (time.perf_counter() - t) * 1000
        assert miss.headers["X-Smackctl-Cache"] == "miss", miss.text
        size = len(miss.json()["choices"][0]["message"]["content"])
        ms = []
        for _ in range(RUNS):
            t = time.perf_counter()
            r = c.post("/v1/chat/completions", json=ASK)
            ms.append((time.perf_counter() - t) * 1000)
            assert r.headers["X-Smackctl-Cache"] == "hit"
    p50, p99 = percentile(ms, 50), percentile(ms, 99)
    ok = p50 <= 5.0
    rows = [
        "| answer | the miss (the runner) | hit p50 | hit p99 | goal p50 ≤ 5 ms |",
        "|---:|---:|---:|---:|---|",
        f"| {size} characters | {miss_ms:.1f} ms | {p50:.2f} ms | {p99:.2f} ms | {verdict(ok)} |",
    ]
    print("\n".join(rows), flush=True)
    return rows, ok
