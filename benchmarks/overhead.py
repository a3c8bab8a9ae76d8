"""What the supervisor adds between a client and llama.cpp (issue 6, lines 1 and 2).

Both paths hit the *same* runner process: the supervisor's own runner, whose port and key the
benchmark reads from its command line. Requests alternate direct / supervisor, so drift in
the machine's speed falls on both alike.

1. Streaming tokens/s: SmolLM2 streams 128 tokens (end-of-text biased away); tokens ÷ time
   from sending the request to ``[DONE]``; 10 each, alternated; the median of the ratios of
   neighbouring runs. Goal: supervisor ÷ direct ≥ 0.98.
2. Added latency: a 1-token completion on the tiny random-weight model (so llama.cpp's own
   time is ~1 ms and its jitter does not swamp ours), 400 each after 40 warm-up; added =
   supervisor's percentile − direct's. Goal: p50 ≤ 2 ms, p99 ≤ 10 ms.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from ._harness import (
    Sup,
    median,
    model,
    model_file,
    profile_text,
    stream_tokens,
    supervisor,
    tails,
    tiny_model,
    verdict,
)

STREAM_RUNS = 10
LATENCY_RUNS = 400


def run(cache: Path) -> tuple[list[str], bool]:
    smol, tiny = model_file(cache, "smollm2"), tiny_model(cache)
    profile = profile_text(
        {
            "smollm2": model(smol, 2048, preload=True, pinned=True),
            "tiny": model(tiny, 512, preload=True, pinned=True),
        }
    )
    with supervisor(profile) as sup:
        sup.wait_ready("smollm2", "tiny")
        stream_ratio, sup_tps, direct_tps = _streaming(sup)
        lat = _latency(sup)
    ok1 = stream_ratio >= 0.98
    added50, added99 = lat["sup50"] - lat["dir50"], lat["sup99"] - lat["dir99"]
    ok2 = added50 <= 2.0 and added99 <= 10.0
    rows = [
        "### 1. Streaming tokens/s, supervisor ÷ direct (SmolLM2, 128 tokens, same runner)",
        "",
        "| through the supervisor | direct to the runner | ratio | goal ≥ 0.98 |",
        "|---:|---:|---:|---|",
        f"| {sup_tps:.1f} tok/s | {direct_tps:.1f} tok/s | {stream_ratio:.3f} | {verdict(ok1)} |",
        "",
        "### 2. Added latency of a small non-streaming request (tiny model, 1 token)",
        "",
        "| | direct | supervisor | added | goal |",
        "|---|---:|---:|---:|---|",
        f"| p50 | {lat['dir50']:.2f} ms | {lat['sup50']:.2f} ms | {added50:+.2f} ms "
        f"| ≤ 2 ms: {verdict(added50 <= 2.0)} |",
        f"| p99 | {lat['dir99']:.2f} ms | {lat['sup99']:.2f} ms | {added99:+.2f} ms "
        f"| ≤ 10 ms: {verdict(added99 <= 10.0)} |",
    ]
    print("\n".join(rows), flush=True)
    return rows, ok1 and ok2


def _streaming(sup: Sup) -> tuple[float, float, float]:
    url, headers, _ = sup.runner("smollm2")
    body = {
        "model": "smollm2",
        "prompt": "Write a long story about a lighthouse keeper.",
        "max_tokens": 128,
        "temperature": 0.0,
        "logit_bias": {"2": -100.0},  # SmolLM2's end-of-text: always 128 tokens
    }
    times: dict[str, list[float]] = {"sup": [], "direct": []}
    with httpx.Client(timeout=300) as direct, sup.client() as via:
        for i in range(STREAM_RUNS * 2 + 2):
            which = "sup" if i % 2 else "direct"
            if which == "sup":
                took, events = stream_tokens(via, "/v1/completions", body)
            else:
                took, events = stream_tokens(direct, url + "/v1/completions", body, headers)
            if i >= 2:  # the first pair warms both paths up
                times[which].append(128 / took)
            assert events >= 100, events
    # the machine's speed drifts (a shared VM): compare each run with its neighbour
    ratios = [s / d for s, d in zip(times["sup"], times["direct"], strict=True)]
    return median(ratios), median(times["sup"]), median(times["direct"])


def _latency(sup: Sup) -> dict[str, float]:
    url, headers, _ = sup.runner("tiny")
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 1, "temperature": 0.0}
    ms: dict[str, list[float]] = {"sup": [], "direct": []}
    with httpx.Client(timeout=60) as direct, sup.client() as via:
        for i in range(2 * (LATENCY_RUNS + 40)):
            which = "sup" if i % 2 else "direct"
            t = time.perf_counter()
            if which == "sup":
                r = via.post("/v1/completions", json=body)
            else:
                r = direct.post(url + "/v1/completions", json=body, headers=headers)
            took = (time.perf_counter() - t) * 1000
            r.raise_for_status()
            if i >= 80:
                ms[which].append(took)
    return tails(ms)
