"""Conversations that survive swaps (issue 32): SmolLM2 on both backends, a conversation
with a ~1,900-token history, its model swapped out (``max_loaded: 1``: another model takes
its place) and back; and conversations taking turns over llama-server's ``parallel: 4``
(eight of them kept in its prompt caches in RAM, ``cache_ram``).

- The returning turn's first token with its KV cache restored, against the same sequence on
  a supervisor that saves nothing (``kv_cache: {max_size: 0}``: it recomputes the history,
  as llama-server's router mode and every other manager do). Goal ≤ 0.25.
- The same against a freshly loaded model answering a 30-token prompt (the restore adds
  little to a swap). Goal ≤ 1.3.
- What saving costs a swap: the swap out's time with the save, against without.
Three rounds of each, medians.
"""

from __future__ import annotations

import random
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


def _profile(smol: Path, tiny: Path, cap: str, backend: str) -> str:
    text = profile_text(
        {"smol": model(smol, 4096, backend=backend), "other": model(tiny, 512)},
        memory={"max_loaded": 1},
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


_WORDS = (
    "river stone lamp garden window orange pencil harbor violin meadow candle rocket "
    "forest mirror pepper castle ladder silver thunder basket"
).split()


def _history(k: int) -> str:
    """A conversation's own first message (~300 tokens), unlike the others' from its first
    words: llama-server picks a slot by how alike a prompt and a slot's tokens are."""
    rng = random.Random(k)
    return " ".join(rng.choice(_WORDS) for _ in range(300))


def _interleaved(sup: Sup, n: int, turns: int) -> float:
    """``n`` conversations of ``turns`` turns, taking turns: the prompt tokens computed
    (not cached) per turn ÷ the tokens new in that turn (the user's words and the answer
    before them), after each conversation's first turn."""
    talks = [[{"role": "user", "content": _history(k)}] for k in range(n)]
    last = [0] * n
    computed = new = 0
    with sup.client() as c:
        for turn in range(turns):
            for k, messages in enumerate(talks):
                body = {"model": "smol", "messages": messages, "max_tokens": 8,
                        "temperature": 0.0}  # fmt: skip
                usage = c.post("/v1/chat/completions", json=body).json()
                u = usage["usage"]
                if turn:
                    computed += u["prompt_tokens"] - u["prompt_tokens_details"]["cached_tokens"]
                    new += u["prompt_tokens"] - last[k]
                last[k] = u["prompt_tokens"] + u["completion_tokens"]
                answer = usage["choices"][0]["message"]["content"] or ""
                messages += [{"role": "assistant", "content": answer},
                             {"role": "user", "content": f"And turn {turn + 1}?"}]  # fmt: skip
    return computed / max(1, new)


def _backend(smol: Path, tiny: Path, backend: str) -> dict[str, Any]:
    """The swap out and back on one backend: recomputed, restored, a fresh short prompt."""
    with supervisor(_profile(smol, tiny, "0", backend)) as off:
        recompute, swap_plain = _returning(off, ROUNDS)
        fresh = []
        with off.client() as c:
            for _ in range(ROUNDS):
                _swap_out(c)
                fresh.append(first_token(c, "/v1/chat/completions", SHORT))
            prompt = c.post("/v1/chat/completions", json=conversation("x")).json()["usage"]
    with supervisor(_profile(smol, tiny, "2GiB", backend)) as on:
        restored, swap_saving = _returning(on, ROUNDS)
    return {
        "tokens": prompt["prompt_tokens"], "recompute": median(recompute),
        "restored": median(restored), "fresh": median(fresh),
        "swap_plain": median(swap_plain), "swap_saving": median(swap_saving),
    }  # fmt: skip


def run(cache: Path) -> tuple[list[str], bool]:
    smol, tiny = model_file(cache, "smollm2"), tiny_model(cache)
    found = {b: _backend(smol, tiny, b) for b in ("llama-cpp-python", "llama-server")}
    slots = profile_text(
        {"smol": model(smol, 2048, backend="llama-server", parallel=4, preload=True)}
    )
    with supervisor(slots) as ls:
        ls.wait_ready("smol")
        four = _interleaved(ls, 4, 10)
        bare = _interleaved(ls, 8, 10)
    kept = profile_text({"smol": model(smol, 2048, backend="llama-server", parallel=4,
                                       preload=True, cache_ram="256MiB")})  # fmt: skip
    with supervisor(kept) as ls:
        ls.wait_ready("smol")
        eight = _interleaved(ls, 8, 10)
    ok = max(four, eight) <= 1.2
    rows = [
        f"SmolLM2 (n_ctx 4096), a history of {found['llama-server']['tokens']} prompt tokens; "
        "`max_loaded: 1` (a tiny model takes its place between turns); "
        f"{ROUNDS} rounds, medians. The returning turn's first token:",
        "",
        "| backend | recomputed (`kv_cache: {max_size: 0}`, as router mode) | restored "
        "| ÷ recomputed (goal ≤ 0.25) | a fresh load, a 30-token prompt "
        "| restored ÷ fresh (goal ≤ 1.3) | the swap out: with the save / without |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for backend, f in found.items():
        r_ratio, f_ratio = f["restored"] / f["recompute"], f["restored"] / f["fresh"]
        ok = ok and r_ratio <= 0.25 and f_ratio <= 1.3
        rows.append(
            f"| {backend} | {f['recompute']:.3f} s | {f['restored']:.3f} s "
            f"| {r_ratio:.3f}: {verdict(r_ratio <= 0.25)} | {f['fresh']:.3f} s "
            f"| {f_ratio:.3f}: {verdict(f_ratio <= 1.3)} "
            f"| {f['swap_saving'] * 1000:.0f} / {f['swap_plain'] * 1000:.0f} ms |"
        )
    rows += [
        "",
        "Conversations taking turns on llama-server (`parallel: 4`, its slot chosen by the "
        "prompt's likeness), 10 turns each: prompt tokens computed per turn ÷ the tokens new "
        "in it (goal ≤ 1.2).",
        "",
        "| conversations | computed ÷ new | goal |",
        "|---|---:|---|",
        f"| 4 (a slot each) | {four:.2f} | ≤ 1.2: {verdict(four <= 1.2)} |",
        f"| 8 (two a slot), no `cache_ram`: a slot holds one | {bare:.2f} | (for contrast) |",
        f"| 8 (two a slot), `cache_ram: 256MiB` (counted in the budget) | {eight:.2f} "
        f"| ≤ 1.2: {verdict(eight <= 1.2)} |",
    ]
    print("\n".join(rows), flush=True)
    return rows, ok
