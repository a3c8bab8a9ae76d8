"""Profile switch time ÷ the sum of the raw load times of the models it loads (goal ≤ 1.10).

Profile A has SmolLM2 at n_ctx 2048; profile B has it at n_ctx 4096 (a reload) plus Gemma 3
270M preloaded (a load). The raw figure starts ``llama_cpp.server`` by hand for each of B's
models, exactly as the supervisor would, and times it to ready; the switch is timed from the
request to the supervisor's "done" event, through the real HTTP API. Three of each, alternated.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

from smackctl.config import ModelSpec
from smackctl.daemon.backends.base import llama_cpp_server_argv
from smackctl.daemon.runner import Runner

from ._harness import MODELS, median, model, model_file, profile_text, supervisor, verdict

GOAL = 1.10
RUNS = 3


async def raw_load(path: Path, n_ctx: int, log: Path) -> float:
    spec = ModelSpec(path=str(path), n_ctx=n_ctx)
    r = Runner("raw", lambda port: llama_cpp_server_argv(spec, path, port), log)
    t = time.perf_counter()
    await r.start()
    took = time.perf_counter() - t
    await r.stop(grace=2)
    return took


def run(cache: Path) -> tuple[list[str], bool]:
    files = {n: model_file(cache, n) for n in MODELS}
    routing = {"default_model": "smollm2"}
    a = profile_text({"smollm2": model(files["smollm2"], 2048, preload=True)}, routing=routing)
    b = profile_text(
        {
            "smollm2": model(files["smollm2"], 4096, preload=True),
            "gemma": model(files["gemma3-270m"], 2048, preload=True),
        },
        routing=routing,
    )
    switches: list[float] = []
    raws: list[float] = []
    for i in range(RUNS):  # alternated, so that the VM's drift falls on both alike
        with tempfile.TemporaryDirectory() as tmp:
            raws.append(
                asyncio.run(raw_load(files["smollm2"], 4096, Path(tmp) / "r1.log"))
                + asyncio.run(raw_load(files["gemma3-270m"], 2048, Path(tmp) / "r2.log"))
            )
        switches.append(_switch(a, b))
        print(f"  run {i + 1}: switch {switches[-1]:.2f} s, raw loads {raws[-1]:.2f} s", flush=True)
    switch, raw = median(switches), median(raws)
    ratio = median([s / r for s, r in zip(switches, raws, strict=True)])
    ok = ratio <= GOAL
    rows = [
        "| switch a → b | raw loads (smollm2 4096 + gemma 2048) | ratio | goal ≤ 1.10 |",
        "|---:|---:|---:|---|",
        f"| {switch:.2f} s | {raw:.2f} s | {ratio:.2f} | {verdict(ok)} |",
        "",
        f"Medians of {RUNS} runs, alternated (ratio: the median of each run's ratio). "
        "The switch also unloads SmolLM2 at n_ctx 2048 before loading it again at 4096.",
    ]
    print("\n".join(rows), flush=True)
    return rows, ok


def _switch(a: str, b: str) -> float:
    """Seconds from the switch request to the supervisor's "done" event, a fresh supervisor
    on profile ``a`` switching to ``b``."""
    with supervisor(a) as sup:
        sup.wait_ready("smollm2")
        (sup.profiles / "b.yaml").write_text(b)
        t = time.perf_counter()
        with (
            sup.client() as c,
            c.stream(
                "POST", "/api/profiles/switch", json={"path": str(sup.profiles / "b.yaml")}
            ) as r,
        ):
            last = [json.loads(ln) for ln in r.iter_lines() if ln.strip()][-1]
        took = time.perf_counter() - t
        assert last["event"] == "done", last
    return took
