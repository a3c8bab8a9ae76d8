"""A swap loads the next model in the process of the runner it evicts (daemon/the runner program's
``POST /smackctl/load``), as llama_cpp.server's own ``--config_file`` swaps do.

Which model a process holds is read from ``/proc/PID/maps``: llama.cpp maps the GGUF file it
loaded, and unmaps it when the model is freed."""

from __future__ import annotations

from pathlib import Path

import psutil

from conftest import (
    Home,
    Supervisor,
    ask,
    launch,
    planner_needs,
    profile_yaml,
    runner_pids,
    shutdown,
    wait_for,
)


def mapped_models(pid: int) -> set[str]:
    """The GGUF files a process has mapped (file names)."""
    with open(f"/proc/{pid}/maps") as f:
        return {Path(ln.split()[-1]).name for ln in f if ln.rstrip().endswith(".gguf")}


def runner_log_text(home: Home, model: str) -> str:
    return (home.state / "logs" / f"runner-{model}.log").read_text()


def start(home: Home, model_dir: Path, extra: str, **per_model: str) -> Supervisor:
    text = profile_yaml(model_dir, extra, **per_model)
    (Path(home.env["SMACKCTL_PROFILE_DIR"]) / "test.yaml").write_text(text)
    return launch(home)


def test_max_loaded_swaps_in_one_process_and_frees_the_old_model(
    home: Home, model_dir: Path
) -> None:
    """Evictions for max_loaded alone: the next model loads in the evicted runner's process,
    which frees the old one once the request is answered (memory has room for both). One
    process, holding only the model asked for, its output in that model's log."""
    sup = start(home, model_dir, "memory:\n  max_loaded: 1\n")
    try:
        pid = 0
        for name in ("tiny-a", "tiny-b", "tiny-a", "tiny-c"):
            r = ask(sup, name)
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"] is not None
            state = {m["name"]: m["state"] for m in sup.status()["models"]}
            assert [n for n, s in state.items() if s == "ready"] == [name]
            pid = pid or sup.model(name)["pid"]
            assert sup.model(name)["pid"] == pid  # the same process each time
            wait_for(
                lambda n=name, p=pid: mapped_models(p) == {f"{n}.gguf"}, 10, f"only {name} mapped"
            )
            assert runner_pids(home.root) == [pid]
        log = sup.log()
        assert "evicting tiny-a to make room for tiny-b" in log
        assert f"unloaded tiny-b; its process (pid {pid}) takes the next model" in log
        runner_log = (home.state / "logs" / "runner-tiny-c.log").read_text()
        assert f"loading in the process of tiny-a (pid {pid})" in runner_log
        assert "smackctl runner: loading" in runner_log  # the process writes here now
        assert "tiny-c.gguf" in runner_log
        # tiny-a was freed after the load, once tiny-c's first request was answered
        assert "freed the previous model" not in runner_log
        wait_for(
            lambda: "freed 1 previous model(s)" in runner_log_text(home, "tiny-c"),
            10,
            "the kept model freed",
        )
    finally:
        shutdown(sup)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def test_a_kept_process_s_memory_is_not_stored_as_the_model_s_need(
    home: Home, model_dir: Path
) -> None:
    """A process that held another model keeps the heap that model freed (glibc), so its RSS
    is what the budget counts it for, but not what the model needs: the next plan keeps the
    figure measured in a process of the model's own."""
    needs = planner_needs(home, model_dir)
    sup = start(home, model_dir, "memory:\n  max_loaded: 1\n")
    try:
        assert ask(sup, "tiny-a").status_code == 200
        pid = sup.model("tiny-a")["pid"]
        assert ask(sup, "tiny-b").status_code == 200
        assert sup.model("tiny-b")["pid"] == pid
        wait_for(
            lambda: "freed 1 previous model(s)" in runner_log_text(home, "tiny-b"),
            10,
            "tiny-a freed",
        )
        wait_for(lambda: sup.model("tiny-b")["measured_ram"], 10, "tiny-b measured")
        with sup.client() as c:
            plan = c.post("/api/models/tiny-b/load", json={"estimate_only": True}).json()
        assert plan["measured"] is True
        assert plan["ram"] == needs["tiny-b"]
    finally:
        shutdown(sup)


