"""Operator features against a real supervisor: metrics, top, usage, logs, doctor, config."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
from typer.testing import CliRunner

from smackctl.cli.app import app

from conftest import Home, Supervisor, launch, shutdown

CHAT = {
    "model": "tiny-a",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 5,
    "temperature": 0,
}


def _traffic(sup: Supervisor) -> str:
    with sup.client() as c:
        r = c.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 200
        with c.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as s:
            list(s.iter_lines())
        assert c.post("/v1/chat/completions", json={**CHAT, "model": "nope"}).status_code == 404
        return r.headers["x-request-id"]


def test_metrics_in_prometheus_format(supervisor: Supervisor) -> None:
    _traffic(supervisor)
    assert httpx.get(supervisor.url + "/metrics").status_code == 401  # the token is needed
    with supervisor.client() as c:
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    route = 'route="/v1/chat/completions"'
    assert f'smackctl_requests_total{{model="tiny-a",{route},status="200"}} 2.0' in text
    assert 'smackctl_tokens_total{direction="out",model="tiny-a"}' in text
    assert 'smackctl_time_to_first_token_seconds_count{model="tiny-a"} 1.0' in text
    assert 'smackctl_request_duration_seconds_count{model="tiny-a"} 2.0' in text
    assert 'smackctl_model_loads_total{model="tiny-a"} 1.0' in text
    assert 'smackctl_queue_depth{model="tiny-a"} 0.0' in text
    assert re.search(r'smackctl_runner_memory_bytes\{kind="ram",model="tiny-a"\} [1-9]', text)
    assert "smackctl_uptime_seconds " in text


def test_request_log_line_usage_and_logs_since(supervisor: Supervisor) -> None:
    rid = _traffic(supervisor)
    line = next(ln for ln in supervisor.log().splitlines() if f"id={rid}" in ln)
    assert "model=tiny-a route=/v1/chat/completions status=200 tokens_in=" in line
    runner = CliRunner()
    r = runner.invoke(app, ["usage", "--json"])
    assert r.exit_code == 0, r.stderr
    rows = {r["model"]: r for r in json.loads(r.stdout)}
    row = rows["tiny-a"]
    assert row["requests"] == 2 and row["errors"] == 0
    # the request for an unknown model was refused: counted, as an error, under its name
    assert rows["nope"]["requests"] == 1 and rows["nope"]["errors"] == 1
    assert set(rows) == {"tiny-a", "nope"}
    assert row["tokens_out"] >= 5
    r = runner.invoke(app, ["logs", "--since", "10m", "-n", "1000"])
    assert r.exit_code == 0 and f"id={rid}" in r.stdout
    r = runner.invoke(app, ["logs", "--since", "soon"])
    assert r.exit_code == 2 and "is not a duration" in r.stderr


def test_top_once_shows_a_frame(supervisor: Supervisor) -> None:
    _traffic(supervisor)
    r = CliRunner().invoke(app, ["top", "--once"])
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("smackctl 0.1.0  pid ") and "profile test" in lines[0]
    assert lines[1].startswith("RAM ") and "budget" in lines[1]
    assert "q quits" not in r.stdout  # one frame: nothing to quit
    assert all(len(line) <= 80 for line in lines[:2])  # the head fits a terminal
    assert lines[2].split() == [
        "MODEL",
        "STATE",
        "RAM",
        "VRAM",
        "TOKENS/S",
        "IN",
        "FLIGHT",
        "QUEUED",
        "REQUESTS",
    ]
    row = lines[3].split()
    assert row[0] == "tiny-a" and row[1] == "ready" and row[-1] == "2"


def test_json_logs(home: Home) -> None:
    sup = launch(home, "--json-logs")
    try:
        rid = _traffic(sup)
    finally:
        shutdown(sup)
    records = [json.loads(ln) for ln in sup.log().splitlines()]
    req = next(r for r in records if r.get("id") == rid)
    assert req["logger"] == "smackctl.requests" and req["status"] == "200"
    assert req["model"] == "tiny-a"


def test_doctor_and_config(supervisor: Supervisor, home: Home) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["doctor", "--json"])
    assert r.exit_code == 0, r.stdout
    checks = {c["check"]: c for c in json.loads(r.stdout)}
    assert checks["llama-cpp-python"]["status"] == "ok"
    assert "0.3.36" in checks["llama-cpp-python"]["detail"]
    from smackctl.hardware import probe_gpus

    if probe_gpus():  # a machine with a driver: one line a GPU
        assert checks["gpu 0"]["status"] == "ok" and "free of" in checks["gpu 0"]["detail"]
    else:
        assert checks["gpu"]["detail"] == "no NVIDIA GPU seen through NVML (CPU only)"
    assert checks["token"]["status"] == "ok" and "mode 600" in checks["token"]["detail"]
    assert (
        checks["supervisor"]["status"] == "ok" and "profile test" in checks["supervisor"]["detail"]
    )
    assert checks["profile test"]["status"] == "ok"
    r = runner.invoke(app, ["config", "path", "--json"])
    paths = json.loads(r.stdout)
    assert paths["state"] == str(home.root / "state") and paths["models"].startswith(str(home.root))
    (home.state / "token").chmod(0o644)
    r = runner.invoke(app, ["doctor"])
    assert r.exit_code == 1
    assert f"fix: chmod 600 {home.state / 'token'}" in r.stdout
    (home.state / "token").chmod(0o600)
    Path(home.env["SMACKCTL_PROFILE_DIR"], "bad.yaml").write_text("models: [\n")
    r = runner.invoke(app, ["doctor"])
    assert r.exit_code == 1 and "fail  profile bad" in r.stdout
