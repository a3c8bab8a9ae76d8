"""The llama-server backend against llama-server by hand (issue 17), in one run.

1. 16 clients × 4 streamed chat requests of 16 tokens (temperature 0) to SmolLM2 through
   smackctl with ``backend: llama-server, parallel: 4`` ÷ ``llama-server -np 4`` started by
   hand with the same flags: goal ≥ 0.95.
2. The same through the llama-cpp-python backend, for the table.
3. The runner's RSS for SmolLM2 at n_ctx 2048 (parallel 1) after a request: goal < 200 MB.
4. Swap SmolLM2 ⇄ Gemma 3 270M (``max_loaded: 1``), request to the new model's first token:
   this backend ÷ llama-server's router mode (``--models-preset``, ``--models-max 1``):
   goal ≤ 0.5; the llama-cpp-python backend's in-process swap beside it.
5. Cold first token (the model not loaded) ÷ llama-server started by hand and polled on
   ``/health`` every 10 ms: goal ≤ 1.10.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from smackctl.config import ModelSpec
from smackctl.daemon.backends.base import backend_for, find_llama_server
from smackctl.daemon.process import free_port

from ._harness import (
    first_token,
    median,
    model,
    model_file,
    profile_text,
    spawn_raw,
    stop_raw,
    supervisor,
    verdict,
)

CLIENTS, EACH = 16, 4
ROUNDS = 3
SWAPS = 6  # each way
COLD_RUNS = 3
#: a new connection for each request: llama-server (cpp-httplib) closes a kept-alive
#: connection after 5 requests, and its router mode when it changes models; a client that
#: reuses one then gets no answer. The same for every side measured.
FRESH = httpx.Limits(max_keepalive_connections=0)
CHAT = {"messages": [{"role": "user", "content": "Why is the sky blue?"}], "max_tokens": 16}


def _by_hand(spec: ModelSpec, path: Path, log: Path) -> tuple[Any, str, dict[str, str]]:
    """llama-server started with the argv and key the supervisor would give it."""
    import os

    port, key = free_port(), "bench-key"
    argv = backend_for(spec).argv(spec, path, port, "smollm2")
    os.environ["LLAMA_API_KEY"] = key
    try:
        proc = spawn_raw(argv, log)
    finally:
        del os.environ["LLAMA_API_KEY"]
    return proc, f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}


def _wait_health(
    url: str, proc: Any, timeout: float = 120.0, client: httpx.Client | None = None
) -> None:
    """Poll /health every 10 ms until 200 (on ``client``, else a client of its own)."""
    deadline = time.monotonic() + timeout
    with contextlib.ExitStack() as stack:
        c = client or stack.enter_context(httpx.Client(timeout=2))
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if c.get(url + "/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.01)
    raise RuntimeError(f"llama-server did not answer /health at {url}")


async def _throughput(url: str, headers: dict[str, str], model_name: str) -> float:
    """Requests per second of CLIENTS clients sending EACH streamed requests one after another,
    each on a new connection (FRESH)."""
    limits = httpx.Limits(max_connections=CLIENTS * 2, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600, limits=limits) as c:

        async def client(i: int) -> None:
            for n in range(EACH):
                body = {
                    **CHAT,
                    "model": model_name,
                    "temperature": 0,
                    "stream": True,
                    "messages": [{"role": "user", "content": f"{i}.{n} Why is the sky blue?"}],
                }
                async with c.stream("POST", "/v1/chat/completions", json=body) as r:
                    r.raise_for_status()
                    async for _ in r.aiter_lines():
                        pass

        # one request first: neither side pays a first-request warm-up in the timed part
        async with c.stream(
            "POST", "/v1/chat/completions", json={**CHAT, "model": model_name, "stream": True}
        ) as r:
            async for _ in r.aiter_lines():
                pass
        t = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(CLIENTS)))
        return CLIENTS * EACH / (time.perf_counter() - t)


def _through_smackctl(path: Path, backend: str, parallel: int) -> float:
    profile = profile_text(
        {"smollm2": model(path, 2048, backend=backend, parallel=parallel, preload=True)}
    )
    with supervisor(profile) as sup:
        sup.wait_ready("smollm2")
        return asyncio.run(_throughput(sup.url, sup.headers, "smollm2"))


def _swap_times(c: httpx.Client, names: tuple[str, str]) -> list[float]:
    """Time to the first token of each request that makes the other model load (text
    completions: Gemma 3 270M is a base model, without a chat template)."""

    def ask(name: str) -> float:
        body = {"model": name, "prompt": "The sky is", "max_tokens": 4}
        return first_token(c, "/v1/completions", body)

    ask(names[0])
    return [ask(names[(i + 1) % 2]) for i in range(2 * SWAPS)]


def run(cache: Path) -> tuple[list[str], bool]:
    smol, gemma = model_file(cache, "smollm2"), model_file(cache, "gemma3-270m")
    rows: list[str] = []
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "raw.log"
        # 1 and 2: throughput, by hand and through smackctl in turns (ROUNDS each): two
        # identical servers differ by a few percent from one run to the next on this VM
        spec4 = ModelSpec(path=str(smol), n_ctx=2048, parallel=4, backend="llama-server")
        raws, mine = [], []
        for _ in range(ROUNDS):
            proc, url, headers = _by_hand(spec4, smol, log)
            try:
                _wait_health(url, proc)
                raws.append(asyncio.run(_throughput(url, headers, "smollm2")))
            finally:
                stop_raw(proc)
            mine.append(_through_smackctl(smol, "llama-server", 4))
        python = _through_smackctl(smol, "llama-cpp-python", 1)
        raw, ratios = median(raws), [m / r for m, r in zip(mine, raws, strict=True)]
        ratio = median(ratios)
        ok &= ratio >= 0.95
        rows += [
            f"{CLIENTS} clients × {EACH} streamed chat requests of 16 tokens, SmolLM2, 2 threads; "
            f"by hand and through smackctl in turns, {ROUNDS} rounds (ratios "
            + ", ".join(f"{r:.2f}" for r in ratios)
            + "):",
            "",
            "| server | requests/s (median) | ÷ llama-server -np 4 by hand | goal |",
            "|---|---:|---:|---|",
            f"| llama-server -np 4, by hand | {raw:.2f} | 1.00 | |",
            f"| smackctl, backend llama-server, parallel 4 | {median(mine):.2f} "
            f"| {ratio:.2f} | ≥ 0.95 {verdict(ratio >= 0.95)} |",
            f"| smackctl, backend llama-cpp-python (one round) | {python:.2f} "
            f"| {python / raw:.2f} | (for the table) |",
            "",
        ]
        print("\n".join(rows[-6:]), flush=True)

        # 3: RSS at n_ctx 2048, one slot
        profile = profile_text({"smollm2": model(smol, 2048, backend="llama-server", preload=True)})
        with supervisor(profile) as sup:
            sup.wait_ready("smollm2")
            with sup.client() as c:
                c.post("/v1/chat/completions", json={**CHAT, "model": "smollm2"}).raise_for_status()
            rss = next(m["rss"] for m in sup.status()["models"] if m["name"] == "smollm2")
        ok &= rss < 200e6
        rows += [
            f"Runner RSS, SmolLM2 at n_ctx 2048, backend llama-server: {rss / 1e6:.0f} MB "
            f"({rss / 2**20:.0f} MiB), goal < 200 MB: {verdict(rss < 200e6)}",
            "",
        ]
        print(rows[-2], flush=True)

        # 4: swaps
        swaps = {}
        for backend in ("llama-server", "llama-cpp-python"):
            profile = profile_text(
                {
                    "smollm2": model(smol, 2048, backend=backend),
                    "gemma": model(gemma, 2048, backend=backend),
                },
                memory={"max_loaded": 1},
            )
            with supervisor(profile) as sup, sup.client(limits=FRESH) as c:
                swaps[backend] = _swap_times(c, ("smollm2", "gemma"))
        # router mode as it comes, then with `fit = off` in its preset (as smackctl starts
        # its llama-server runners): its default loads each model once more first
        for label, extra in (("router", ""), ("router-fit-off", "fit = off\n")):
            preset = Path(tmp) / f"{label}.ini"
            preset.write_text(
                f"[smollm2]\nmodel = {smol}\nctx-size = 2048\n{extra}\n"
                f"[gemma]\nmodel = {gemma}\nctx-size = 2048\n{extra}"
            )
            port = free_port()
            router = spawn_raw(
                [str(find_llama_server()), "--models-preset", str(preset), "--models-max", "1",
                 "--host", "127.0.0.1", "--port", str(port), "--no-webui"],
                Path(tmp) / f"{label}.log",
            )  # fmt: skip
            try:
                _wait_health(f"http://127.0.0.1:{port}", router)
                url = f"http://127.0.0.1:{port}"
                with httpx.Client(base_url=url, timeout=300, limits=FRESH) as c:
                    swaps[label] = _swap_times(c, ("smollm2", "gemma"))
            finally:
                stop_raw(router)
        # the floor both sides share: a bare llama-server per model, started by hand with the
        # argv smackctl gives it, as fast as a script can: the old one SIGKILLed and not
        # waited for (smackctl does not wait either), one HTTP client for the polls and the
        # request (no new connection pool or SSL context a swap)
        specs = {
            name: (ModelSpec(path=str(p), n_ctx=2048, backend="llama-server"), p)
            for name, p in (("smollm2", smol), ("gemma", gemma))
        }
        bare: list[float] = []
        gone: list[Any] = []
        proc = None
        with httpx.Client(timeout=300, limits=FRESH) as c:
            for i in range(2 * SWAPS + 1):
                name = ("smollm2", "gemma")[i % 2]
                t = time.perf_counter()
                if proc is not None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    gone.append(proc)
                proc, url, headers = _by_hand(*specs[name], Path(tmp) / "bare.log")
                _wait_health(url, proc, client=c)
                body = {"prompt": "The sky is", "max_tokens": 4}
                first_token(c, url + "/v1/completions", body, headers)
                if i:
                    bare.append(time.perf_counter() - t)
        for p in [*gone, proc]:
            if p is not None:
                stop_raw(p)
        swaps["bare"] = bare
        ours_swap, theirs = median(swaps["llama-server"]), median(swaps["router"])
        ratio = ours_swap / theirs
        ok &= ratio <= 0.5
        rows += [
            f"Swap SmolLM2 ⇄ Gemma 3 270M, request to the new model's first token, "
            f"{2 * SWAPS} swaps each, medians:",
            "",
            "| server | median | ÷ router mode | goal |",
            "|---|---:|---:|---|",
            f"| llama-server router mode, --models-max 1 | {theirs:.3f} s | 1.00 | |",
            f"| the same, `fit = off` in its preset | {median(swaps['router-fit-off']):.3f} s "
            f"| {median(swaps['router-fit-off']) / theirs:.2f} | (for the table) |",
            f"| smackctl, backend llama-server | {ours_swap:.3f} s | {ratio:.2f} "
            f"| ≤ 0.5 {verdict(ratio <= 0.5)} |",
            f"| smackctl, backend llama-cpp-python (in-process swap) "
            f"| {median(swaps['llama-cpp-python']):.3f} s "
            f"| {median(swaps['llama-cpp-python']) / theirs:.2f} | (for the table) |",
            f"| the floor: llama-server by hand, the old one killed, the new one started "
            f"(as fast as a script can) "
            f"| {median(bare):.3f} s | {median(bare) / theirs:.2f} | (for the table) |",
            "",
            f"smackctl's llama-server swap ÷ the floor: {ours_swap / median(bare):.2f}",
            "",
        ]
        print("\n".join(rows[-11:]), flush=True)

        # 5: cold first token
        spec1 = ModelSpec(path=str(smol), n_ctx=2048, backend="llama-server")
        hand, ours = [], []
        for _ in range(COLD_RUNS):
            t = time.perf_counter()
            proc, url, headers = _by_hand(spec1, smol, log)
            try:
                _wait_health(url, proc)
                with httpx.Client(timeout=300) as c:
                    first_token(c, url + "/v1/chat/completions", CHAT, headers)
                hand.append(time.perf_counter() - t)
            finally:
                stop_raw(proc)
        profile = profile_text({"smollm2": model(smol, 2048, backend="llama-server")})
        with supervisor(profile) as sup, sup.client() as c:
            for _ in range(COLD_RUNS):
                ours.append(first_token(c, "/v1/chat/completions", {**CHAT, "model": "smollm2"}))
                c.post("/api/models/smollm2/unload").raise_for_status()
        ratio = median(ours) / median(hand)
        ok &= ratio <= 1.10
        rows += [
            f"Cold first token (load included), SmolLM2, median of {COLD_RUNS}: smackctl "
            f"{median(ours):.3f} s, llama-server by hand {median(hand):.3f} s, ratio "
            f"{ratio:.2f}, goal ≤ 1.10: {verdict(ratio <= 1.10)}",
        ]
        print(rows[-1], flush=True)
    return rows, ok