def test_an_eviction_for_memory_frees_before_it_loads(home: Home, model_dir: Path) -> None:
    """When the next model needs the evicted one's memory, the process frees it first: by
    the time the next model answers, the old file is already unmapped (no polling)."""
    needs = planner_needs(home, model_dir)
    budget = needs["tiny-a"] + needs["tiny-b"] // 2  # one fits, not two
    sup = start(home, model_dir, f"memory:\n  ram: {budget}\n")
    try:
        assert ask(sup, "tiny-a").status_code == 200
        pid = sup.model("tiny-a")["pid"]
        r = ask(sup, "tiny-b")
        assert r.status_code == 200, r.text
        assert sup.model("tiny-b")["pid"] == pid
        assert mapped_models(pid) == {"tiny-b.gguf"}
        assert "freed the previous model" in runner_log_text(home, "tiny-b")
        assert "evicting tiny-a to make room for tiny-b" in sup.log()
    finally:
        shutdown(sup)


def test_a_failed_load_in_a_kept_process_ends_it_and_says_why(home: Home, model_dir: Path) -> None:
    sup = start(home, model_dir, "memory:\n  max_loaded: 1\n")
    try:
        assert ask(sup, "tiny-a").status_code == 200
        pid = sup.model("tiny-a")["pid"]
        r = ask(sup, "alien")  # well-formed GGUF of an architecture llama.cpp does not know
        assert r.status_code == 500
        err = r.json()["error"]
        assert err["type"] == "model_load_error"
        assert "the runner for alien could not load it" in err["message"]
        assert "nonesuch" in err["message"]  # llama.cpp's own line, from alien's log
        assert "smackctl logs alien" in err["message"]
        wait_for(lambda: not psutil.pid_exists(pid), 10, "the process that failed to be ended")
        assert runner_pids(home.root) == []
        assert sup.model("alien")["pid"] is None
        r = ask(sup, "tiny-a")  # and the supervisor goes on: a new process for tiny-a
        assert r.status_code == 200
        assert sup.model("tiny-a")["pid"] != pid
    finally:
        shutdown(sup)


def test_a_model_with_other_server_settings_gets_a_process_of_its_own(
    home: Home, model_dir: Path
) -> None:
    """``args`` may set a llama_cpp.server *server* setting, which a running server cannot
    change: the kept process declines (409) and a fresh one starts."""
    sup = start(
        home,
        model_dir,
        "memory:\n  max_loaded: 1\n",
        **{"tiny-b": "args:\n  disable_ping_events: true"},
    )
    try:
        assert ask(sup, "tiny-a").status_code == 200
        pid = sup.model("tiny-a")["pid"]
        assert ask(sup, "tiny-b").status_code == 200
        new = sup.model("tiny-b")["pid"]
        assert new != pid
        wait_for(lambda: runner_pids(home.root) == [new], 10, "only tiny-b's runner")
        assert mapped_models(new) == {"tiny-b.gguf"}
    finally:
        shutdown(sup)


def test_bench_times_a_load_in_a_new_process(home: Home, model_dir: Path) -> None:
    """``models bench`` measures a cold load and a process's peak memory: its load never
    runs in an evicted runner's process, whose peak would be the other model's."""
    from typer.testing import CliRunner

    from smackctl.cli.app import app

    sup = start(home, model_dir, "memory:\n  max_loaded: 1\n")
    try:
        assert ask(sup, "tiny-a").status_code == 200
        pid = sup.model("tiny-a")["pid"]
        args = ["models", "bench", "tiny-b", "--runs", "1", "--prompt-tokens", "8"]
        r = CliRunner().invoke(app, [*args, "--gen-tokens", "4", "--json"])
        assert r.exit_code == 0, r.stderr
        assert r.stdout.count('"load_s"') >= 1
        new = sup.model("tiny-b")["pid"]
        assert new != pid
        wait_for(lambda: runner_pids(home.root) == [new], 10, "only tiny-b's runner")
        assert ask(sup, "tiny-a").status_code == 200  # a request's swap still keeps it
        assert sup.model("tiny-a")["pid"] == new
    finally:
        shutdown(sup)
