"""Profile switch time ÷ the sum of the raw load times of the models it loads (goal ≤ 1.10).

Profile A has SmolLM2 at n_ctx 2048; profile B has it at n_ctx 4096 (a reload) plus Gemma 3
270M preloaded (a load). The raw figure starts ``llama_cpp.server`` by hand for each of B's
models, exactly as the supervisor would, and times it to ready; the switch is timed from the
request to the supervisor's "done" event, through the real HTTP API.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from smackctl import catalog
from smackctl.config import ModelSpec
from smackctl.daemon.backends import llama_cpp_server_argv
from smackctl.daemon.runner import Runner

from .estimate_accuracy import MODELS

GOAL = 1.10


async def raw_load(path: Path, n_ctx: int, log: Path) -> float:
    spec = ModelSpec(path=str(path), n_ctx=n_ctx)
    r = Runner("raw", lambda port, key: llama_cpp_server_argv(spec, path, port, key), log)
    t = time.perf_counter()
    await r.start()
    took = time.perf_counter() - t
    await r.stop(grace=2)
    return took


def run(cache: Path) -> tuple[list[str], bool]:
    files = {n: catalog.pull(catalog.parse_source(s), cache, sha) for n, (s, sha) in MODELS.items()}
    with tempfile.TemporaryDirectory() as tmp:
        home, profiles = Path(tmp) / "home", Path(tmp) / "profiles"
        profiles.mkdir()
        (profiles / "a.yaml").write_text(
            f"models:\n  smollm2:\n    path: {files['smollm2']}\n    n_ctx: 2048\n"
            "    preload: true\nrouting:\n  default_model: smollm2\n"
        )
        (profiles / "b.yaml").write_text(
            f"models:\n  smollm2:\n    path: {files['smollm2']}\n    n_ctx: 4096\n"
            f"    preload: true\n  gemma:\n    path: {files['gemma3-270m']}\n    n_ctx: 2048\n"
            "    preload: true\nrouting:\n  default_model: smollm2\n"
        )
        raw = sum(
            [
                asyncio.run(raw_load(files["smollm2"], 4096, Path(tmp) / "r1.log")),
                asyncio.run(raw_load(files["gemma3-270m"], 2048, Path(tmp) / "r2.log")),
            ]
        )
        port = 7699
        env = {**os.environ, "SMACKCTL_HOME": str(home), "SMACKCTL_PROFILE_DIR": str(profiles)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "smackctl.daemon", "--port", str(port), "--profile", "a"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    token = (home / "state" / "token").read_text().strip()
                    h = {"Authorization": f"Bearer {token}"}
                    st = httpx.get(url + "/api/status", headers=h).json()
                    if any(m["state"] == "ready" for m in st["models"]):
                        break
                except (OSError, httpx.HTTPError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the supervisor did not load profile a")
                time.sleep(0.05)
            t = time.perf_counter()
            with httpx.stream(
                "POST",
                url + "/api/profiles/switch",
                headers=h,
                timeout=300,
                json={"path": str(profiles / "b.yaml")},
            ) as r:
                last = [json.loads(ln) for ln in r.iter_lines() if ln.strip()][-1]
            switch = time.perf_counter() - t
            assert last["event"] == "done", last
        finally:
            with httpx.Client(headers=h) as c:
                c.post(url + "/api/shutdown", json={"force": True})
            proc.wait(30)
    ratio = switch / raw
    ok = ratio <= GOAL
    rows = [
        "| switch a → b | raw loads (smollm2 4096 + gemma 2048) | ratio | goal ≤ 1.10 |",
        "|---:|---:|---:|---|",
        f"| {switch:.2f} s | {raw:.2f} s | {ratio:.2f} | {'pass' if ok else 'FAIL'} |",
        "",
        "The switch also unloads SmolLM2 at n_ctx 2048 before loading it again at 4096.",
    ]
    print("\n".join(rows), flush=True)
    return rows, ok
