"""The llama-server backend end to end: real llama-server processes (the binary `make install`
builds from the llama.cpp that llama-cpp-python vendors) on tiny quantized models."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from typer.testing import CliRunner

from smackctl.cli.app import app
from smackctl.config import ModelSpec
from smackctl.daemon.backends.base import backend_for, find_llama_server

from conftest import (
    Home,
    Supervisor,
    launch,
    ls_profile,
    runner_pids,
    shutdown,
    signal_mid_stream,
    wait_for,
)

CHAT = {"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 6}


@pytest.fixture
def ls(home: Home, model_dir: Path) -> Iterator[Supervisor]:
    (Path(home.env["SMACKCTL_PROFILE_DIR"]) / "ls.yaml").write_text(ls_profile(model_dir))
    sup = launch(home, profile="ls")
    yield sup
    shutdown(sup)


def test_the_binary_is_there_and_runs_with_safe_flags(model_dir: Path) -> None:
    binary = find_llama_server()
    assert binary is not None, "make install builds llama-server into the venv"
    spec = ModelSpec(path="/m.gguf", n_ctx=1024, parallel=3, threads=2, backend="llama-server")
    argv = backend_for(spec).argv(spec, Path("/m.gguf"), 4242, "quick")
    assert argv[0] == binary
    flags = " ".join(argv)
    for want in (
        "--host 127.0.0.1",
        "--port 4242",
        "--no-webui",
        "--parallel 3",
        "--ctx-size 3072",  # n_ctx for each of the slots
        "--threads 2",
        "--cache-ram 0",
        "--flash-attn off",  # on the CPU: estimate.flash_attention
        "--fit off",
        "--no-warmup",
        "--jinja",
        "--metrics",
        "--alias quick",
    ):
        assert want in flags
    assert backend_for(spec).key_env == "LLAMA_API_KEY"


def test_cache_ram_is_passed_on_and_counted_in_the_model_s_memory(model_dir: Path) -> None:
    """``cache_ram`` (llama-server's prompt caches in RAM: more conversations than slots) is
    its ``--cache-ram`` in MiB, and the whole of it is in the estimate the planner counts;
    on llama-cpp-python, which has no such cache, the profile is refused and says why."""
    from pydantic import ValidationError

    from smackctl.estimate import estimate_for
    from smackctl.gguf import read_info

    plain = ModelSpec(path="/m.gguf", backend="llama-server", parallel=4)
    cached = ModelSpec(path="/m.gguf", backend="llama-server", parallel=4, cache_ram="64MiB")
    assert "--cache-ram 64" in " ".join(backend_for(cached).argv(cached, Path("/m"), 1, "q"))
    info = read_info(model_dir / "tiny-a.gguf")
    more = estimate_for(info, cached).ram - estimate_for(info, plain).ram
    assert more == 64 * 2**20
    assert plain.load_key() != cached.load_key()  # a change reloads the runner
    with pytest.raises(ValidationError, match="`cache_ram` is llama-server's"):
        ModelSpec(path="/m.gguf", cache_ram="64MiB")


def test_flash_attention_is_off_on_the_cpu_and_its_scores_are_counted(model_dir: Path) -> None:
    """On the CPU llama-server runs without flash attention (a token over a long context
    ~2× faster here): its estimate then holds a micro-batch's KQ scores over a slot's
    context (each slot its own stream of the cache); ``args: {flash-attn: on}`` (last on
    the command line) and offloaded layers (llama.cpp's ``auto``) keep the smaller scratch
    of flash attention."""
    from smackctl.estimate import estimate_for
    from smackctl.gguf import read_info

    info = read_info(model_dir / "tiny-a.gguf")
    cpu = ModelSpec(path="/m", backend="llama-server", n_ctx=1024, parallel=2)
    fa = ModelSpec(path="/m", backend="llama-server", n_ctx=1024, parallel=2,
                   args={"flash-attn": "on"})  # fmt: skip
    gpu = ModelSpec(path="/m", backend="llama-server", n_ctx=1024, parallel=2, n_gpu_layers=-1)
    flags = " ".join(backend_for(fa).argv(fa, Path("/m"), 1, "q"))
    assert flags.rindex("--flash-attn") == flags.index("--flash-attn on")  # the last wins
    assert "--flash-attn auto" in " ".join(backend_for(gpu).argv(gpu, Path("/m"), 1, "q"))
    scores = 512 * 1024 * (info.heads or 1) * 4  # a micro-batch over a slot's context
    assert estimate_for(info, cpu).compute == scores
    assert estimate_for(info, fa).compute < scores and estimate_for(info, gpu).compute < scores
    assert (
        estimate_for(info, cpu).ram - estimate_for(info, fa).ram
        == scores - estimate_for(info, fa).compute
    )


def test_on_demand_load_stream_and_not_usage_and_names(ls: Supervisor) -> None:
    with ls.client() as c:
        r = c.post("/v1/chat/completions", json={**CHAT, "model": "q"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "quick"
        assert body["usage"]["completion_tokens"] == 6 and body["usage"]["prompt_tokens"] > 1
        with c.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as s:
            assert s.status_code == 200
            events = [ln[6:] for ln in s.iter_lines() if ln.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert all(json.loads(e)["choices"] for e in events[:-1])  # usage not asked: not sent
        opts = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
        with c.stream("POST", "/v1/chat/completions", json=opts) as s:
            events = [ln[6:] for ln in s.iter_lines() if ln.startswith("data: ")]
        assert json.loads(events[-2])["usage"]["completion_tokens"] == 6
        r = c.post("/v1/completions", json={"model": "quick", "prompt": "abc", "max_tokens": 3})
        assert r.status_code == 200 and r.json()["choices"][0]["text"]
    m = ls.model("quick")
    assert m["state"] == "ready" and m["requests_served"] == 4
    cmd = psutil.Process(m["pid"]).cmdline()
    assert Path(cmd[0]).name == "llama-server"
    r = CliRunner().invoke(app, ["usage", "--json"])
    rows = {row["model"]: row for row in json.loads(r.stdout)}
    assert rows["quick"]["tokens_in"] > 0 and rows["quick"]["tokens_out"] == 6 * 3 + 3


def test_a_prompt_longer_than_the_context_is_one_error_on_either_backend(
    ls: Supervisor,
) -> None:
    """llama-server, llama_cpp.server and llama-cpp-python's own stream each say it their
    way (a 400, a 400, a 500 named ValueError): the client gets one 400, OpenAI's code, the
    sizes and the fix, streamed or not; the CLI says it with its fix line, exit 2 (usage)."""
    long = "hello " * 200  # a byte a token: 1,200 tokens, the context holds 512
    with ls.client() as c:
        for model in ("other", "python"):  # llama-server, llama-cpp-python
            for stream in (False, True):
                asked = {"model": model, "stream": stream, "max_tokens": 4}
                for path, body in (("/v1/chat/completions", {"messages": [
                        {"role": "user", "content": long}]}),
                        ("/v1/completions", {"prompt": long})):  # fmt: skip
                    r = c.post(path, json={**asked, **body})
                    assert r.status_code == 400, (model, stream, path, r.text)
                    err = r.json()["error"]
                    assert err["code"] == "context_length_exceeded", err
                    assert f"does not fit the context of {model} (512 tokens)" in err["message"]
                    assert "n_ctx" in err["hint"] and "ValueError" not in err["message"]
    r = CliRunner().invoke(app, ["chat", "-m", "python", "--max-tokens", "4"], input=long)
    assert r.exit_code == 2
    assert "does not fit the context of python (512 tokens)" in r.stderr
    assert "fix: shorten the prompt" in r.stderr


def test_parallel_requests_are_decoded_together(ls: Supervisor) -> None:
    """parallel: 4 lets four requests into the runner at once (continuous batching), and a
    fifth waits for a slot. The evidence is llama-server's own log: four slots take a task
    before any slot lets one go. The five requests leave together (a barrier), and each
    generates for far longer than the threads take to send them."""
    import re
    import threading

    with ls.client() as c:
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
    log = ls.home.state / "logs" / "runner-quick.log"
    # the first request's release is logged after its answer: wait for it
    before = wait_for(
        lambda: "stop processing" in (text := log.read_text(errors="replace")) and len(text),
        10,
        "the first request's slot to be released",
    )
    long = {**CHAT, "max_tokens": 1500, "stream": True}
    barrier = threading.Barrier(5)

    def stream_one(_: int) -> int:
        with httpx.Client(base_url=ls.url, headers={"Authorization": f"Bearer {ls.token}"}) as c:
            barrier.wait(30)
            with c.stream("POST", "/v1/chat/completions", json=long, timeout=120) as s:
                return sum(1 for ln in s.iter_lines() if '"content"' in ln)

    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        counts = list(pool.map(stream_one, range(5)))
    assert all(n > 0 for n in counts)
    events = re.findall(
        r"slot (launch_slot_|     release): id +(\d+)", log.read_text(errors="replace")[before:]
    )
    first_release = next(i for i, (kind, _) in enumerate(events) if kind.strip() == "release")
    launched = {slot for kind, slot in events[:first_release] if kind == "launch_slot_"}
    assert len(launched) == 4, events
    assert sum(kind == "launch_slot_" for kind, _ in events) == 5
    assert ls.status()["cpu"]["busy"] == 0  # every request gave its share of the cores back


def test_security_defaults_of_a_runner(ls: Supervisor) -> None:
    with ls.client() as c:
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
    m = ls.model("quick")
    proc = psutil.Process(m["pid"])
    conns = [c for c in proc.net_connections() if c.status == psutil.CONN_LISTEN]
    assert conns and all(c.laddr.ip == "127.0.0.1" for c in conns)
    port = m["port"]
    # without the key the runner refuses; the key is in no command line and in no log
    r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=CHAT)
    assert r.status_code == 401
    log = (ls.home.state / "logs" / "runner-quick.log").read_text(errors="replace")
    assert "LLAMA_API_KEY" not in " ".join(proc.cmdline())
    key = proc.environ()["LLAMA_API_KEY"]
    assert len(key) >= 32 and key not in log and key not in " ".join(proc.cmdline())
    assert httpx.get(f"http://127.0.0.1:{port}/").status_code in (401, 404)  # no web UI


def test_crash_restart_eviction_and_ttl(home: Home, model_dir: Path) -> None:
    extra = "memory:\n  max_loaded: 1\n"
    (Path(home.env["SMACKCTL_PROFILE_DIR"]) / "ls.yaml").write_text(
        ls_profile(model_dir, extra, quick="ttl: 2")
    )
    sup = launch(home, profile="ls")
    try:
        with sup.client() as c:
            assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
            pid = sup.model("quick")["pid"]
            os.kill(pid, signal.SIGKILL)
            r = c.post("/v1/chat/completions", json=CHAT)  # waits for the restart
            assert r.status_code == 200, r.text
            m = sup.model("quick")
            assert m["pid"] != pid and m["crashes"] == 1
            assert m["last_crash"].startswith("was killed by SIGKILL")
            # another model: max_loaded 1 evicts the first; its process is gone
            assert (
                c.post("/v1/chat/completions", json={**CHAT, "model": "other"}).status_code == 200
            )
            assert sup.model("quick")["state"] == "stopped"
            assert not psutil.pid_exists(m["pid"]) or psutil.Process(m["pid"]).status() == "zombie"
            # and both backends in one profile: a llama-cpp-python model evicts this one
            r = c.post("/v1/chat/completions", json={**CHAT, "model": "python"})
            assert r.status_code == 200
            assert sup.model("other")["state"] == "stopped"
            assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
        wait_for(lambda: sup.model("quick")["state"] == "stopped", 20, "quick unloaded by its ttl")
        assert "idle for more than 2s" in sup.log()
    finally:
        shutdown(sup)
    assert not runner_pids(home.root)


def test_the_openai_client_bench_and_metrics(ls: Supervisor) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=ls.url + "/v1", api_key=ls.token)
    out = client.chat.completions.create(
        model="quick", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert out.model == "quick" and out.choices[0].message.content
    chunks = list(
        client.chat.completions.create(
            model="quick", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
        )
    )
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    r = CliRunner().invoke(
        app,
        [
            "models",
            "bench",
            "quick",
            "--runs",
            "1",
            "--prompt-tokens",
            "16",
            "--gen-tokens",
            "8",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    run = (result[0] if isinstance(result, list) else result)["runs"][0]
    assert run["prompt_tokens"] <= 16 and run["gen_tokens"] == 8 and run["peak_rss"] > 0
    with ls.client() as c:
        metrics = c.get("/metrics").text
    assert 'model="quick"' in metrics


def test_a_missing_binary_is_a_clear_error(home: Home, model_dir: Path) -> None:
    text = ls_profile(model_dir).replace(
        "backend: llama-server\n", "backend: llama-server\nllama_server: /nowhere/llama-server\n"
    )
    (Path(home.env["SMACKCTL_PROFILE_DIR"]) / "ls.yaml").write_text(text)
    sup = launch(home, profile="ls")
    try:
        with sup.client() as c:
            r = c.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 500
        msg = r.json()["error"]["message"]
        assert "no llama-server binary (/nowhere/llama-server)" in msg
        assert "make install" in msg and "llama_server: PATH" in msg
        assert sup.proc.poll() is None
    finally:
        shutdown(sup)


def test_a_profile_switch_under_load_loses_no_request(
    ls: Supervisor, home: Home, model_dir: Path
) -> None:
    """Switch to a profile where `quick` is reloaded with another n_ctx and `other` kept:
    requests to both run throughout, and every one is answered."""
    import threading

    (Path(home.env["SMACKCTL_PROFILE_DIR"]) / "ls2.yaml").write_text(
        ls_profile(model_dir)
        .replace("name: ls\n", "name: ls2\n")
        .replace("n_ctx: 2048\n    parallel: 4", "n_ctx: 1024\n    parallel: 2")
    )
    with ls.client() as c:
        for m in ("quick", "other"):
            assert c.post("/v1/chat/completions", json={**CHAT, "model": m}).status_code == 200
    old = ls.model("quick")["pid"]
    stop = threading.Event()
    codes: dict[str, list[int]] = {"quick": [], "other": []}

    def hammer(model: str) -> None:
        with ls.client() as c:
            while not stop.is_set():
                r = c.post("/v1/chat/completions", json={**CHAT, "model": model})
                codes[model].append(r.status_code)

    threads = [threading.Thread(target=hammer, args=(m,)) for m in codes]
    for t in threads:
        t.start()
    wait_for(lambda: all(len(v) >= 3 for v in codes.values()), 30, "traffic before the switch")
    r = CliRunner().invoke(app, ["profile", "switch", "ls2"])
    at_end = {k: len(v) for k, v in codes.items()}
    wait_for(lambda: all(len(codes[k]) > at_end[k] + 2 for k in codes), 30, "traffic after")
    stop.set()
    for t in threads:
        t.join(30)
    assert r.exit_code == 0, r.output
    assert set(codes["quick"]) == {200} and set(codes["other"]) == {200}, codes
    m = ls.model("quick")
    assert m["n_ctx"] == 1024 and m["parallel"] == 2 and m["pid"] != old
    assert "--ctx-size 2048" in " ".join(psutil.Process(m["pid"]).cmdline())  # 1024 × 2 slots


def test_embeddings_from_a_model_served_for_them(home: Home, model_dir: Path) -> None:
    """`args: {embeddings: true}` runs llama-server for embeddings (its --embeddings)."""
    (Path(home.env["SMACKCTL_PROFILE_DIR"]) / "ls.yaml").write_text(
        ls_profile(model_dir, quick="args: {embeddings: true, pooling: mean}")
    )
    sup = launch(home, profile="ls")
    try:
        with sup.client() as c:
            r = c.post("/v1/embeddings", json={"model": "quick", "input": ["one", "two words"]})
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert len(data) == 2 and len(data[0]["embedding"]) == 64  # the tiny model's width
        assert data[0]["embedding"] != data[1]["embedding"]
    finally:
        shutdown(sup)


def test_eviction_by_memory_counts_the_slots(home: Home, model_dir: Path) -> None:
    """A RAM budget with room for `quick` (4 slots) and nothing beside it: loading `other`
    evicts it. The need is the llama-server estimate (KV cache × slots, no Python); once
    loaded, `quick` counts what its process holds (any llama-server: more than 4 MiB)."""
    from smackctl.estimate import estimate_for
    from smackctl.gguf import read_info

    # flash attention (a small scratch): what is counted is the slots' KV cache, all
    # resident once loaded (without it, the scores' scratch is counted, resident only as a
    # long prompt is read)
    fa = 'args: {flash-attn: "on"}'
    base = ls_profile(model_dir, quick=fa).replace(
        "    threads: 1\n  python:", f"    threads: 1\n    {fa}\n  python:"
    )  # other's too
    quick = ModelSpec(path="x", n_ctx=2048, parallel=4, backend="llama-server",
                      args={"flash-attn": "on"})  # fmt: skip
    other = ModelSpec(path="x", n_ctx=512, backend="llama-server", args={"flash-attn": "on"})
    need_quick = estimate_for(read_info(model_dir / "tiny-q4.gguf"), quick).ram
    need_other = estimate_for(read_info(model_dir / "tiny-q8.gguf"), other).ram
    assert need_quick > need_other  # the slots' KV cache is counted
    budget = need_quick + 2**20
    (Path(home.env["SMACKCTL_PROFILE_DIR"]) / "ls.yaml").write_text(
        base + f"memory:\n  ram: {budget}\n  spare_runner: false\n"
    )
    sup = launch(home, profile="ls")
    try:
        with sup.client() as c:
            assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
            assert (
                c.post("/v1/chat/completions", json={**CHAT, "model": "other"}).status_code == 200
            )
            assert sup.model("quick")["state"] == "stopped"
            assert sup.model("other")["state"] == "ready"
            assert "evicting quick to make room for other" in sup.log()
    finally:
        shutdown(sup)


def test_a_runner_stopped_mid_stream_is_found_out_and_restarted(
    home: Home, model_dir: Path
) -> None:
    """SIGSTOP (a hang, from outside) of a llama-server runner while it streams: its /health
    fails the probe after the model's hang_timeout, the stream ends with an error event that
    says so, and the runner is restarted."""
    (Path(home.env["SMACKCTL_PROFILE_DIR"]) / "ls.yaml").write_text(
        ls_profile(model_dir, quick="hang_timeout: 1")
    )
    sup = launch(home, profile="ls")
    try:
        with sup.client(timeout=120) as c:
            assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
            pid = sup.model("quick")["pid"]
            rest = signal_mid_stream(c, {**CHAT, "max_tokens": 1500}, pid, signal.SIGSTOP)
        err = json.loads(rest[-1][6:])["error"]
        assert "the runner for quick hung (no progress for 1s" in err["message"]
        wait_for(lambda: sup.model("quick")["state"] == "ready", 30, "the restart")
        m = sup.model("quick")
        assert m["pid"] != pid and m["crashes"] == 1
    finally:
        shutdown(sup)
