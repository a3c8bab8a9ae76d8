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
from smackctl.daemon.gateway.auto import decide

from ._harness import (
    median,
    model_file,
    percentile,
    profile_text,
    supervisor,
    tiny_model,
    verdict,
)
from .route_prompts import (
    CODE,
    FRESH_CODE,
    FRESH_GENERAL,
    GENERAL,
    HELD_OUT_CODE,
    HELD_OUT_GENERAL,
)

AUTO = Auto(code="coder", general="chat")


async def _each(prompts: list[str], one: Callable[[str], Awaitable[str]]) -> list[str]:
    return [await one(p) for p in prompts]


def _with_classifier(cache: Path, labelled: list[tuple[str, str]]) -> str:
    smol, tiny = model_file(cache, "smollm2"), tiny_model(cache)
    profile = profile_text(
        {
            "coder": {"path": str(tiny), "n_ctx": 512},
            "chat": {"path": str(tiny), "n_ctx": 512},
            "judge": {"path": str(smol), "n_ctx": 2048, "pinned": True, "preload": True},
        },
        routing={"default_model": "auto",
                 "auto": {"code": "coder", "general": "chat", "classifier": "judge"}},
    )  # fmt: skip
    right = asked = 0
    with supervisor(profile) as sup, sup.client() as c:
        sup.wait_ready("judge")
        for prompt, want in labelled:
            got = c.post("/api/route", json={"prompt": prompt}).json()
            right += got["model"] == want
            asked += "classifier" in got["reason"]
    return (
        f"{right}/{len(labelled)} right ({right / len(labelled):.0%}); the classifier was "
        f"asked for {asked}"
    )


def run(cache: Path) -> tuple[list[str], bool]:
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
    fresh = [(p, "coder") for p in FRESH_CODE] + [(p, "chat") for p in FRESH_GENERAL]
    fresh_got = asyncio.run(_each([p for p, _ in fresh], one))
    fresh_right = sum(g == w for g, (_, w) in zip(fresh_got, fresh, strict=True))
    fresh_wrong = [p for g, (p, w) in zip(fresh_got, fresh, strict=True) if g != w]
    with_classifier = _with_classifier(cache, fresh)
    ok = accuracy >= 0.9 and fresh_right / len(fresh) >= 0.9 and percentile(us, 99) < 1000
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
        f"On {len(held)} prompts written after a first tuning and then seen by a second one "
        f"(half code): {held_right}/{len(held)} right ({held_right / len(held):.0%}); wrong: "
        + ("; ".join(f"“{p[:60]}”" for p in held_wrong) or "none")
        + ".",
        "",
        f"On {len(fresh)} prompts written after the last tuning and never used for it (half "
        f"code), the clean figure: {fresh_right}/{len(fresh)} right "
        f"({fresh_right / len(fresh):.0%}); wrong: "
        + ("; ".join(f"“{p[:60]}”" for p in fresh_wrong) or "none")
        + ".",
        "",
        "The same 20 through a real supervisor with SmolLM2 as `routing.auto.classifier` "
        f"(asked for the prompts with a single weak sign): {with_classifier}.",
    ]
    print("\n".join(rows), flush=True)
    return rows, ok
