"""What a key costs on the hot path (issue 29): the door's check (its digest, compared in
constant time), its scope and model list, its counters (rpm, tpm, in flight) and its row in
the usage log, against the operator's token on the same supervisor.

A 1-token completion on the tiny random-weight model, 400 each after 40 warm-up, alternated
operator / key so drift in the machine's speed falls on both alike; added = the key's
percentile − the operator's. Goal: p50 ≤ 0.2 ms.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from ._harness import model, profile_text, supervisor, tails, tiny_model, verdict

RUNS = 400


def run(cache: Path) -> tuple[list[str], bool]:
    tiny = tiny_model(cache)
    profile = profile_text({"tiny": model(tiny, 512, preload=True, pinned=True)})
    with supervisor(profile) as sup:
        sup.wait_ready("tiny")
        with sup.client() as c:
            made = c.post("/api/keys", json={
                "name": "bench", "models": ["tiny"],
                "limits": {"rpm": 1_000_000, "tpm": 1_000_000_000, "max_parallel": 64},
            })  # fmt: skip
            made.raise_for_status()
            key = made.json()["key"]
        body = {"model": "tiny", "prompt": "hi", "max_tokens": 1, "temperature": 0.0}
        ms: dict[str, list[float]] = {"key": [], "operator": []}
        with (
            sup.client() as op,
            httpx.Client(
                base_url=sup.url, timeout=60, headers={"Authorization": f"Bearer {key}"}
            ) as k,
        ):
            for i in range(2 * (RUNS + 40)):
                which, c = ("key", k) if i % 2 else ("operator", op)
                t = time.perf_counter()
                r = c.post("/v1/completions", json=body)
                took = (time.perf_counter() - t) * 1000
                r.raise_for_status()
                if i >= 80:
                    ms[which].append(took)
    q = tails({"sup": ms["key"], "direct": ms["operator"]})
    lat = {"key50": q["sup50"], "key99": q["sup99"], "op50": q["dir50"], "op99": q["dir99"]}
    added50, added99 = lat["key50"] - lat["op50"], lat["key99"] - lat["op99"]
    ok = added50 <= 0.2
    rows = [
        "A 1-token completion on the tiny model, the operator's token against a key with a",
        "model list and rpm, tpm and in-flight limits (counted, never reached); 400 each,",
        "alternated.",
        "",
        "| | operator's token | a key with limits | added | goal |",
        "|---|---:|---:|---:|---|",
        f"| p50 | {lat['op50']:.2f} ms | {lat['key50']:.2f} ms | {added50:+.2f} ms "
        f"| ≤ 0.2 ms: {verdict(ok)} |",
        f"| p99 | {lat['op99']:.2f} ms | {lat['key99']:.2f} ms | {added99:+.2f} ms | |",
    ]
    print("\n".join(rows), flush=True)
    return rows, ok
