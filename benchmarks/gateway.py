"""smackctl in front of a server elsewhere (issue 18).

A real ``llama-server`` on the tiny random-weight model stands in for the remote host (its
compute is ~1 ms, so the gateway's own cost is not lost in it). The supervisor's profile has
it as ``remote`` (``backend: openai``), and a group ``down-first`` whose first deployment is
a server that is down (nothing listens on its port; three failed health checks opened its
breaker before the benchmark starts).

1. Added latency: a 1-token non-streamed chat request, direct to llama-server and through
   smackctl, alternated, 400 each after 40 warm-up; added = smackctl's percentile − direct's.
   Goal: p50 ≤ 2 ms, p99 ≤ 10 ms.
2. Time to first byte of a streamed request through smackctl, to ``remote`` (healthy) and to
   ``down-first`` (its primary down, breaker open), alternated, 200 each; the p50s compared.
   Goal: ≤ 5 ms more than the healthy path.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import httpx

from smackctl.daemon.process import free_port
from smackctl.paths import find_llama_server

from ._harness import (
    first_token,
    percentile,
    profile_text,
    spawn_raw,
    stop_raw,
    supervisor,
    tails,
    tiny_model,
    verdict,
)

RUNS, WARM, TTFB_RUNS = 400, 40, 200
ASK = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "temperature": 0.0}


def run(cache: Path) -> tuple[list[str], bool]:
    binary = find_llama_server(None)
    assert binary is not None, "llama-server is not built (make install)"
    port, dead = free_port(), free_port()
    remote = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        proc = spawn_raw(
            [binary, "-m", str(tiny_model(cache)), "--host", "127.0.0.1", "--port", str(port),
             "-np", "2", "-c", "1024", "--no-webui", "--threads", "1"],
            Path(tmp) / "llama-server.log",
        )  # fmt: skip
        try:
            _wait(remote + "/health")
            openai = {"backend": "openai", "health_interval": 0.2, "retries": 0}
            profile = profile_text(
                {
                    "remote": {**openai, "url": remote + "/v1", "upstream_model": "tiny"},
                    "dead": {**openai, "url": f"http://127.0.0.1:{dead}/v1"},
                },
                groups={"down-first": {"deployments": ["dead", "remote"]}},
            )
            with supervisor(profile) as sup, sup.client() as via, httpx.Client() as direct:
                _wait_open(via)
                lat = _latency(via, direct, remote)
                lat["async50"] = _async_direct(remote)
                healthy, fallback = _ttfb(via)
        finally:
            stop_raw(proc)
    added50, added99 = lat["sup50"] - lat["dir50"], lat["sup99"] - lat["dir99"]
    ok1 = added50 <= 2.0 and added99 <= 10.0
    more = fallback - healthy
    ok2 = more <= 5.0
    rows = [
        "### 1. Added latency in front of a remote llama-server (tiny model, 1 token)",
        "",
        "| | direct | through smackctl | added | goal |",
        "|---|---:|---:|---:|---|",
        f"| p50 | {lat['dir50']:.2f} ms | {lat['sup50']:.2f} ms | {added50:+.2f} ms "
        f"| ≤ 2 ms: {verdict(added50 <= 2.0)} |",
        f"| p99 | {lat['dir99']:.2f} ms | {lat['sup99']:.2f} ms | {added99:+.2f} ms "
        f"| ≤ 10 ms: {verdict(added99 <= 10.0)} |",
        "",
        f"The same request direct through httpx's async client (the one the gateway uses, "
        f"as the brief asks for servers smackctl did not start): p50 {lat['async50']:.2f} ms, "
        f"{lat['async50'] - lat['dir50']:+.2f} ms against the sync client of the direct column.",
        "",
        "### 2. Time to first byte with the primary down and its breaker open (p50)",
        "",
        "| healthy path | primary down, breaker open | more | goal ≤ 5 ms |",
        "|---:|---:|---:|---|",
        f"| {healthy:.2f} ms | {fallback:.2f} ms | {more:+.2f} ms | {verdict(ok2)} |",
    ]
    print("\n".join(rows), flush=True)
    return rows, ok1 and ok2


def _wait(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


def _wait_open(via: httpx.Client, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = via.get("/api/backends").json()
        if any(
            d["name"] == "dead" and d["breaker"]["state"] == "open" for d in view["deployments"]
        ):
            return
        time.sleep(0.05)
    raise RuntimeError("the dead deployment's breaker never opened")


def _latency(via: httpx.Client, direct: httpx.Client, remote: str) -> dict[str, float]:
    ms: dict[str, list[float]] = {"sup": [], "direct": []}
    for i in range(2 * (RUNS + WARM)):
        which = "sup" if i % 2 else "direct"
        t = time.perf_counter()
        if which == "sup":
            r = via.post("/v1/chat/completions", json={**ASK, "model": "remote"})
        else:
            r = direct.post(remote + "/v1/chat/completions", json={**ASK, "model": "tiny"})
        took = (time.perf_counter() - t) * 1000
        r.raise_for_status()
        if i >= 2 * WARM:
            ms[which].append(took)
    return tails(ms)


def _async_direct(remote: str) -> float:
    """p50 of the same request direct, through httpx's async client (the gateway's own):
    what that client costs by itself, beside the sync client of the direct column."""

    async def go() -> float:
        ms = []
        async with httpx.AsyncClient() as c:
            for i in range(RUNS + WARM):
                t = time.perf_counter()
                r = await c.post(remote + "/v1/chat/completions", json={**ASK, "model": "tiny"})
                r.raise_for_status()
                if i >= WARM:
                    ms.append((time.perf_counter() - t) * 1000)
        return percentile(ms, 50)

    return asyncio.run(go())


def _ttfb(via: httpx.Client) -> tuple[float, float]:
    ms: dict[str, list[float]] = {"remote": [], "down-first": []}
    for i in range(2 * TTFB_RUNS + 20):
        name = "down-first" if i % 2 else "remote"
        took = first_token(via, "/v1/chat/completions", {**ASK, "model": name}) * 1000
        if i >= 20:
            ms[name].append(took)
    return percentile(ms["remote"], 50), percentile(ms["down-first"], 50)
