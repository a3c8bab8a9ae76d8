"""The worst inputs against a real supervisor (issue 26): 1 MiB prompts of newlines, dots,
spaces and code to ``POST /api/route`` and to a ``model: auto`` chat, deeply nested JSON, an
alias-bomb profile through ``/api/profiles/reload``, hostile GGUF headers (and two same-size
files to hash) dropped into the watched models_dir. For each, the largest lag of the event
loop: ``smackctl_event_loop_lag_seconds`` read after it, and the worst latency of a ``/health``
pinger (every 10 ms, a thread of its own) while it ran. Goal: ≤ 50 ms each. Then the time
``route.decide`` takes for a 1 MiB prompt in-process (median of 5). Goal: ≤ 5 ms.

The ``model: auto`` chat's two models are ``backend: openai`` deployments on a stand-in server
(a thread here that reads the request and answers at once): llama.cpp's tokenizer spends
minutes on 1 MiB of one character (a single pre-token), in the runner's process, which would
measure llama.cpp, not the supervisor's loop."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from smackctl.config import Auto
from smackctl.daemon.gateway.auto import decide

from ._harness import Sup, median, profile_text, supervisor, tiny_model, verdict

GOAL_MS = 50.0
ROUTE_GOAL_MS = 5.0
MIB = 2**20
CODE = "def f(x):\n    return g(x) + 1  # see main.py\n\nclass A(B):\n    pass\n"
PROMPTS = {
    "newlines": "\n" * MIB,
    "dots": "." * MIB,
    "spaces": " " * MIB,
    "code": (CODE * (MIB // len(CODE) + 1))[:MIB],
}
#: six levels of ten aliases: a million values from 300 bytes
BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 10)}]\n" for a, b in zip("abcde", "bcdef", strict=True)
)


class _StandIn(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible server that reads each request and answers it at once."""

    def _answer(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self._answer({"object": "list", "data": [{"id": "stand-in", "object": "model"}]})

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        message = {"role": "assistant", "content": "ok"}
        self._answer({
            "id": "x", "object": "chat.completion", "created": 0, "model": "stand-in",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        })  # fmt: skip

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _stand_in() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


class Pinger:
    """``GET /health`` every 10 ms on a thread: (when sent, seconds to the answer)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.pings: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=60) as c:
            while not self._stop.is_set():
                t = time.monotonic()
                with contextlib.suppress(httpx.HTTPError):
                    c.get(self.url + "/health")
                self.pings.append((t, time.monotonic() - t))
                self._stop.wait(0.01)

    def worst(self, since: float, until: float) -> float:
        """The slowest answer to a ping sent in [since, until], or one still open then."""
        return max((took for t, took in list(self.pings) if since <= t <= until), default=0.0)

    @contextlib.contextmanager
    def running(self) -> Iterator[Pinger]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()


def _post(path: str, **kw: Any) -> Callable[[httpx.Client], str]:
    def act(c: httpx.Client) -> str:
        return str(c.post(path, **kw).status_code)

    return act


def _lag(c: httpx.Client) -> float:
    for line in c.get("/metrics").text.splitlines():
        if line.startswith("smackctl_event_loop_lag_seconds "):
            return float(line.split()[1])
    raise RuntimeError("no smackctl_event_loop_lag_seconds in /metrics")


def _quiet(c: httpx.Client) -> None:
    """Wait until the lag metric (the worst of its last 10 s) is under the goal again, so
    that each case reads its own lag."""
    deadline = time.monotonic() + 12
    while _lag(c) * 1000 > GOAL_MS / 5 and time.monotonic() < deadline:
        time.sleep(0.5)


def _measure(
    sup: Sup, pinger: Pinger, act: Callable[[httpx.Client], str]
) -> tuple[float, float, str]:
    """(metric lag ms, worst /health ms, what the supervisor answered) for one case."""
    with sup.client(timeout=120) as c:
        _quiet(c)
        t = time.monotonic()
        answered = act(c)
        time.sleep(0.1)  # one more pass of the lag task, and of the pinger
        until = time.monotonic()
        return _lag(c) * 1000, pinger.worst(t, until) * 1000, answered


def _hostile_files(shelf: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import tinygguf  # type: ignore[import-not-found]

    tinygguf.write_huge_dims_gguf(shelf / "dims.gguf", 100_000)
    tinygguf.write_nested_arrays_gguf(shelf / "nested.gguf", 100_000)
    tinygguf.write_long_string_gguf(shelf / "long.gguf")
    tinygguf.write_huge_array_gguf(shelf / "array.gguf")
    for name in ("same-1.gguf", "same-2.gguf"):  # same size: the rescan hashes both
        with (shelf / name).open("wb") as f:
            f.write(b"GGUF")
            f.truncate(256 * MIB)


def _route_ms() -> dict[str, float]:
    auto = Auto(code="coder", general="chat")

    async def one(text: str) -> float:
        body = {"messages": [{"role": "user", "content": text}]}
        t = time.perf_counter()
        await decide(auto, "/v1/chat/completions", body, lambda _: 4096)
        return (time.perf_counter() - t) * 1000

    return {
        what: median([asyncio.run(one(text)) for _ in range(5)]) for what, text in PROMPTS.items()
    }


def run(cache: Path) -> tuple[list[str], bool]:
    tiny_model(cache)  # tests/ on the path, for the hostile headers
    with tempfile.TemporaryDirectory() as tmp, _stand_in() as url:
        shelf = Path(tmp) / "shelf"
        shelf.mkdir()
        remote = {"backend": "openai", "url": url, "health_interval": 60}
        profile = profile_text(
            {"general": remote, "coder": remote},
            models_dir=str(shelf),
            routing={"default_model": "auto", "auto": {"code": "coder", "general": "general"}},
        )
        cases: list[tuple[str, Callable[[httpx.Client], str]]] = []
        for what, text in PROMPTS.items():
            cases.append((f"`POST /api/route`, 1 MiB of {what}",
                          _post("/api/route", json={"prompt": text})))  # fmt: skip
            chat = {
                "model": "auto",
                "max_tokens": 1,
                "messages": [{"role": "user", "content": text}],
            }
            cases.append((f"`model: auto` chat, 1 MiB of {what}",
                          _post("/v1/chat/completions", json=chat)))  # fmt: skip
        deep = "[" * 100_000 + "]" * 100_000
        cases.append(("JSON nested 100,000 deep, `/v1/chat/completions`",
                      _post("/v1/chat/completions", content=deep,
                            headers={"Content-Type": "application/json"})))  # fmt: skip

        def bomb(c: httpx.Client) -> str:
            path = sup.profiles / "bench.yaml"
            good = path.read_text()
            path.write_text(good + BOMB)
            try:
                return str(c.post("/api/profiles/reload").json()["ok"])
            finally:
                path.write_text(good)

        cases.append(("an alias bomb (10⁶ values), `/api/profiles/reload`", bomb))

        def dropped(c: httpx.Client) -> str:
            _hostile_files(shelf)
            deadline = time.monotonic() + 30
            while len(c.get("/api/models").json()) < 5 and time.monotonic() < deadline:
                time.sleep(0.05)  # the watch's rescan (it hashes the two same-size files)
            models = c.get("/api/models", params={"details": 1}).json()
            return f"{sum('gguf_error' in m for m in models)} errors"

        cases.append(("hostile GGUF headers + 2 × 256 MiB same-size files in the models_dir",
                      dropped))  # fmt: skip
        results = []
        # the lag sampled every 20 ms (the supervisor's own default is 100 ms: see LoopLag)
        os.environ["SMACKCTL_LOOP_LAG_EVERY"] = "0.02"
        with supervisor(profile) as sup, Pinger(sup.url).running() as pinger:
            for what, act in cases:
                lag, ping, answered = _measure(sup, pinger, act)
                results.append((what, lag, ping, answered))
                print(f"{what}: lag {lag:.1f} ms, /health {ping:.1f} ms ({answered})", flush=True)
        os.environ.pop("SMACKCTL_LOOP_LAG_EVERY")
        with contextlib.suppress(OSError):
            for name in ("same-1.gguf", "same-2.gguf"):
                os.unlink(shelf / name)
    route_ms = _route_ms()
    ok_lag = all(max(lag, ping) <= GOAL_MS for _, lag, ping, _ in results)
    ok_route = all(ms <= ROUTE_GOAL_MS for ms in route_ms.values())
    rows = [
        "| input | answer | loop lag (metric) | worst `/health` | goal ≤ 50 ms |",
        "|---|---|---:|---:|---|",
        *(
            f"| {what} | {answered} | {lag:.1f} ms | {ping:.1f} ms | "
            f"{verdict(max(lag, ping) <= GOAL_MS)} |"
            for what, lag, ping, answered in results
        ),
        "",
        "| routing decided in-process, 1 MiB of | " + " | ".join(route_ms) + " | goal ≤ 5 ms |",
        "|---|" + "---:|" * len(route_ms) + "---|",
        "| median of 5 | "
        + " | ".join(f"{ms:.2f} ms" for ms in route_ms.values())
        + f" | {verdict(ok_route)} |",
        "",
        "The lag metric is the worst of its last 10 s (each case starts once it is under "
        "10 ms again); the `/health` column is the slowest answer to a ping sent while the "
        "case ran, HTTP included. The chat's two models are a stand-in OpenAI-compatible "
        "server that answers at once: llama.cpp's tokenizer takes minutes over 1 MiB of one "
        "character (one pre-token), in the runner's process, not on the supervisor's loop.",
        "",
        "Before issue 26 (8880d60, the issue's figures): 10,000 newlines to `model: auto` "
        "held the loop 9.5 s and 20,000 held it 40 s (quadratic: 1 MiB would take days); a "
        "JSON body 1,000 deep was a 500; six levels of YAML aliases took 2.5 s and 123 MB "
        "and a self-referencing alias stopped the profile watch; a GGUF of 100,000 "
        "dimensions of 2^64 − 1 took 40 s in the product and made `/api/models` a 500; the "
        "rescan hashed same-size files on the loop (the sha256 of the 2 × 256 MiB above: "
        "0.9 s here).",
    ]
    print("\n".join(rows), flush=True)
    return rows, ok_lag and ok_route
