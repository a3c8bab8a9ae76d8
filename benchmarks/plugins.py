"""What the plugin layer costs (issue 20).

1. A request without a slash command, through the plugin layer (``Plugins.apply``, in this
   process): the time of the check, 20 000 calls. Goal ≤ 0.2 ms.
2. A no-op plugin (the example package's ``/noop``, installed with pip into a folder on the
   supervisor's Python path): a 1-token chat request to the tiny model through a real
   supervisor with ``/noop hi`` and with ``hi``, alternated, 300 each after 30 warm-up; the
   p50s compared. Goal ≤ 5 ms.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from smackctl.daemon.plugins import Installed, Plugins
from smackctl.plugins import Context, Rewrite

from ._harness import ROOT, percentile, profile_text, supervisor, tiny_model, verdict

CALLS, RUNS, WARM = 20_000, 300, 30


class _Noop:
    timeout = 1.0

    async def run(self, args: str, ctx: Context) -> Rewrite:
        return Rewrite(ctx.messages)


def run(cache: Path) -> tuple[list[str], bool]:
    passing = _pass_through()
    with tempfile.TemporaryDirectory() as site:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", site,
             str(ROOT / "examples" / "smackctl-shout")],
            check=True, capture_output=True,
        )  # fmt: skip
        os.environ["PYTHONPATH"] = os.pathsep.join([site, os.environ.get("PYTHONPATH", "")])
        try:
            profile = profile_text(
                {"tiny": {"path": str(tiny_model(cache)), "n_ctx": 512, "preload": True}},
                plugins={"noop": {}},
            )
            with supervisor(profile) as sup, sup.client() as c:
                sup.wait_ready("tiny")
                plain, noop = _through(c)
        finally:
            os.environ["PYTHONPATH"] = os.environ["PYTHONPATH"].split(os.pathsep, 1)[1]
    more = noop - plain
    ok1, ok2 = passing <= 0.2, more <= 5.0
    rows = [
        "| | measured | goal |",
        "|---|---:|---|",
        f"| a request without a command, through the plugin layer | {passing * 1000:.2f} µs "
        f"| ≤ 0.2 ms: {verdict(ok1)} |",
        f"| a no-op plugin, added to a request's p50 ({plain:.2f} ms without) | {more:+.2f} ms "
        f"| ≤ 5 ms: {verdict(ok2)} |",
    ]
    print("\n".join(rows), flush=True)
    return rows, ok1 and ok2


def _pass_through() -> float:
    """Milliseconds per ``apply`` of a request without a command (the median of 5 runs)."""
    plugins = Plugins(
        lambda: {"noop": {}}, dict, installed={"noop": Installed("noop", "b", "", _Noop())}
    )
    body = {"model": "tiny", "messages": [{"role": "user", "content": "What is the capital?"}]}

    async def go() -> float:
        t = time.perf_counter()
        for _ in range(CALLS):
            await plugins.apply(body)
        return (time.perf_counter() - t) * 1000 / CALLS

    return sorted(asyncio.run(go()) for _ in range(5))[2]


def _through(c: object) -> tuple[float, float]:
    import httpx

    assert isinstance(c, httpx.Client)
    ms: dict[str, list[float]] = {"plain": [], "noop": []}
    for i in range(2 * (RUNS + WARM)):
        which = "noop" if i % 2 else "plain"
        text = "/noop hi" if which == "noop" else "hi"
        body = {"model": "tiny", "max_tokens": 1, "temperature": 0,
                "messages": [{"role": "user", "content": text}]}  # fmt: skip
        t = time.perf_counter()
        r = c.post("/v1/chat/completions", json=body)
        took = (time.perf_counter() - t) * 1000
        r.raise_for_status()
        if i >= 2 * WARM:
            ms[which].append(took)
    return percentile(ms["plain"], 50), percentile(ms["noop"], 50)
