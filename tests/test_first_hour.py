"""What a new user met in their first hour (issue 15's numbered list), each against the real
command line and a real supervisor: exit code first, then what was said."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from smackctl.cli.app import app

from conftest import Home, launch, shutdown

GREEDY = ["--temperature", "0", "--max-tokens", "4"]


def test_a_chat_to_a_base_model_is_refused_and_points_to_completions(cli: CliRunner) -> None:
    r = cli.invoke(app, ["chat", "-m", "tiny-base", *GREEDY, "What is the capital of France?"])
    assert r.exit_code == 2, r.output  # an error, never an empty answer and exit 0
    assert (
        "tiny-base cannot answer chat messages: it has no chat template in its GGUF file"
        in r.stderr
    )
    assert "POST /v1/completions" in r.stderr and "chat_format:" in r.stderr
    r = cli.invoke(app, ["chat", "-m", "tiny-base", "--json", *GREEDY, "hi"])
    assert r.exit_code == 2 and r.stdout == ""
    # what it can serve, it serves: a text completion
    from smackctl.client import Client, default_url

    with Client(default_url()) as c:
        out = c.post(
            "/v1/completions", {"model": "tiny-base", "prompt": "Paris is", "max_tokens": 3}
        )
    assert out["choices"][0]["text"]


def test_chat_json_stores_the_reply_and_names_the_model(cli: CliRunner, home: Home) -> None:
    # no -m: the profile's default model answers, and is named by its name, not its file
    r = cli.invoke(app, ["chat", "--json", *GREEDY, "first"])
    assert r.exit_code == 0, r.output
    resp = json.loads(r.stdout)
    assert resp["model"] == "tiny-a"
    r = cli.invoke(app, ["chat", "--list", "--json"])
    (conv,) = json.loads(r.stdout)
    assert conv["messages"] == 2 and conv["model"] == "tiny-a"
    r = cli.invoke(app, ["chat", "--continue", "--json", *GREEDY, "second"])
    assert r.exit_code == 0
    assert json.loads(cli.invoke(app, ["chat", "--list", "--json"]).stdout)[0]["messages"] == 4
    r = cli.invoke(app, ["chat", "--list"])
    assert "tiny-a" in r.stdout and " - " not in r.stdout


@pytest.mark.parametrize(
    "args",
    [["models", "ps"], ["models", "list"], ["models", "show", "tiny-a"], ["usage"]],
)
def test_reading_never_starts_the_supervisor(cli: CliRunner, home: Home, args: list[str]) -> None:
    r = cli.invoke(app, args)
    assert r.exit_code == 3, r.output
    assert "the supervisor is not running" in r.stderr
    assert not (home.state / "supervisor.pid").exists() or not _running(home)


def _running(home: Home) -> bool:
    from smackctl.cli._lifecycle import pid_status
    from smackctl.paths import get_paths

    return pid_status(get_paths())[1]


def test_a_start_that_loads_models_again_says_so(cli: CliRunner, home: Home) -> None:
    assert cli.invoke(app, ["start"]).exit_code == 0
    assert cli.invoke(app, ["models", "load", "tiny-b"]).exit_code == 0
    assert cli.invoke(app, ["stop"]).exit_code == 0
    r = cli.invoke(app, ["start"])
    assert r.exit_code == 0, r.output
    assert (
        "loading tiny-b (loaded when the supervisor last stopped); "
        "`smackctl models unload tiny-b` unloads it"
    ) in r.stderr


def test_usage_counts_failed_requests_and_streamed_tokens_in(cli: CliRunner, home: Home) -> None:
    assert cli.invoke(app, ["chat", "-m", "tiny-a", *GREEDY, "a streamed question"]).exit_code == 0
    assert cli.invoke(app, ["chat", "-m", "tiny-base", *GREEDY, "hi"]).exit_code == 2
    r = cli.invoke(app, ["usage", "--json"])
    assert r.exit_code == 0, r.output
    rows = {row["model"]: row for row in json.loads(r.stdout)}
    assert rows["tiny-a"]["tokens_in"] > 0 and rows["tiny-a"]["tokens_out"] == 4
    assert rows["tiny-base"]["requests"] == 1 and rows["tiny-base"]["errors"] == 1


def test_unknown_names_get_suggestions(cli: CliRunner, home: Home) -> None:
    r = cli.invoke(app, ["modles"])
    assert r.exit_code == 2 and "Did you mean 'models'?" in r.output
    r = cli.invoke(app, ["models", "load", "tiny-aa"])
    assert r.exit_code == 1
    assert "unknown model 'tiny-aa'; did you mean 'tiny-a'?" in r.stderr
    assert "fix: use `tiny-a`" in r.stderr
    # a model of another profile (here a shipped one): that profile is named
    r = cli.invoke(app, ["models", "pull", "gemma3-270m"])
    assert r.exit_code == 1
    assert "gemma3-270m is a model of profile small-pair: switch to it with" in r.stderr
    assert "`smackctl profile switch small-pair`" in r.stderr


def test_a_second_start_at_another_port_says_where_it_runs(cli: CliRunner, home: Home) -> None:
    port = int(home.env["SMACKCTL_PORT"])
    assert cli.invoke(app, ["start"]).exit_code == 0
    r = cli.invoke(app, ["start", "--port", str(port + 1)])
    assert r.exit_code == 1
    assert f"smackctl is already running at http://127.0.0.1:{port}" in r.stderr
    assert f"not at http://127.0.0.1:{port + 1}" in r.stderr
    r = cli.invoke(app, ["start"])  # no address asked for: the running one is the answer
    assert r.exit_code == 0 and "already running" in r.stderr


def test_doctor_lists_added_and_missing_models(cli: CliRunner, home: Home, model_dir: Path) -> None:
    profiles = Path(home.env["SMACKCTL_PROFILE_DIR"])
    (profiles / "gone.yaml").write_text("name: gone\nmodels:\n  lost:\n    path: /nowhere/x.gguf\n")
    (profiles / "later.yaml").write_text(
        "name: later\nmodels:\n  fetched:\n    source: https://example.invalid/f.gguf\n"
    )
    assert (
        cli.invoke(
            app, ["models", "add", str(model_dir / "tiny-c.gguf"), "--name", "mine"]
        ).exit_code
        == 0
    )
    r = cli.invoke(app, ["doctor", "--json"])
    checks = {c["check"]: c for c in json.loads(r.stdout)}
    assert checks["profile gone"]["status"] == "fail"
    assert "models.lost.path: no such file: /nowhere/x.gguf" in checks["profile gone"]["detail"]
    assert checks["model fetched"] == {
        "status": "ok",
        "check": "model fetched",
        "detail": "not pulled yet (profile later): pulled on first use",
        "fix": None,
    }
    assert checks["model mine"]["status"] == "ok" and "added" in checks["model mine"]["detail"]
    assert checks["llama-server"]["status"] == "ok"


def test_top_shows_no_memory_for_a_stopped_model(cli: CliRunner, home: Home) -> None:
    assert cli.invoke(app, ["chat", "-m", "tiny-a", *GREEDY, "hi"]).exit_code == 0
    assert cli.invoke(app, ["models", "unload", "tiny-a"]).exit_code == 0
    r = cli.invoke(app, ["top", "--once"])
    assert r.exit_code == 0
    row = next(ln for ln in r.stdout.splitlines() if ln.startswith("tiny-a "))
    assert row.split()[1:3] == ["stopped", "-"]


def test_a_model_waiting_to_restart_holds_no_memory(home: Home) -> None:
    from smackctl.config import ModelSpec
    from smackctl.daemon.runner import Runner, RunnerState
    from smackctl.daemon.scheduler import Managed

    m = Managed(name="x", spec=ModelSpec(path="/x.gguf"), origin="profile", base_dir=Path("/"))
    m.measured_ram = 300
    m.runner = Runner("x", lambda port: [], Path("/dev/null"))
    m.runner.state = RunnerState.READY
    assert m.memory() == (300, 0)
    m.runner.state = RunnerState.BACKOFF  # the process is gone, and so is its memory
    assert m.memory() == (0, 0)


def test_no_color_means_no_escape_sequence(monkeypatch: pytest.MonkeyPatch) -> None:
    from smackctl.cli import output

    def styled() -> str:
        con = output._console(False)
        con.file = io.StringIO()
        con.print("x", style="bold")
        con.print("y", style="dim")
        return con.file.getvalue()

    monkeypatch.setenv("FORCE_COLOR", "1")  # rich: a terminal, whatever the test runs in
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert "\x1b[1m" in styled()
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\x1b[" not in styled()


def test_help_pages_are_whole_and_honest(home: Home) -> None:
    r = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "80"})
    assert r.exit_code == 0 and "..." not in r.stdout.split("Commands:")[1]
    for group in ("models", "profile", "config"):
        page = CliRunner().invoke(app, [group, "--help"], env={"COLUMNS": "80"}).stdout
        assert "..." not in page.split("Commands:")[1], group
    start = CliRunner().invoke(app, ["start", "--help"], env={"SMACKCTL_PORT": "7999"}).stdout
    assert "default: SMACKCTL_PORT, else 7622" in " ".join(start.split())
    assert "[default: 7622]" not in start


def test_small_messages_a_new_user_met(cli: CliRunner, home: Home, tmp_path: Path) -> None:
    r = cli.invoke(app, ["chat", "--session", "999", "hi"])
    assert r.exit_code == 1  # not a usage error: the flag is right, the conversation absent
    assert "no conversation 999" in r.stderr and "smackctl chat --list" in r.stderr

    text = tmp_path / "notes.gguf"
    text.write_text("just some text\n")
    r = cli.invoke(app, ["models", "add", str(text)])
    assert r.exit_code == 2
    assert "is not a GGUF file" in r.stderr and "b'" not in r.stderr
    assert "fix: " in r.stderr

    r = cli.invoke(app, ["logs", "nosuchmodel"])
    assert r.exit_code == 1 and "unknown model 'nosuchmodel'" in r.stderr

    r = cli.invoke(app, ["models", "load", "tiny-b"])
    assert r.exit_code == 0, r.output
    assert "pulling" not in r.stderr  # its file is on disk: nothing is pulled

    r = cli.invoke(app, ["config", "show", "--json"])
    shown = json.loads(r.stdout)
    assert shown["profile"] == "test" and shown["profile_from"] == "the running supervisor"
    lines = cli.invoke(app, ["config", "show"]).stdout.splitlines()
    values_at = {len(ln) - len(ln.split("  ")[-1].lstrip()) for ln in lines}
    assert len(values_at) == 1  # one column of values, whatever the longest label
    assert any(ln.startswith("environment") and "SMACKCTL_PORT=" in ln for ln in lines)
    assert "{" not in "\n".join(lines)  # words, not a Python dict


def test_set_alone_shows_defaults_in_words(home: Home) -> None:
    from smackctl.cli.repl import _command
    from smackctl.cli.session import Session

    s = Session(model=None, system=None, options={"temperature": None, "max_tokens": 8})
    out = io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(out):
        _command(None, s, "/set")  # type: ignore[arg-type]
    assert "temperature = (the profile default)" in out.getvalue()
    assert "max_tokens = 8" in out.getvalue()
    assert "None" not in out.getvalue()


def test_logs_tab_completes_model_names(home: Home) -> None:
    from smackctl.cli.fastcomplete import answer

    env = {
        **os.environ,
        "_SMACKCTL_COMPLETE": "complete_bash",
        "COMP_WORDS": "smackctl logs ti",
        "COMP_CWORD": "2",
    }
    got = answer(env)
    assert got is not None
    assert {"tiny-a", "tiny-b", "tiny-q4"} <= set(got.split())


def test_config_show_without_a_supervisor_names_the_next_profile(home: Home) -> None:
    shutdown(launch(home))  # the profile "test" was active
    r = CliRunner().invoke(app, ["config", "show", "--json"], env={"SMACKCTL_PROFILE": None})
    shown = json.loads(r.stdout)
    assert shown["profile"] == "test"
    assert shown["profile_from"] == "the last active one (used by the next start)"


def test_a_hostile_chat_template_is_refused_streamed_or_not(cli: CliRunner, home: Home) -> None:
    """The template sandbox's refusal is a 400 that names the model and the fix, streamed or
    not; a stream never answers 200 with an empty body. Nothing the template tried ran."""
    from smackctl.client import Client, default_url

    from conftest import HOSTILE_MARK

    HOSTILE_MARK.unlink(missing_ok=True)
    body = {"model": "tiny-hostile", "messages": [{"role": "user", "content": "hi"}]}
    assert cli.invoke(app, ["start"]).exit_code == 0
    import httpx

    token = (home.state / "token").read_text().strip()
    with httpx.Client(base_url=default_url(), headers={"Authorization": f"Bearer {token}"}) as c:
        for stream in (False, True):
            r = c.post("/v1/chat/completions", json={**body, "stream": stream})
            assert r.status_code == 400, (stream, r.text)
            assert r.headers["content-type"].startswith("application/json")
            err = r.json()["error"]
            assert err["code"] == "unsafe_chat_template"
            assert "the chat template of tiny-hostile" in err["message"]
            assert "chat_format:" in err["message"]
    r = cli.invoke(app, ["chat", "-m", "tiny-hostile", "hi"])
    assert r.exit_code == 2 and "the chat template of tiny-hostile" in r.stderr
    assert not HOSTILE_MARK.exists()
    with Client(default_url()) as c:  # the supervisor and the model's runner go on
        out = c.post("/v1/completions", {"model": "tiny-hostile", "prompt": "x", "max_tokens": 2})
    assert out["choices"][0]["text"]
