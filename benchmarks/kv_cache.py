"""Conversations that survive swaps (issue 32): SmolLM2 on llama-cpp-python, a conversation
with a ~1,500-token history, its model swapped out (``max_loaded: 1``: another model takes
its process) and back.

- The returning turn's first token with its KV cache restored, against the same sequence on
  a supervisor that saves nothing (``kv_cache: {max_size: 0}``: it recomputes the history,
  as llama-server's router mode and every other manager do). Goal ≤ 0.25.
- The same against a freshly loaded model answering a 30-token prompt (the restore adds
  little to a swap). Goal ≤ 1.3.
- What saving costs a swap: the swap out's time with the save, against without.
Three rounds of each, medians.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from ._harness import (
    Sup,
    first_token,
    median,
    model,
    model_file,
    profile_text,
    supervisor,
    tiny_model,
    verdict,
)

ROUNDS = 3
HISTORY = " ".join(
    f"Note {i}: the meeting about the {i}th budget line moved to Thursday at ten."
    for i in range(90)
)


def conversation(extra: str) -> dict[str, Any]:
    return {
        "model": "smol",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": HISTORY},
            {"role": "assistant", "content": "I have noted all of that."},
            {"role": "user", "content": f"When is the meeting about line 7? {extra}"},
        ],
        "max_tokens": 1,
        "temperature": 0.0,
    }


SHORT = {
    "model": "smol", "max_tokens": 1, "temperature": 0.0,
    "messages": [{"role": "user", "content": "Say hello to the nice people in the room."}],
}  # fmt: skip


def _profile(smol: Path, tiny: Path, cap: str) -> str:
    text = profile_text(
        {"smol": model(smol, 4096), "other": model(tiny, 512)}, memory={"max_loaded": 1}
    )
    return text + f"kv_cache:\n  max_size: {cap}\n"


def _swap_out(c: httpx.Client) -> float:
    """Another model takes SmolLM2's process; the seconds that took (its save included)."""
    t = time.perf_counter()
    c.post("/v1/chat/completions", json={**SHORT, "model": "other"}).raise_for_status()
    return time.perf_counter() - t


def _returning(sup: Sup, rounds: int) -> tuple[list[float], list[float]]:
    """Each round: a turn (its history computed or restored), a swap out, the next turn."""
    back, swaps = [], []
    with sup.client() as c:
        for i in range(rounds):
            first_token(c, "/v1/chat/completions", conversation(f"Round {i}."))
            swaps.append(_swap_out(c))
            back.append(first_token(c, "/v1/chat/completions", conversation(f"Again {i}.")))
    return back, swaps


def run(cache: Path) -> tuple[list[str], bool]:
    smol, tiny = model_file(cache, "smollm2"), tiny_model(cache)
    with supervisor(_profile(smol, tiny, "0")) as off:
        recompute, swap_plain = _returning(off, ROUNDS)
        fresh = []
        with off.client() as c:
            for _ in range(ROUNDS):
                _swap_out(c)
                fresh.append(first_token(c, "/v1/chat/completions", SHORT))
            prompt = c.post("/v1/chat/completions", json=conversation("x")).json()["usage"]
    with supervisor(_profile(smol, tiny, "2GiB")) as on:
        restored, swap_saving = _returning(on, ROUNDS)
    r_ratio = median(restored) / median(recompute)
    f_ratio = median(restored) / median(fresh)
    ok = r_ratio <= 0.25 and f_ratio <= 1.3
    ms = 1000
    rows = [
        f"SmolLM2 (llama-cpp-python, n_ctx 4096), a history of {prompt['prompt_tokens']} "
        f"prompt tokens; `max_loaded: 1` (a tiny model takes its process between turns); "
        f"{ROUNDS} rounds, medians.",
        "",
        "| the returning turn's first token | seconds | ratio | goal |",
        "|---|---:|---:|---|",
        f"| recomputed (`kv_cache: {{max_size: 0}}`, as router mode) | {median(recompute):.3f} "
        "| 1 | |",
        f"| restored from the saved KV cache | {median(restored):.3f} | {r_ratio:.3f} "
        f"| ≤ 0.25: {verdict(r_ratio <= 0.25)} |",
        f"| a fresh load answering a 30-token prompt | {median(fresh):.3f} | {f_ratio:.3f} "
        f"(restored ÷ this) | ≤ 1.3: {verdict(f_ratio <= 1.3)} |",
        "",
        f"The swap out (another model's first answer, SmolLM2's state saved first): "
        f"{median(swap_saving) * ms:.0f} ms with the save, {median(swap_plain) * ms:.0f} ms "
        "without.",
    ]
    print("\n".join(rows), flush=True)
    return rows, ok
