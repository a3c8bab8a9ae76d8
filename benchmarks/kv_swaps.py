"""A conversation's model going and coming back (issue 32), for ``kv_cache.py``: one model
file on one backend, a ~1,900-token history. SmolLM2 is asked as a chat; Gemma 3 270M, a
base model without a chat template, as a completion of the same words.

- Swapped: ``max_loaded: 1``, a tiny model takes its place between turns.
- Restarted: ``smackctl stop`` (a drain), a new supervisor on the same home.
For each, the returning turn's first token restored against recomputed (``kv_cache:
{max_size: 0}``, as llama-server's router mode and every other manager) and against a
fresh load answering a short prompt; and what the save costs a swap out, against the time
to write the state's bytes at the disk's measured speed.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from ._harness import Sup, first_token, median, model, profile_text, supervisor

ROUNDS = 3
HISTORY = " ".join(
    f"Note {i}: the meeting about the {i}th budget line moved to Thursday at ten."
    for i in range(90)
)
CHAT, TEXT = "/v1/chat/completions", "/v1/completions"
_SHORT = "Say hello to the nice people in the room."


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


def ask(kind: str, extra: str) -> tuple[str, dict[str, Any]]:
    """The returning turn: a chat, or (``text``: a base model) the same words as a prompt."""
    body = conversation(extra)
    if kind == "chat":
        return CHAT, body
    words = "\n\n".join(f"{m['role']}: {m['content']}" for m in body["messages"])
    return TEXT, {"model": "smol", "prompt": words + "\n\nassistant:", "max_tokens": 1,
                  "temperature": 0.0}  # fmt: skip


def short(kind: str) -> tuple[str, dict[str, Any]]:
    """A fresh prompt of ~30 tokens (the chat template's own included)."""
    if kind == "chat":
        return CHAT, {"model": "smol", "max_tokens": 1, "temperature": 0.0,
                      "messages": [{"role": "user", "content": _SHORT}]}  # fmt: skip
    text = f"user: {_SHORT} Then tell them about the weather today.\n\nassistant:"
    return TEXT, {"model": "smol", "prompt": text, "max_tokens": 1, "temperature": 0.0}


def profile(file: Path, tiny: Path, cap: str, backend: str, **more: Any) -> str:
    text = profile_text(
        {"smol": model(file, 4096, backend=backend, **more), "other": model(tiny, 512)},
        memory={"max_loaded": 1},
    )
    return text + f"kv_cache:\n  max_size: {cap}\n"


def _swap_out(c: httpx.Client) -> float:
    """Another model takes the conversation's process; the seconds that took (its save
    included)."""
    body = {"model": "other", "prompt": "hi", "max_tokens": 1}
    t = time.perf_counter()
    c.post(TEXT, json=body).raise_for_status()
    return time.perf_counter() - t


def _returning(sup: Sup, kind: str) -> tuple[list[float], list[float]]:
    """Each round: a turn (its history computed or restored), a swap out, the next turn."""
    back, swaps = [], []
    with sup.client() as c:
        for i in range(ROUNDS):
            first_token(c, *ask(kind, f"Round {i}."))
            swaps.append(_swap_out(c))
            back.append(first_token(c, *ask(kind, f"Again {i}.")))
    return back, swaps


def _restarted(
    text: str, kind: str, turn: Callable[[str], tuple[str, dict[str, Any]]]
) -> list[float]:
    """Each round: a turn, ``smackctl stop``, a new supervisor on the same home, whose first
    request's first token is measured (``turn(word)``: the request)."""
    took = []
    for i in range(ROUNDS):
        with tempfile.TemporaryDirectory() as keep:
            with supervisor(text, keep=Path(keep)) as s, s.client() as c:
                first_token(c, *ask(kind, f"Before {i}."))
                c.post("/api/shutdown", json={"timeout": 60}).raise_for_status()
                s.proc.wait(120)
            with supervisor(text, keep=Path(keep)) as s, s.client() as c:
                took.append(first_token(c, *turn(f"After {i}.")))
    return took


def disk_speed(folder: Path, size: int = 256 * 2**20) -> float:
    """Bytes per second written to ``folder`` as a state is saved (whole, no fsync)."""
    piece = os.urandom(8 * 2**20)
    path = folder / "speed.bin"
    t = time.perf_counter()
    with path.open("wb") as f:
        for _ in range(size // len(piece)):
            f.write(piece)
    took = time.perf_counter() - t
    path.unlink()
    return size / took


def _saved_bytes(sup: Sup) -> int:
    files = [p for p in (sup.home / "state" / "kv").rglob("*") if p.suffix in (".kv", ".bin")]
    return int(median([p.stat().st_size for p in files])) if files else 0


def measure(file: Path, tiny: Path, backend: str, kind: str, **more: Any) -> dict[str, Any]:
    """Swapped and restarted, on one backend, for one model file (``more``: its settings)."""
    off_text = profile(file, tiny, "0", backend, **more)
    on_text = profile(file, tiny, "2GiB", backend, **more)
    with supervisor(off_text) as off:
        recompute, swap_plain = _returning(off, kind)
        fresh = []
        with off.client() as c:
            for _ in range(ROUNDS):
                _swap_out(c)
                fresh.append(first_token(c, *short(kind)))
            url, body = ask(kind, "x")
            tokens = c.post(url, json=body).json()["usage"]["prompt_tokens"]
    with supervisor(on_text) as on:
        restored, swap_saving = _returning(on, kind)
        saved = _saved_bytes(on)
        speed = disk_speed(on.home)
    return {
        "tokens": tokens, "recompute": median(recompute), "restored": median(restored),
        "fresh": median(fresh), "swap_plain": median(swap_plain),
        "swap_saving": median(swap_saving), "saved": saved, "speed": speed,
        "r_recompute": median(_restarted(off_text, kind, lambda w: ask(kind, w))),
        "r_restored": median(_restarted(on_text, kind, lambda w: ask(kind, w))),
        "r_fresh": median(_restarted(off_text, kind, lambda _: short(kind))),
    }  # fmt: skip
