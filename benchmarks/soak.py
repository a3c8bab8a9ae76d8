"""A soak: 32 clients over two models for 10 minutes, with faults in the middle (issue 16).

SmolLM2 on the llama-server backend (parallel 4) and Gemma 3 270M on the llama-cpp-python
backend, both loaded; 32 clients (16 per model) send streamed 16-token completions one after
another. On the way:

- at 25 % a profile switch to a copy of the profile in which SmolLM2's n_ctx differs (so its
  runner is replaced while its clients keep asking; Gemma's is kept);
- at 50 % ``kill -9`` of Gemma's runner;
- at 75 % ``kill -STOP`` of SmolLM2's runner (the hang detection must find it, kill it and
  start another).

Each request ends as one of: *served* (its stream ends with ``[DONE]`` after a
``finish_reason``); *ended by an error event* (a stream under way when its runner died or hung:
the documented end, an error event then ``[DONE]``); *503* (documented: a switch or a restart
holding requests back, with ``Retry-After``; the client waits that long and asks again);
*5xx* (any other); *lost* (none of these: a dropped connection, a torn stream). Latency:
request to ``[DONE]``, served requests only. The supervisor's RSS and open file descriptors are
read after a warm-up and at the end. Goal: 0 lost, 0 5xx, RSS and fds within 10 % of the start.

``SOAK_SECONDS`` shortens it (600 by default).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

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

CLIENTS = 32
SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
WARMUP = 10.0


def _profile(smol: Path, gemma: Path, smol_ctx: int) -> str:
    return profile_text(
        {
            "smollm2": model(smol, smol_ctx, preload=True, backend="llama-server", parallel=4),
            "gemma": model(gemma, 2048, preload=True),
        }
    )


def run(cache: Path) -> tuple[list[str], bool]:
    smol, gemma = model_file(cache, "smollm2"), model_file(cache, "gemma3-270m")
    with supervisor(_profile(smol, gemma, 2048)) as sup:
        (sup.profiles / "bench2.yaml").write_text(_profile(smol, gemma, 3072))
        sup.wait_ready("smollm2", "gemma")
        counts, lat, samples, faults, elapsed = asyncio.run(_soak(sup))
        log = (sup.home / "state" / "logs" / "supervisor.log").read_text().splitlines()
        said = [ln.split(" ", 2)[2] for ln in log if " WARNING " in ln or " ERROR " in ln]
    start, end = samples[0], samples[-1]
    rss_growth = end["rss"] / start["rss"] - 1
    fd_growth = end["fds"] / start["fds"] - 1
    ok = (
        counts["lost"] == counts["5xx"] == 0
        and counts["served"] > 0
        and rss_growth <= 0.10
        and fd_growth <= 0.10
    )
    rows = [
        f"{CLIENTS} clients, {elapsed:.0f} s, SmolLM2 (llama-server, parallel 4) and Gemma 3 "
        "(llama-cpp-python), streamed 16-token completions; faults: " + "; ".join(faults),
        "",
        "| served | ended by an error event | 503 (documented) | 5xx | lost | p50 | p99 "
        "| goal: 0 lost, 0 5xx |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
        f"| {counts['served']} ({counts['served'] / elapsed:.1f}/s) | {counts['error_event']} "
        f"| {counts['503']} | {counts['5xx']} | {counts['lost']} | {percentile(lat, 50):.2f} s "
        f"| {percentile(lat, 99):.2f} s | {verdict(counts['lost'] == counts['5xx'] == 0)} |",
        "",
        "| supervisor | after the warm-up | at the end | growth | goal ≤ 10 % |",
        "|---|---:|---:|---:|---|",
        f"| RSS | {start['rss'] / 2**20:.1f} MiB | {end['rss'] / 2**20:.1f} MiB "
        f"| {rss_growth:+.1%} | {verdict(rss_growth <= 0.10)} |",
        f"| open file descriptors | {start['fds']} | {end['fds']} | {fd_growth:+.1%} "
        f"| {verdict(fd_growth <= 0.10)} |",
        "",
        "Other errors (4xx but 503): "
        + (json.dumps(counts["other"]) if counts["other"] else "none"),
        "",
        "The slowest served: " + "; ".join(counts["slowest"]),
        "",
        "Lost, and why (the first 5): " + (json.dumps(counts["lost_why"][:5]) or "none"),
        "",
        "What the supervisor's log said of the faults (its warnings and errors, the first 12):",
        "",
        *(f"- `{line[:300]}`" for line in said[:12]),
    ]
    for row in rows:
        print(row, flush=True)
    return rows, ok


async def _soak(
    sup: Sup,
) -> tuple[dict[str, Any], list[float], list[dict[str, int]], list[str], float]:
    counts: dict[str, Any] = {  # "slowest" is added at the end
        "served": 0, "error_event": 0, "503": 0, "5xx": 0, "lost": 0, "other": {}, "lost_why": [],
    }  # fmt: skip
    latency: list[float] = []
    slow: list[tuple[float, str, float]] = []
    samples: list[dict[str, int]] = []
    faults: list[str] = []
    me = psutil.Process(sup.proc.pid)
    limits = httpx.Limits(max_connections=CLIENTS * 2, max_keepalive_connections=CLIENTS * 2)
    start = time.perf_counter()
    stop_at = start + SECONDS

    def sample() -> None:
        samples.append({"rss": me.memory_info().rss, "fds": me.num_fds()})

    async def client(i: int, c: httpx.AsyncClient) -> None:
        name = ("smollm2", "gemma")[i % 2]
        n = 0
        while time.perf_counter() < stop_at:
            n += 1
            at = time.perf_counter() - start
            got = await streamed_completion(c, question(i, n, name))
            if got.kind == "other":
                counts["other"][got.detail] = counts["other"].get(got.detail, 0) + 1
                continue
            counts[got.kind] += 1
            if got.kind == "503":  # documented: wait as long as it says, then ask again
                await asyncio.sleep(float(got.detail))
            elif got.kind == "served":
                latency.append(got.seconds)
                slow.append((got.seconds, name, at))
            elif got.kind == "lost":
                counts["lost_why"].append(f"{name} at {at:.0f} s: {got.detail}")

    async def chaos(c: httpx.AsyncClient) -> None:
        await asyncio.sleep(WARMUP)
        sample()
        await asyncio.sleep(max(0.0, start + SECONDS * 0.25 - time.perf_counter()))
        path = str(sup.profiles / "bench2.yaml")
        t = time.perf_counter()
        async with c.stream("POST", "/api/profiles/switch", json={"path": path}) as r:
            last = ""
            async for line in r.aiter_lines():
                last = line or last
        outcome = json.loads(last).get("event", "?")
        faults.append(
            f"profile switch at {t - start:.0f} s ({outcome}, {time.perf_counter() - t:.1f} s)"
        )
        for at, name, sig in ((0.5, "gemma", signal.SIGKILL), (0.75, "smollm2", signal.SIGSTOP)):
            await asyncio.sleep(max(0.0, start + SECONDS * at - time.perf_counter()))
            pid = next(m["pid"] for m in (await c.get("/api/status")).json()["models"]
                       if m["name"] == name)  # fmt: skip
            os.kill(pid, sig)
            faults.append(
                f"kill -{sig.name[3:]} of {name}'s runner at {time.perf_counter() - start:.0f} s"
            )

    async with httpx.AsyncClient(
        base_url=sup.url, headers=sup.headers, timeout=300, limits=limits
    ) as c:
        await asyncio.gather(chaos(c), *(client(i, c) for i in range(CLIENTS)))
    sample()
    counts["slowest"] = [
        f"{name} asked at {at:.0f} s: {took:.1f} s" for took, name, at in sorted(slow)[-5:]
    ]
    return counts, latency, samples, faults, time.perf_counter() - start
