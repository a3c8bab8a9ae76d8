"""`smackctl models bench`: measure a model's load, first token, prompt and generation speed.

A run holds one of the model's slots, like any request, so it queues behind real traffic and
the model cannot be evicted under it; it then talks to the runner directly, so what it
measures is llama.cpp, not the supervisor's proxy (``benchmarks/`` measures that).

- prompt tokens/s = prompt tokens ÷ time to first token (the first token's own decode is in
  it: one token among hundreds);
- generation tokens/s = (generated tokens - 1) ÷ time from first to last token. End-of-text
  tokens get a -1000 logit bias, so every run generates the asked number of tokens;
- each run starts its prompt differently, so llama.cpp cannot reuse the previous run's KV
  cache for it.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from smackctl.errors import BenchBusy, ModelLoadError, UsageError
from smackctl.gguf import read_info
from smackctl.hardware import probe_machine, process_tree_vram, tree_peak_rss, tree_rss
from smackctl.wire import SSEParser

from .backends.base import Backend, backend_for

if TYPE_CHECKING:
    from .runner import Runner
    from .scheduler import Managed, Scheduler

__all__ = ["METRICS", "Bench", "BenchParams", "summarize"]

#: The figures of one run, in the order tables show them.
METRICS = ("load_s", "ttft_s", "prompt_tps", "gen_tps", "peak_rss", "vram")

_WORDS = (
    "a river runs past the old mill where seven bakers share warm bread with tired "
    "travellers who tell long stories about distant mountains quiet harbours and the "
    "patient craft of building boats from oak and pine before winter comes"
).split()


@dataclass(frozen=True)
class BenchParams:
    prompt_tokens: int = 512
    gen_tokens: int = 128
    runs: int = 3
    cold: bool = False

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> BenchParams:
        unknown = set(body) - {"prompt_tokens", "gen_tokens", "runs", "cold"}
        if unknown:
            raise UsageError(f"unknown bench field(s): {', '.join(sorted(unknown))}")
        p = cls(**body)
        for field, low, high in (
            ("prompt_tokens", 8, 1_000_000),
            ("gen_tokens", 2, 1_000_000),
            ("runs", 1, 100),
        ):
            value = getattr(p, field)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise UsageError(
                    f"bench {field} must be a whole number from {low} to {high}, not {value!r}"
                )
        if not isinstance(p.cold, bool):
            raise UsageError(f"bench cold must be true or false, not {p.cold!r}")
        return p


def summarize(values: list[float | None]) -> dict[str, float] | None:
    """Median and spread (min, max) of the runs that have the figure."""
    got = [v for v in values if v is not None]
    if not got:
        return None
    return {
        "median": statistics.median(got),
        "min": min(got),
        "max": max(got),
        "n": len(got),
    }


class Bench:
    """Runs benches one at a time: two at once would measure each other."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.sched = scheduler
        self.lock = asyncio.Lock()

    def check(self, name: str, params: BenchParams) -> Managed:
        """The model, if the bench can run on it at all (before anything is streamed)."""
        m = self.sched.resolve(name)
        need = params.prompt_tokens + params.gen_tokens
        if need > m.spec.n_ctx:
            raise UsageError(
                f"{params.prompt_tokens} prompt + {params.gen_tokens} generated tokens do not "
                f"fit in {m.name}'s context of {m.spec.n_ctx}",
                "lower --prompt-tokens/--gen-tokens, or raise n_ctx in the profile",
            )
        return m

    async def run(self, name: str, params: BenchParams) -> dict[str, Any]:
        m = self.check(name, params)
        if self.lock.locked():
            self._note(m, "waiting", detail="another bench is running")
        async with self.lock:
            return await self._run(m, params)

    def _note(self, m: Managed, phase: str, **kw: Any) -> None:
        self.sched.events.publish({"event": "bench", "model": m.name, "phase": phase, **kw})

    async def _run(self, m: Managed, p: BenchParams) -> dict[str, Any]:
        path = self.sched.registry.model_file(m)
        if not path.is_file():
            path = await self.sched.loader.pull(m.name)
        info = m.info if m.info is not None else await asyncio.to_thread(read_info, path)
        was_loaded = m.state == "ready"
        if p.cold and was_loaded:
            r = m.runner
            if m.in_flight or (r is not None and r.slots.queued):
                raise BenchBusy(
                    f"{m.name} is serving requests; --cold would cut them",
                    "bench it without --cold, or when it is idle",
                )
        runs: list[dict[str, Any]] = []
        async with httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=10.0)) as http:
            for i in range(p.runs):
                load_s = None
                if p.cold and m.state == "ready":
                    self._note(m, "unloading", run=i + 1, runs=p.runs)
                    await self.sched.unload(m.name)
                if m.state in ("stopped", "failed"):
                    self._note(m, "loading", run=i + 1, runs=p.runs)
                    t = time.perf_counter()
                    await self.sched.ensure_ready(m.name, fresh=True)  # a cold start, as it says
                    load_s = time.perf_counter() - t
                self._note(m, "run", run=i + 1, runs=p.runs)
                async with self.sched.slot(m.name) as (_, runner):
                    backend = backend_for(m.spec)
                    one = await _measure(http, runner, backend, info.end_token_ids, p, i)
                    assert runner.pid is not None
                    one["load_s"] = load_s
                    # a process that held another model before: its peak may be that model's
                    rss = tree_rss if runner.reused else tree_peak_rss
                    one["peak_rss"] = await asyncio.to_thread(rss, runner.pid)
                    one["vram"] = await asyncio.to_thread(process_tree_vram, runner.pid)
                runs.append(one)
                self._note(m, "result", run=i + 1, runs=p.runs, result=one)
        machine = probe_machine()
        result: dict[str, Any] = {
            "model": m.name,
            "at": time.time(),
            "was_loaded": was_loaded,
            "params": {
                "prompt_tokens": p.prompt_tokens,
                "gen_tokens": p.gen_tokens,
                "runs": p.runs,
                "cold": p.cold,
            },
            "model_params": {
                "file": str(path),
                "file_size": info.file_size,
                "architecture": info.architecture,
                "quantization": info.quantization,
                "parameter_count": info.parameter_count,
                **m.spec.model_dump(mode="json", exclude_none=True, exclude={"path", "source"}),
            },
            "llama_cpp_python": _version("llama-cpp-python"),
            "machine": {
                "cores_physical": machine.cores_physical,
                "cores_logical": machine.cores_logical,
                "ram_total": machine.ram_total,
                "gpus": [g.name for g in machine.gpus],
            },
            "runs": runs,
            "summary": {k: summarize([r.get(k) for r in runs]) for k in METRICS},
        }
        result["id"] = self.sched.store.save_bench(m.name, result)
        return result


