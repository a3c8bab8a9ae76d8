"""A hundred users at once on the shipped settings (issue 26).

SmolLM2 on the default backend (llama-server, as profiles/default.yaml has it) and Gemma 3
270M on llama-cpp-python, both with every setting left at its default (``parallel: 1``, no
``max_queue``, ``memory.queue`` as shipped). 100 clients start at once, half per model, and
each sends 2 streamed 16-token completions one after the other: 200 requests, 100 of them
waiting at the start. A client that gets 429 or 503 counts it as *refused* and does not ask
again. Reported: served, refused, lost (no ``[DONE]``, a dropped connection), other errors,
latency p50 and p99 (request to ``[DONE]``), and the supervisor's RSS after the run. Goal:
200 served, 0 refused, 0 lost. Before issue 26 the queue held 32 per model: 73 of 200 were
turned away with 503.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import psutil

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

CLIENTS = 100
EACH = 2


def run(cache: Path) -> tuple[list[str], bool]:
    smol, gemma = model_file(cache, "smollm2"), model_file(cache, "gemma3-270m")
    profile = profile_text(
        {
            "smollm2": model(smol, 2048, preload=True, backend="llama-server"),
            "gemma": model(gemma, 2048, preload=True),
        }
    )
    with supervisor(profile) as sup:
        sup.wait_ready("smollm2", "gemma")
        counts, latency, elapsed = asyncio.run(_load(sup))
        rss = psutil.Process(sup.proc.pid).memory_info().rss
    served = counts["served"]
    ok = served == CLIENTS * EACH and counts["refused"] == counts["lost"] == 0
    rows = [
        "| clients × requests | served | refused (429/503) | lost | other | p50 | p99 | time "
        "| supervisor RSS | goal: all served, 0 refused, 0 lost |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        f"| {CLIENTS} × {EACH} | {served} | {counts['refused']} | {counts['lost']} "
        f"| {counts['other']} | {percentile(latency, 50):.1f} s | {percentile(latency, 99):.1f} s "
        f"| {elapsed:.0f} s | {rss / 2**20:.0f} MiB | {verdict(ok)} |",
    ]
    print(rows[-1], flush=True)
    return rows, ok


async def _load(sup: Sup) -> tuple[dict[str, int], list[float], float]:
    counts = {"served": 0, "refused": 0, "lost": 0, "other": 0}
    latency: list[float] = []
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    start = time.perf_counter()

    async def client(i: int, c: httpx.AsyncClient) -> None:
        for n in range(EACH):
            got = await streamed_completion(c, question(i, n, ("smollm2", "gemma")[i % 2]))
            if got.kind == "503" or got.detail.startswith("429"):
                counts["refused"] += 1
                return
            kind = {"error_event": "lost", "5xx": "other"}.get(got.kind, got.kind)
            counts[kind] += 1
            if kind == "served":
                latency.append(got.seconds)

    async with httpx.AsyncClient(
        base_url=sup.url, headers=sup.headers, timeout=900, limits=limits
    ) as c:
        await asyncio.gather(*(client(i, c) for i in range(CLIENTS)))
    return counts, latency, time.perf_counter() - start
