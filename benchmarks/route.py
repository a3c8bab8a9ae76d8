"""``model: auto``'s rules on a labelled set (issue 19): 120 prompts written for it
(benchmarks/route_prompts.py, half about code), each decided by ``route.decide`` with the
rules alone (no classifier); accuracy, and the decision's time per prompt (the median of 20
passes over the set)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from smackctl.config import Auto
from smackctl.daemon.route import decide

from ._harness import median, percentile, verdict
from .route_prompts import CODE, GENERAL, HELD_OUT_CODE, HELD_OUT_GENERAL

AUTO = Auto(code="coder", general="chat")


async def _each(prompts: list[str], one: Callable[[str], Awaitable[str]]) -> list[str]:
    return [await one(p) for p in prompts]


def run(cache: Path) -> tuple[list[str], bool]:
    del cache
    labelled = [(p, "coder") for p in CODE] + [(p, "chat") for p in GENERAL]

    async def one(prompt: str) -> str:
        body = {"messages": [{"role": "user", "content": prompt}]}
        return (await decide(AUTO, "/v1/chat/completions", body, lambda _: 4096)).model

    async def all_of() -> tuple[list[str], list[float]]:
        got: list[str] = []
        us: list[float] = []
        for _ in range(20):
            got = []
            for prompt, _want in labelled:
                t = time.perf_counter()
                got.append(await one(prompt))
                us.append((time.perf_counter() - t) * 1e6)
        return got, us

    got, us = asyncio.run(all_of())
    right_code = sum(g == w for g, (_, w) in zip(got, labelled, strict=True) if w == "coder")
    right_general = sum(g == w for g, (_, w) in zip(got, labelled, strict=True) if w == "chat")
    accuracy = (right_code + right_general) / len(labelled)
    wrong = [p for g, (p, w) in zip(got, labelled, strict=True) if g != w]
    held = [(p, "coder") for p in HELD_OUT_CODE] + [(p, "chat") for p in HELD_OUT_GENERAL]
    held_got = asyncio.run(_each([p for p, _ in held], one))
    held_right = sum(g == w for g, (_, w) in zip(held_got, held, strict=True))
    held_wrong = [p for g, (p, w) in zip(held_got, held, strict=True) if g != w]
    ok = accuracy >= 0.9 and held_right / len(held) >= 0.9 and percentile(us, 99) < 1000
    rows = [
        "| prompts | accuracy | code found | general kept | decision p50 | p99 | goal |",
        "|---:|---:|---:|---:|---:|---:|---|",
        f"| {len(labelled)} | {accuracy:.1%} | {right_code}/{len(CODE)} | "
        f"{right_general}/{len(GENERAL)} | {median(us):.0f} µs | {percentile(us, 99):.0f} µs "
        f"| ≥ 90 % here and held out, ≪ 1 ms: {verdict(ok)} |",
        "",
        "Decided wrongly by the rules alone: "
        + ("; ".join(f"“{p.splitlines()[0][:60]}”" for p in wrong) or "none")
        + ". The rules' words were tuned on these 120, so this is their fit, not a test:",
        "",
        f"On {len(held)} prompts written after the tuning and never used for it (half code): "
        f"{held_right}/{len(held)} right ({held_right / len(held):.0%}); wrong: "
        + ("; ".join(f"“{p[:60]}”" for p in held_wrong) or "none")
        + ". A classifier model (`routing.auto.classifier`) is asked when a prompt has a "
        "single weak sign.",
    ]
    print("\n".join(rows), flush=True)
    return rows, ok
