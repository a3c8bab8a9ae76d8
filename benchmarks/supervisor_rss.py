"""The supervisor's own memory (issue 6, line 6): RSS of the supervisor process alone (its
runners are separate processes), idle after start, then with SmolLM2 and Gemma 3 270M loaded
and 20 streamed requests served by each; the kernel's high-water mark (VmHWM) too.
Goal: ≤ 80 MB (10^6 bytes) for the supervisor itself.
"""

from __future__ import annotations

from pathlib import Path

import psutil

from smackctl.hardware import parse_vm_hwm

from ._harness import model, model_file, profile_text, stream_tokens, supervisor, verdict

GOAL = 80e6


def run(cache: Path) -> tuple[list[str], bool]:
    smol, gemma = model_file(cache, "smollm2"), model_file(cache, "gemma3-270m")
    profile = profile_text({"smollm2": model(smol, 2048), "gemma": model(gemma, 2048)})
    with supervisor(profile) as sup:
        proc = psutil.Process(sup.proc.pid)
        with sup.client() as c:
            c.get("/api/status").raise_for_status()
            idle = proc.memory_info().rss
            for name in ("smollm2", "gemma"):
                for _ in range(20):
                    body = {"model": name, "prompt": "Once upon a time", "max_tokens": 16}
                    stream_tokens(c, "/v1/completions", body)
            busy = proc.memory_info().rss
        peak = parse_vm_hwm(Path(f"/proc/{proc.pid}/status").read_text()) or busy
        runners = len(proc.children())
    ok = max(idle, busy, peak) <= GOAL
    rows = [
        "| supervisor | RSS | goal ≤ 80 MB |",
        "|---|---:|---|",
        f"| idle | {idle / 1e6:.1f} MB | {verdict(idle <= GOAL)} |",
        f"| {runners} runners loaded, 40 requests served | {busy / 1e6:.1f} MB "
        f"| {verdict(busy <= GOAL)} |",
        f"| peak (VmHWM) over the run | {peak / 1e6:.1f} MB | {verdict(peak <= GOAL)} |",
    ]
    print("\n".join(rows), flush=True)
    return rows, ok