async def _measure(
    http: httpx.AsyncClient,
    runner: Runner,
    backend: Backend,
    ends: tuple[int, ...],
    p: BenchParams,
    run: int,
) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {runner.api_key}"}

    async def count(text: str) -> int:
        path, body = backend.count_request(text)
        r = await http.post(f"{runner.base_url}{path}", json=body, headers=auth)
        r.raise_for_status()
        return backend.count_of(r.json())

    prompt, n_prompt = await _prompt(count, p.prompt_tokens, run)
    body = {
        "prompt": prompt,
        "max_tokens": p.gen_tokens,
        "stream": True,
        "temperature": 0.0,
        "logit_bias": {str(t): -1000.0 for t in ends},
    }
    first = last = None
    pieces: list[str] = []
    finish = None
    t0 = time.perf_counter()
    async with http.stream(
        "POST", f"{runner.base_url}/v1/completions", json=body, headers=auth
    ) as r:
        if r.status_code != 200:
            detail = (await r.aread()).decode(errors="replace")[:300]
            raise ModelLoadError(
                f"{runner.model} answered {r.status_code} to a bench run: {detail}"
            )
        parser = SSEParser()
        async for piece in r.aiter_bytes():
            for ev in parser.feed(piece):
                data = ev.json()
                choices = data.get("choices") if isinstance(data, dict) else None
                if not choices:  # [DONE], or the usage event that ends a stream
                    continue
                now = time.perf_counter()
                first = first if first is not None else now
                last = now
                choice = choices[0]
                pieces.append(choice.get("text") or "")
                finish = choice.get("finish_reason") or finish
    if first is None or last is None:
        raise ModelLoadError(f"{runner.model} sent no token in a bench run")
    if finish == "length":
        n_gen = p.gen_tokens
    else:  # stopped early on a token the bias did not cover: count what came
        n_gen = await count("".join(pieces)) - await count("")
    ttft = first - t0
    return {
        "ttft_s": ttft,
        "prompt_tokens": n_prompt,
        "prompt_tps": n_prompt / ttft,
        "gen_tokens": n_gen,
        "gen_tps": (n_gen - 1) / (last - first) if n_gen > 1 and last > first else None,
    }


async def _prompt(count: Callable[[str], Awaitable[int]], want: int, run: int) -> tuple[str, int]:
    """A prompt of about ``want`` tokens (never more), different from other runs' from its
    second token on."""
    words = _WORDS[run % len(_WORDS) :] + _WORDS[: run % len(_WORDS)]

    def text(n_words: int) -> str:
        return f"{run + 1}. " + " ".join(words[j % len(words)] for j in range(n_words))

    n_words = max(1, want)
    got = await count(text(n_words))
    for _ in range(4):  # tokens per word is about constant: converge in a few steps
        if got == want:
            break
        n_words = max(1, round(n_words * want / got))
        got = await count(text(n_words))
    while got > want and n_words > 1:
        n_words -= 1
        got = await count(text(n_words))
    return text(n_words), got


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
