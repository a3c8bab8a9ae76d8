"""Loading through the supervisor vs. llama_cpp.server by hand (issue 6, lines 3 and 4).

3. Cold time to first token: a request for an unloaded SmolLM2 through the supervisor (it
   loads the model on demand) vs. starting ``llama_cpp.server`` by hand with the same
   arguments, polling it every 10 ms until it answers, and asking it. Three of each,
   alternated; medians. Goal: supervisor ÷ by hand ≤ 1.10.
4. Swap: with SmolLM2 loaded, the time to the first token of Gemma 3 270M, and back
   (A→B, B→A, SWAPS in all). The supervisor has ``max_loaded: 1``, so it must evict one
   model, and loads the other in the evicted runner's process (the runner program); the peer
   is llama_cpp.server's own multi-model ``--config_file``, which swaps inside its one
   process. A second, identical ``--config_file`` server is the control. All three run side
   by side and take turns, in a rotating order; the figure is the median of each swap's
   ratio to its neighbour, with a bootstrap 95% interval (one swap varies by ±30% on this
   VM), and the same per direction; the control's ratio to the peer shows where two
   identical servers land.
   Goal: supervisor ÷ llama_cpp.server ≤ 1.0.
   Each swap comes 3 s after the previous one, on every side, as a user's question would:
   the supervisor uses idle time to start its spare runner (the runner program --spare), which
   back-to-back swaps would not leave it.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from smackctl.daemon.process import free_port
from smackctl.hardware import physical_cores

from ._harness import (
    first_token,
    median,
    median_ci,
    model,
    model_file,
    profile_text,
    raw_server,
    spawn_raw,
    stop_raw,
    supervisor,
    verdict,
    wait_answering,
)

COLD_RUNS = 3
PAUSE = 3.0
SWAPS = 24
ORDER = ("gemma", "smollm2")  # SmolLM2 is loaded first


def _body(model: str) -> dict[str, object]:
    return {"model": model, "prompt": "The capital of France is", "max_tokens": 1}


def run(cache: Path) -> tuple[list[str], bool]:
    smol, gemma = model_file(cache, "smollm2"), model_file(cache, "gemma3-270m")
    cold_sup, cold_raw = _cold(smol)
    swap_sup, swap_raw, swap_ctl = _swap(smol, gemma)
    r3 = median(cold_sup) / median(cold_raw)
    ratios = [a / b for a, b in zip(swap_sup, swap_raw, strict=True)]
    r4, (lo, hi) = median(ratios), median_ci(ratios)
    control = [a / b for a, b in zip(swap_ctl, swap_raw, strict=True)]
    clo, chi = median_ci(control)
    ok3, ok4 = r3 <= 1.10, r4 <= 1.0
    rows = [
        "### 3. Cold time to first token, SmolLM2 not loaded",
        "",
        "| through the supervisor | llama_cpp.server by hand | ratio | goal ≤ 1.10 |",
        "|---:|---:|---:|---|",
        f"| {median(cold_sup):.2f} s | {median(cold_raw):.2f} s | {r3:.2f} | {verdict(ok3)} |",
        "",
        "### 4. Swap SmolLM2 ⇄ Gemma 3 270M, time to the new model's first token",
        "",
        "| swap to | supervisor (max_loaded 1) | llama_cpp.server --config_file "
        "| ratio of neighbours | 95% interval | goal ≤ 1.0 |",
        "|---|---:|---:|---:|---:|---|",
        f"| both | {median(swap_sup):.2f} s | {median(swap_raw):.2f} s | {r4:.2f} "
        f"| {lo:.2f}–{hi:.2f} | {verdict(ok4)} |",
        *(_direction(name, swap_sup[i::2], swap_raw[i::2]) for i, name in enumerate(ORDER)),
        f"| control: a second, identical --config_file server ÷ the first | "
        f"{median(swap_ctl):.2f} s | {median(swap_raw):.2f} s | {median(control):.2f} "
        f"| {clo:.2f}–{chi:.2f} | |",
        "",
        f"{SWAPS} swaps; the interval is a bootstrap 95% interval of the median. Each swap, "
        "supervisor: " + ", ".join(f"{t:.2f}" for t in swap_sup) + " s; "
        "llama_cpp.server: " + ", ".join(f"{t:.2f}" for t in swap_raw) + " s; "
        "control: " + ", ".join(f"{t:.2f}" for t in swap_ctl) + " s.",
    ]
    print("\n".join(rows), flush=True)
    return rows, ok3 and ok4


def _cold(smol: Path) -> tuple[list[float], list[float]]:
    sup_times: list[float] = []
    raw_times: list[float] = []
    profile = profile_text({"smollm2": model(smol, 2048)})
    with supervisor(profile) as sup, tempfile.TemporaryDirectory() as tmp:
        for i in range(COLD_RUNS):
            t = time.perf_counter()
            with raw_server(smol, 2048, Path(tmp) / f"raw{i}.log") as (url, headers):
                with httpx.Client(timeout=120) as c:
                    first_token(c, url + "/v1/completions", _body("smollm2"), headers)
                raw_times.append(time.perf_counter() - t)
            with sup.client() as c:
                sup_times.append(first_token(c, "/v1/completions", _body("smollm2")))
                c.post("/api/models/smollm2/unload").raise_for_status()
            print(
                f"  cold {i + 1}: by hand {raw_times[-1]:.2f} s, supervisor {sup_times[-1]:.2f} s",
                flush=True,
            )
    return sup_times, raw_times


def _direction(name: str, sup: list[float], raw: list[float]) -> str:
    ratios = [a / b for a, b in zip(sup, raw, strict=True)]
    lo, hi = median_ci(ratios)
    return (
        f"| {name} | {median(sup):.2f} s | {median(raw):.2f} s | {median(ratios):.2f} "
        f"| {lo:.2f}–{hi:.2f} | |"
    )


def _swap(smol: Path, gemma: Path) -> tuple[list[float], list[float], list[float]]:
    """The supervisor and two identical ``--config_file`` servers run at once and take turns,
    so the machine's drift (a shared VM: up to 2× within minutes) falls on all alike; each
    swap is compared with its neighbour. The second server is the control: its ratio to the
    first shows how far from 1.0 two identical swaps land in this run."""
    order = ORDER * (SWAPS // 2)
    profile = profile_text(
        {"smollm2": model(smol, 2048, preload=True), "gemma": model(gemma, 2048)},
        memory={"max_loaded": 1},
    )
    times: dict[str, list[float]] = {"supervisor": [], "peer": [], "control": []}
    with (
        supervisor(profile) as sup,
        tempfile.TemporaryDirectory() as tmp,
        _config_server(smol, gemma, Path(tmp) / "peer") as peer,
        _config_server(smol, gemma, Path(tmp) / "control") as control,
    ):
        sup.wait_ready("smollm2")
        with sup.client() as c, httpx.Client(timeout=120) as raw:
            sides: dict[str, Callable[[str], float]] = {
                "supervisor": lambda name: first_token(c, "/v1/completions", _body(name)),
                "peer": lambda name: first_token(raw, peer[0], _body(name), peer[1]),
                "control": lambda name: first_token(raw, control[0], _body(name), control[1]),
            }
            for ask in sides.values():
                ask("smollm2")
            turns = list(sides.items())
            for i, name in enumerate(order):
                k = i % len(turns)  # each side goes first, second and third alike
                for side, ask in turns[k:] + turns[:k]:
                    time.sleep(PAUSE)  # a user between two questions (not synchronisation)
                    times[side].append(ask(name))
                print(
                    f"  swap to {name}: "
                    + ", ".join(f"{side} {t[-1]:.2f} s" for side, t in times.items()),
                    flush=True,
                )
    return times["supervisor"], times["peer"], times["control"]


@contextlib.contextmanager
def _config_server(smol: Path, gemma: Path, tmp: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """llama_cpp.server's own multi-model server (``--config_file``) with SmolLM2 and Gemma 3,
    as the supervisor runs them: its completions URL and auth header."""
    tmp.mkdir()
    port, key, threads = free_port(), "bench-key", physical_cores()
    common = {"n_ctx": 2048, "n_threads": threads, "n_threads_batch": threads}
    config = {
        "host": "127.0.0.1",
        "port": port,
        "api_key": key,
        "interrupt_requests": False,
        "models": [
            {"model": str(smol), "model_alias": "smollm2", "logits_all": False, **common},
            {"model": str(gemma), "model_alias": "gemma", "logits_all": False, **common},
        ],
    }
    cfg = tmp / "config.json"
    cfg.write_text(json.dumps(config))
    argv = [sys.executable, "-m", "llama_cpp.server", f"--config_file={cfg}"]
    proc = spawn_raw(argv, tmp / "server.log")
    url, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}
    try:
        wait_answering(url, headers, proc)
        yield url + "/v1/completions", headers
    finally:
        stop_raw(proc)
