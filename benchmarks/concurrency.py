"""32 concurrent clients over two models for a bounded time (issue 6, line 7).

SmolLM2 and Gemma 3 270M, both loaded; 32 clients (16 per model) each send streamed
16-token completions one after another for 30 s; then the requests in flight finish.
A request is *served* when its stream ends with ``[DONE]`` after a ``finish_reason``;
*5xx* when the supervisor answered one; *lost* when it got neither (connection dropped,
stream cut, no ``[DONE]``). Latency: request to ``[DONE]``. Goal: nothing lost, no 5xx,
p99 ≤ the 30 s window. Run twice: with the default threads (the models take turns on the
cores) and with one thread per model (side by side on 2 cores).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from smackctl.hardware import physical_cores

from ._harness import (
    Sup,
    model,
    model_file,
    percentile,
    profile_text,
    question,
    streamed_completion,
    supervisor,
    verdict,
)

CLIENTS = 32
SECONDS = 30.0


def run(cache: Path) -> tuple[list[str], bool]:
    smol, gemma = model_file(cache, "smollm2"), model_file(cache, "gemma3-270m")
    rows = [
        "| threads per model | clients | time | served | lost | 5xx | other errors | p50 | p99 "
        "| goal: 0 lost, 0 5xx, p99 ≤ 30 s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    all_ok = True
    # the default (threads = the physical cores: the models take turns on the cores), then
    # one thread each (on 2 cores: side by side)
    for threads in (None, 1):
        extra = {"threads": threads} if threads else {}
        profile = profile_text(
            {
                "smollm2": model(smol, 2048, preload=True, **extra),
                "gemma": model(gemma, 2048, preload=True, **extra),
            }
        )
        with supervisor(profile) as sup:
            sup.wait_ready("smollm2", "gemma")
            counts, lat, elapsed = asyncio.run(_load(sup))
        served, lost, fivexx = counts["served"], counts["lost"], counts["5xx"]
        other = counts["other"]
        # every request must also finish within the window's length: a queue that drains
        ok = lost == fivexx == other == 0 and served > 0 and percentile(lat, 99) <= SECONDS
        all_ok &= ok
        rows.append(
            f"| {threads or f'{physical_cores()} (default)'} | {CLIENTS} | {elapsed:.0f} s "
            f"| {served} ({served / elapsed:.1f}/s) | {lost} | {fivexx} | {other} "
            f"| {percentile(lat, 50):.2f} s | {percentile(lat, 99):.2f} s | {verdict(ok)} |"
        )
        print(rows[-1], flush=True)
    return rows, all_ok


async def _load(sup: Sup) -> tuple[dict[str, int], list[float], float]:
    counts = {"served": 0, "lost": 0, "5xx": 0, "other": 0}
    latency: list[float] = []
    limits = httpx.Limits(max_connections=CLIENTS * 2, max_keepalive_connections=CLIENTS * 2)
    start = time.perf_counter()
    stop_at = start + SECONDS

    async def client(i: int, c: httpx.AsyncClient) -> None:
        model = ("smollm2", "gemma")[i % 2]
        n = 0
        while time.perf_counter() < stop_at:
            n += 1
            got = await streamed_completion(c, question(i, n, model))
            # here an error event is a lost answer, and any 5xx counts (no fault is injected)
            kind = {"error_event": "lost", "503": "5xx"}.get(got.kind, got.kind)
            counts[kind] += 1
            if kind == "served":
                latency.append(got.seconds)

    async with httpx.AsyncClient(
        base_url=sup.url, headers=sup.headers, timeout=300, limits=limits
    ) as c:
        await asyncio.gather(*(client(i, c) for i in range(CLIENTS)))
    return counts, latency, time.perf_counter() - start
