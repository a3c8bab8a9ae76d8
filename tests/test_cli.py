"""The command line through typer's CliRunner: exit code first, then the output."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from smackctl.cli.app import app

from conftest import Home


def test_status_when_not_running_exits_3(cli: CliRunner, home: Home) -> None:
    r = cli.invoke(app, ["status"])
    assert r.exit_code == 3
    assert r.stdout == ""
    port = home.env["SMACKCTL_PORT"]
    assert r.stderr == (
        f"smackctl: error: the supervisor is not running at http://127.0.0.1:{port}\n"
        "  fix: start it with `smackctl start`\n"
    )
    r = cli.invoke(app, ["status", "--json"])
    assert r.exit_code == 3
    assert json.loads(r.stdout) == {"running": False, "url": f"http://127.0.0.1:{port}"}
    r = cli.invoke(app, ["--no-autostart", "models", "list"])
    assert r.exit_code == 3
    r = cli.invoke(app, ["--url", "http://127.0.0.1:9", "status"])  # how to start one there
    assert r.exit_code == 3 and "fix: start it with `smackctl start --port 9`" in r.stderr
    r = cli.invoke(app, ["--url", "notaurl", "status"])
    assert r.exit_code == 2 and "--url notaurl: not a supervisor's URL" in r.stderr


def test_start_twice_status_env_stop(cli: CliRunner, home: Home) -> None:
    port = home.env["SMACKCTL_PORT"]
    r = cli.invoke(app, ["start"])
    assert r.exit_code == 0, r.stderr
    assert r.stdout == f"http://127.0.0.1:{port}\n"
    assert "smackctl started (pid" in r.stderr
    r2 = cli.invoke(app, ["start"])
    assert r2.exit_code == 0
    assert r2.stdout == r.stdout
    assert "already running" in r2.stderr
    r4 = cli.invoke(app, ["start", "--profile", "small"])  # a start does not switch: said
    assert r4.exit_code == 0 and "it runs profile test, not small" in r4.stderr
    assert "`smackctl profile switch small`" in r4.stderr
    assert "not small" not in cli.invoke(app, ["start", "--profile", "test"]).stderr
    # a URL named that nothing answers at: never "started" when the one running is elsewhere
    r3 = cli.invoke(app, ["--url", "http://127.0.0.1:9", "chat", "hi"])
    assert r3.exit_code == 1 and "started the supervisor" not in r3.stderr
    assert f"already running at http://127.0.0.1:{port}" in r3.stderr

    r = cli.invoke(app, ["status", "--json"])
    assert r.exit_code == 0
    st = json.loads(r.stdout)
    assert st["running"] is True and st["profile"] == "test"
    assert st["url"] == f"http://127.0.0.1:{port}" and st["uptime"] >= 0
    assert {m["name"] for m in st["models"]} >= {"tiny-a", "tiny-b"}

    token = (home.state / "token").read_text().strip()
    assert (home.state / "token").stat().st_mode & 0o777 == 0o600
    r = cli.invoke(app, ["env"])
    assert r.exit_code == 0
    assert r.stdout == (
        f"export OPENAI_BASE_URL=http://127.0.0.1:{port}/v1\nexport OPENAI_API_KEY={token}\n"
        f"export ANTHROPIC_BASE_URL=http://127.0.0.1:{port}\nexport ANTHROPIC_API_KEY={token}\n"
    )

    r = cli.invoke(app, ["stop"])
    assert r.exit_code == 0
    assert "smackctl stopped (pid" in r.stderr
    assert not (home.state / "supervisor.pid").exists()
    r = cli.invoke(app, ["stop"])
    assert r.exit_code == 0 and "not running" in r.stderr


def test_models_list_show_load_ps_unload(cli: CliRunner, home: Home) -> None:
    r = cli.invoke(app, ["models", "list", "--json"])  # reading never starts the supervisor
    assert r.exit_code == 3 and "the supervisor is not running" in r.stderr
    assert cli.invoke(app, ["start"]).exit_code == 0
    r = cli.invoke(app, ["models", "list", "--json"])
    assert r.exit_code == 0, r.stderr
    models = {m["name"]: m for m in json.loads(r.stdout)}
    assert models["tiny-a"]["gguf"]["architecture"] == "llama"
    assert models["tiny-a"]["state"] == "stopped" and models["tiny-a"]["on_disk"] is True

    r = cli.invoke(app, ["models", "list"])
    assert r.exit_code == 0
    header, *rows = r.stdout.splitlines()
    assert header.split() == [
        "NAME",
        "SIZE",
        "QUANT",
        "ARCH",
        "TRAINED",
        "CTX",
        "N_CTX",
        "ON",
        "DISK",
        "STATE",
        "CAN",
    ]
    assert any(row.split()[0] == "tiny-a" and "F32" in row for row in rows)
    assert any(
        row.split()[0] == "tiny-base" and row.rstrip().endswith("completion") for row in rows
    )

    r = cli.invoke(app, ["models", "show", "a", "--json"])  # an alias
    assert r.exit_code == 0
    shown = json.loads(r.stdout)
    assert shown["name"] == "tiny-a"
    assert shown["gguf"]["layers"] == 2 and shown["gguf"]["vocab_size"] == 259

    r = cli.invoke(app, ["models", "load", "tiny-b"])
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith("tiny-b ready (pid ")
    assert "tiny-b: starting" in r.stderr  # plain progress lines when not a terminal

    r = cli.invoke(app, ["models", "ps", "--json"])
    assert r.exit_code == 0
    ps = json.loads(r.stdout)
    assert [m["name"] for m in ps["models"]] == ["tiny-b"]
    assert ps["models"][0]["rss"] > 10 * 1024**2

    r = cli.invoke(app, ["models", "unload", "tiny-b"])
    assert r.exit_code == 0 and "unloaded tiny-b" in r.stderr
    r = cli.invoke(app, ["models", "unload", "--all"])
    assert r.exit_code == 0 and "nothing was loaded" in r.stderr
    r = cli.invoke(app, ["models", "unload"])
    assert r.exit_code == 2 and "give a model name or --all" in r.stderr


def test_models_load_failure_and_unknown(cli: CliRunner) -> None:
    r = cli.invoke(app, ["models", "load", "alien"])
    assert r.exit_code == 1
    assert "the runner for alien exited with code" in r.stderr
    assert "fix: see the whole log with `smackctl logs alien`" in r.stderr
    r = cli.invoke(app, ["models", "show", "nope"])
    assert r.exit_code == 1
    assert "unknown model 'nope'" in r.stderr and "tiny-a" in r.stderr


def test_models_add_and_rm(cli: CliRunner, model_dir: Path) -> None:
    r = cli.invoke(app, ["models", "add", str(model_dir / "tiny-c.gguf"), "--name", "mine"])
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "mine\n"
    r = cli.invoke(app, ["chat", "-m", "mine", "--temperature", "0", "--max-tokens", "4", "hi"])
    assert r.exit_code == 0, r.stderr
    assert len(r.stdout.strip()) > 0
    r = cli.invoke(app, ["models", "add", str(model_dir / "tiny-c.gguf"), "--name", "../evil"])
    assert r.exit_code == 2 and "invalid model name '../evil'" in r.stderr
    r = cli.invoke(app, ["models", "rm", "mine"])
    assert r.exit_code == 0
    r = cli.invoke(app, ["models", "list", "--json"])
    assert "mine" not in {m["name"] for m in json.loads(r.stdout)}


def test_chat_one_shot_args_and_stdin(cli: CliRunner) -> None:
    r = cli.invoke(app, ["chat", "--temperature", "0", "--max-tokens", "12", "say", "hi"])
    assert r.exit_code == 0, r.stderr
    answer = r.stdout
    # 12 one-byte tokens (a space among them: the answer is not stripped), and a newline
    assert answer.endswith("\n") and len(answer[:-1]) == 12
    assert answer.strip().isprintable()
    r2 = cli.invoke(app, ["chat", "--temperature", "0", "--max-tokens", "12"], input="say hi")
    assert r2.exit_code == 0
    assert r2.stdout == answer  # the same prompt from stdin, the same greedy answer
    r3 = cli.invoke(
        app, ["chat", "--temperature", "0", "--max-tokens", "12", "hi"], input="some notes"
    )
    assert r3.exit_code == 0 and r3.stdout != answer  # stdin goes before the prompt


def test_chat_errors_are_one_clear_line_and_nothing_on_stdout(cli: CliRunner) -> None:
    r = cli.invoke(app, ["chat", "-m", "nope", "hello"])
    assert r.exit_code == 1
    assert r.stdout == ""
    assert r.stderr.splitlines()[-2].startswith("smackctl: error: unknown model 'nope' (known ")
    assert r.stderr.splitlines()[-1] == (
        "  fix: add one with `smackctl models add PATH --name NAME`, or see `smackctl models list`"
    )
    r = cli.invoke(app, ["chat"], input="")
    assert r.exit_code == 2 and "no prompt given" in r.stderr


def test_logs_show_supervisor_and_runner_logs(cli: CliRunner) -> None:
    assert cli.invoke(app, ["models", "load", "tiny-a"]).exit_code == 0
    r = cli.invoke(app, ["logs"])
    assert r.exit_code == 0
    assert "ready at http://127.0.0.1:" in r.stdout
    r = cli.invoke(app, ["logs", "tiny-a", "-n", "400"])
    assert r.exit_code == 0
    assert (
        "smackctl.daemon.backends.llama_cpp_python.runner" in r.stdout
        and "--interrupt_requests=False" in r.stdout
    )
    # an alias names its model's log (tiny-a's own alias, and routing's `fast` → tiny-b)
    assert cli.invoke(app, ["logs", "a", "-n", "400"]).stdout == r.stdout
    assert cli.invoke(app, ["models", "load", "tiny-b"]).exit_code == 0
    r = cli.invoke(app, ["logs", "fast", "-n", "5"])
    assert r.exit_code == 0 and "no log yet" not in r.stderr and r.stdout.strip()
    r = cli.invoke(app, ["logs", "../../etc/passwd"])
    assert r.exit_code == 2


def test_typer_coercion_skipped_only_where_it_cannot_change_the_value() -> None:
    """cli/app.py builds typer's pydantic coercion lazily: for None, and for a str given to a
    plain ``str`` parameter, it answers without it. Every parameter of the tree, for None and
    for a string, must get what typer's own coercion gives (value or error)."""
    from typer import _coercion
    from typer.core import _TyperParameter

    from smackctl.cli.app import command_tree

    def walk(cmd: Any, path: tuple[str, ...]) -> Iterator[tuple[Any, Any]]:
        for p in cmd.params:
            if isinstance(p, _TyperParameter):
                yield cmd, p
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, (*path, name))

    def outcome(runtime: Any, value: Any, param: Any, ctx: Any) -> object:
        try:
            return ("ok", runtime.coerce(value, param=param, ctx=ctx))
        except Exception as exc:  # typer's BadParameter, compared by type and text
            return ("error", type(exc).__name__, str(exc))

    checked = 0
    for cmd, param in walk(command_tree(), ()):
        ctx = cmd.context_class(cmd)
        for value in (None, "7", "some text"):
            param._runtime_param = None  # not yet built, as in a fresh process
            ours = outcome(param.get_runtime_param(), value, param, ctx)
            typers = outcome(
                _coercion.build_runtime_param(param.type_descriptor), value, param, ctx
            )
            assert ours == typers, (cmd.name, param.name, value)
            checked += 1
    assert checked > 100


def test_a_command_with_only_default_options_does_not_import_pydantic(home: Home) -> None:
    code = (
        "import sys\nfrom smackctl.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('pydantic' in sys.modules, file=sys.stderr)"
    )
    run = [sys.executable, "-c", code]
    r = subprocess.run([*run, "config", "path"], env=home.env, capture_output=True, text=True)
    assert r.returncode == 0 and "state.db" in r.stdout
    assert r.stderr.strip() == "False"
    # a value that needs coercion still gets typer's coercion and typer's error
    r = subprocess.run([*run, "logs", "-n", "abc"], env=home.env, capture_output=True, text=True)
    assert "Invalid value for '--lines' / '-n'" in r.stderr
    assert r.stderr.strip().endswith("True")
