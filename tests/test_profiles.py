"""Profiles: list/show/validate through the CLI, and `profile switch` with real runners."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

from typer.testing import CliRunner

from smackctl.cli.app import app

from conftest import (
    Home,
    Supervisor,
    held_mid_stream,
    launch,
    profile_yaml,
    runner_pids,
    shutdown,
    wait_for,
)

CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4, "temperature": 0}


def write_profile(home: Home, name: str, text: str) -> Path:
    p = Path(home.env["SMACKCTL_PROFILE_DIR"]) / f"{name}.yaml"
    p.write_text(text.replace("name: test", f"name: {name}"))
    return p


def test_list_show_and_active_mark(supervisor: Supervisor, home: Home, model_dir: Path) -> None:
    write_profile(home, "other", profile_yaml(model_dir))
    r = CliRunner().invoke(app, ["profile", "list", "--json"])
    assert r.exit_code == 0, r.stderr
    rows = {p["name"]: p for p in json.loads(r.stdout)}
    assert rows["test"]["active"] is True and rows["other"]["active"] is False
    assert rows["test"]["models"] == [
        "alien",
        "broken",
        "tiny-a",
        "tiny-b",
        "tiny-base",
        "tiny-c",
        "tiny-hostile",
        "tiny-q4",
        "tiny-q8",
    ]
    assert {"default", "small-pair", "battery"} <= set(rows)  # the shipped ones
    r = CliRunner().invoke(app, ["profile", "show", "test", "--json"])
    assert r.exit_code == 0
    shown = json.loads(r.stdout)
    assert shown["models"]["tiny-a"]["aliases"] == ["a"]
    assert shown["routing"]["aliases"] == {"fast": "tiny-b"}


def test_validate_reports_every_problem_with_line_and_key(home: Home, model_dir: Path) -> None:
    good = write_profile(home, "good", profile_yaml(model_dir))
    bad = write_profile(
        home,
        "bad",
        "name: test\nmodels:\n  coder:\n"
        f"    path: {model_dir / 'tiny-a.gguf'}\n    n_ctx: -4\n    colour: red\n",
    )
    big = write_profile(home, "big", profile_yaml(model_dir) + "memory:\n  ram: 10MiB\n")
    r = CliRunner().invoke(app, ["profile", "validate", str(good), str(bad), str(big)])
    assert r.exit_code == 1
    lines = r.stdout.splitlines()
    assert lines[0] == f"ok  {good}"
    assert f"{bad}:5 models.coder.n_ctx: Input should be greater than 0, got -4" in lines
    assert f"{bad}:6 models.coder.colour: unknown key (remove it, or check its spelling)" in lines
    assert any(
        ln.startswith(f"{big} models.tiny-a: needs about") and "memory.ram is 10.0 MiB" in ln
        for ln in lines
    )
    assert "2 of 3 profile(s) have problems" in r.stderr


def write_next(home: Home, model_dir: Path) -> None:
    """Profile "next": tiny-b reloaded with a new n_ctx, tiny-c added, tiny-a kept."""
    write_profile(
        home,
        "next",
        profile_yaml(
            model_dir, **{"tiny-b": "n_ctx: 2048\npreload: true", "tiny-c": "preload: true"}
        ),
    )


def test_dry_run_changes_nothing(supervisor: Supervisor, home: Home, model_dir: Path) -> None:
    write_next(home, model_dir)
    with supervisor.client() as c:
        assert c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-b"}).status_code == 200
        assert c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-a"}).status_code == 200
    before = supervisor.status()
    r = CliRunner().invoke(app, ["profile", "switch", "next", "--dry-run", "--json"])
    assert r.exit_code == 0, r.stderr
    plan = json.loads(r.stdout)
    steps = {s["model"]: (s["action"], s["reason"]) for s in plan["steps"]}
    assert steps["tiny-a"] == ("keep", "")
    assert steps["tiny-b"] == ("reload", "n_ctx 4096 → 2048")
    assert steps["tiny-c"] == ("load", "preload")
    assert plan["fits"] is True and plan["ram_after"] > 0
    after = supervisor.status()
    assert after["profile"] == before["profile"] == "test"
    assert [(m["name"], m["state"], m["pid"], m["n_ctx"]) for m in after["models"]] == [
        (m["name"], m["state"], m["pid"], m["n_ctx"]) for m in before["models"]
    ]
    r = CliRunner().invoke(app, ["profile", "switch", "next", "--dry-run"])
    assert r.exit_code == 0 and "test → next: fits" in r.stdout
    write_profile(
        home,
        "tight",
        profile_yaml(model_dir, **{"tiny-c": "preload: true"}) + "memory:\n  ram: 1MiB\n",
    )
    r = CliRunner().invoke(app, ["profile", "switch", "tight", "--dry-run"])
    assert r.exit_code == 1 and "test → tight: does NOT fit" in r.stdout


def test_switch_under_load_loses_no_request(
    supervisor: Supervisor, home: Home, model_dir: Path
) -> None:
    write_next(home, model_dir)
    with supervisor.client() as c:
        for m in ("tiny-a", "tiny-b"):
            assert c.post("/v1/chat/completions", json={**CHAT, "model": m}).status_code == 200
    old_b = supervisor.model("tiny-b")["pid"]
    stop = threading.Event()
    codes: dict[str, list[int]] = {"tiny-a": [], "tiny-b": []}

    def hammer(model: str) -> None:
        with supervisor.client() as c:
            while not stop.is_set():
                r = c.post("/v1/chat/completions", json={**CHAT, "model": model, "max_tokens": 30})
                codes[model].append(r.status_code)

    threads = [threading.Thread(target=hammer, args=(m,)) for m in ("tiny-a", "tiny-b")]
    for t in threads:
        t.start()
    wait_for(lambda: all(len(v) >= 3 for v in codes.values()), 30, "traffic before the switch")
    r = CliRunner().invoke(app, ["profile", "switch", "next"])
    counts_at_switch_end = {k: len(v) for k, v in codes.items()}
    wait_for(
        lambda: all(len(codes[k]) > counts_at_switch_end[k] + 2 for k in codes),
        30,
        "traffic after the switch",
    )
    stop.set()
    for t in threads:
        t.join(30)
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "profile next active\n"
    for phase in ("planning", "draining", "unloading", "loading", "active"):
        assert f"switch: {phase}" in r.stderr
    assert "tiny-b: unloading" in r.stderr and "tiny-b: ready" in r.stderr
    assert set(codes["tiny-a"]) == {200} and set(codes["tiny-b"]) == {200}, codes
    st = supervisor.status()
    assert st["profile"] == "next"
    b = supervisor.model("tiny-b")
    assert b["n_ctx"] == 2048 and b["pid"] != old_b and b["state"] == "ready"
    assert supervisor.model("tiny-c")["state"] == "ready"  # preloaded by the switch


def test_a_switch_says_what_its_drain_waits_for(
    supervisor: Supervisor, home: Home, model_dir: Path
) -> None:
    """A stream of tiny-b's held mid-answer when the switch comes (tiny-b is reloaded by
    it): the switch says it waits for that request (it sat at "draining", saying nothing)."""
    write_next(home, model_dir)
    with supervisor.client() as c:
        assert c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-b"}).status_code == 200
    with held_mid_stream(supervisor, {**CHAT, "model": "tiny-b", "max_tokens": 1000}):
        switch = subprocess.Popen(
            [sys.executable, "-m", "smackctl", "profile", "switch", "next"],
            env=home.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

        def draining() -> bool:
            with supervisor.client() as c:
                kept = c.get("/api/events", params={"follow": 0, "types": "switch"}).text
            return '"phase": "draining"' in kept

        wait_for(draining, 30, "the switch to drain")
    out, err = switch.communicate(timeout=120)
    assert switch.returncode == 0, err
    assert "switch: draining: waiting for 1 request(s) of tiny-b" in err


def test_failed_switch_rolls_back_and_keeps_serving(
    supervisor: Supervisor, home: Home, model_dir: Path
) -> None:
    write_profile(
        home,
        "broken-next",
        profile_yaml(model_dir, **{"tiny-b": "n_ctx: 1024"}).replace(
            "  alien:\n", "  alien:\n    preload: true\n"
        ),
    )
    with supervisor.client() as c:
        assert c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-b"}).status_code == 200
    r = CliRunner().invoke(app, ["profile", "switch", "broken-next"])
    assert r.exit_code == 1
    assert "switch to broken-next failed, rolled back to test" in r.stderr
    assert "the runner for alien exited with code" in r.stderr
    st = supervisor.status()
    assert st["profile"] == "test" and st["switch_phase"] == "rolled back"
    b = supervisor.model("tiny-b")
    assert b["state"] == "ready" and b["n_ctx"] == 4096  # reloaded with the old parameters
    with supervisor.client() as c:
        assert c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-b"}).status_code == 200


def test_a_failed_switch_unloads_what_it_had_loaded_before_it_failed(
    supervisor: Supervisor, home: Home, model_dir: Path
) -> None:
    # models load in name order: tiny-b (reloaded) and tiny-c (preloaded) come up, then
    # zz-alien's runner fails; the rollback must unload both before the old profile is back
    alien = f"  zz-alien:\n    path: {model_dir / 'alien.gguf'}\n    n_ctx: 512\n"
    alien += "    preload: true\n"
    write_profile(
        home,
        "fails-late",
        profile_yaml(model_dir, **{"tiny-b": "n_ctx: 1024", "tiny-c": "preload: true"}).replace(
            "routing:", alien + "routing:"
        ),
    )
    with supervisor.client() as c:
        assert c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-b"}).status_code == 200
    r = CliRunner().invoke(app, ["profile", "switch", "fails-late"])
    assert r.exit_code == 1
    assert "switch to fails-late failed, rolled back to test" in r.stderr
    assert "the runner for zz-alien exited with code" in r.stderr
    st = supervisor.status()
    assert st["profile"] == "test" and st["switch_phase"] == "rolled back"
    states = {m["name"]: m for m in st["models"]}
    assert states["tiny-c"]["state"] != "ready" and states["tiny-c"]["pid"] is None
    assert states["tiny-b"]["state"] == "ready" and states["tiny-b"]["n_ctx"] == 4096
    wait_for(lambda: len(runner_pids(home.root)) == 1, 15, "only tiny-b's runner to be left")


def test_active_profile_and_preloads_survive_a_restart(home: Home, model_dir: Path) -> None:
    write_profile(home, "next", profile_yaml(model_dir, **{"tiny-c": "preload: true"}))
    sup = launch(home)
    try:
        assert CliRunner().invoke(app, ["profile", "switch", "next"]).exit_code == 0
    finally:
        shutdown(sup)
    sup = launch(home, profile="")
    try:
        assert sup.status()["profile"] == "next"
        wait_for(lambda: sup.model("tiny-c")["state"] == "ready", 30, "preload after restart")
    finally:
        shutdown(sup)


def test_profile_changed_on_disk_is_picked_up_by_switch(
    supervisor: Supervisor, home: Home, model_dir: Path
) -> None:
    with supervisor.client() as c:
        assert c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-a"}).status_code == 200
    write_profile(home, "test", profile_yaml(model_dir, **{"tiny-a": "n_ctx: 1024"}))
    r = CliRunner().invoke(app, ["profile", "switch", "test", "--dry-run", "--json"])
    steps = {s["model"]: s for s in json.loads(r.stdout)["steps"]}
    # the file is the active profile's, so its watch may have applied the change already
    # (then tiny-a is kept, at its new n_ctx): either way, the file on disk is what counts
    assert steps["tiny-a"]["action"] in ("reload", "keep") and steps["tiny-b"]["action"] == "keep"
    assert CliRunner().invoke(app, ["profile", "switch", "test"]).exit_code == 0
    assert supervisor.model("tiny-a")["n_ctx"] == 1024
