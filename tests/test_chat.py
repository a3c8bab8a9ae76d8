"""`smackctl chat` against real runners: one-shot options, the REPL, a real terminal."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
from typer.testing import CliRunner

from smackctl.cli.app import app

from conftest import Home, paused, smackctl, wait_for

GREEDY = ["-m", "tiny-a", "--temperature", "0", "--max-tokens", "6"]


def test_json_no_stream_and_stats(cli: CliRunner) -> None:
    r = cli.invoke(app, ["chat", *GREEDY, "--json", "hi"])
    assert r.exit_code == 0, r.stderr
    resp = json.loads(r.stdout)  # nothing but the OpenAI response object on stdout
    assert resp["object"] == "chat.completion"
    text = resp["choices"][0]["message"]["content"]
    r = cli.invoke(app, ["chat", *GREEDY, "--no-stream", "hi"])
    assert r.exit_code == 0
    assert r.stdout == text + "\n"
    r = cli.invoke(app, ["chat", *GREEDY, "hi"])
    assert r.stdout == text + "\n"  # streamed, the same greedy answer
    assert "6 tokens, first token" in r.stderr and "tokens/s" in r.stderr
    # the tiny model never stops by itself: 6 is the limit, and the line says it cut there
    assert "cut at the token limit (max_tokens)" in r.stderr
    r = cli.invoke(app, ["complete", "--max-tokens", "3", "Paris is"])  # the same line
    assert r.exit_code == 0, r.stderr
    assert "3 tokens, first token" in r.stderr and "cut at the token limit" in r.stderr


def test_continue_resumes_the_last_conversation(cli: CliRunner) -> None:
    assert cli.invoke(app, ["chat", *GREEDY, "first question"]).exit_code == 0
    r = cli.invoke(app, ["chat", *GREEDY, "--continue", "second question"])
    assert r.exit_code == 0, r.stderr
    r = cli.invoke(app, ["chat", "--list", "--json"])
    convs = json.loads(r.stdout)
    assert convs[0]["messages"] == 4 and convs[0]["title"] == "first question"
    r = cli.invoke(app, ["chat", "--session", "999", "x"])
    assert r.exit_code == 1 and "no conversation 999" in r.stderr


def test_repl_commands_multiline_save_load_and_model_switch(cli: CliRunner, tmp_path: Path) -> None:
    saved = tmp_path / "conv.json"
    script = "\n".join([
        "hello",
        "/set max_tokens 3",
        "/set temperature warm",
        "/stats",
        "/model nope",
        "/model tiny-b",
        '"""',
        "line one",
        "line two",
        '"""',
        f"/save {saved}",
        "/clear",
        f"/load {saved}",
        "/bogus",
        "/exit",
    ])  # fmt: skip
    r = cli.invoke(app, ["chat", "-i", *GREEDY], input=script + "\n")
    assert r.exit_code == 0, r.stderr
    out = r.stdout
    assert "max_tokens = 3" in out
    assert "temperature needs a number, got 'warm'" in out
    assert "6 tokens, first token" in out  # /stats of the first reply
    assert "unknown model 'nope'" in r.stderr  # an error, and the REPL goes on
    assert "model: tiny-b" in out
    assert f"saved 4 messages to {saved}" in out
    assert "new conversation" in out
    assert f"loaded 4 messages from {saved}" in out
    assert "unknown command /bogus; known: /help /model" in out
    data = json.loads(saved.read_text())
    assert data["model"] == "tiny-b"
    assert [m["role"] for m in data["messages"]] == ["user", "assistant", "user", "assistant"]
    assert data["messages"][2]["content"] == "line one\nline two"  # multi-line input
    assert len(data["messages"][3]["content"]) == 3  # /set max_tokens 3 took effect


def test_repl_in_a_real_terminal_ctrl_c_cancels_the_reply(home: Home, tmp_path: Path) -> None:
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in home.env.items() if k.startswith("SMACKCTL"))
    cmd = f"env {env} {sys.executable} -m smackctl chat -m tiny-a --plain --max-tokens 3500"
    session = f"smk-{tmp_path.name}"[:40]

    def tmux(*args: str) -> str:
        return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout

    def screen() -> str:
        return tmux("capture-pane", "-p", "-t", session)

    tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "40", cmd)
    try:
        wait_for(lambda: ">>>" in screen(), 60, "the REPL prompt")
        tmux("send-keys", "-t", session, "hello", "Enter")
        wait_for(lambda: screen().count("\n") > 3 and "hello" in screen(), 60, "the reply")
        wait_for(lambda: len(screen().split("hello", 1)[1].strip()) > 20, 60, "tokens streaming")
        token = (home.state / "token").read_text().strip()
        url = f"http://127.0.0.1:{home.env['SMACKCTL_PORT']}/api/status"

        def tiny_a() -> dict[str, object]:
            st = httpx.get(url, headers={"Authorization": f"Bearer {token}"}).json()
            return next(m for m in st["models"] if m["name"] == "tiny-a")  # type: ignore[no-any-return]

        # the runner held mid-answer, so the Ctrl-C lands in the stream on any CPU (a fast
        # one could finish 3500 tokens before the key reached the terminal)
        pid = tiny_a()["pid"]
        assert isinstance(pid, int)
        with paused(pid):
            tmux("send-keys", "-t", session, "C-c")
            wait_for(lambda: "(cancelled)" in screen(), 20, "the reply to be cancelled")
        # the generation stopped at the runner too, long before its 3500 tokens
        wait_for(lambda: tiny_a()["in_flight"] == 0, 30, "the cancelled request to leave")
        log = home.state / "logs" / "runner-tiny-a.log"
        answered = wait_for(
            lambda: [
                ln for ln in log.read_text().splitlines() if "smackctl runner: answered after" in ln
            ],
            30,
            "the runner to end the answer",
        )
        assert int(answered[-1].split("after ")[1].split()[0]) < 3500
        wait_for(lambda: screen().rstrip().endswith(">>>"), 20, "the prompt to come back")
        tmux("send-keys", "-t", session, "/exit", "Enter")
        wait_for(lambda: not _has(session), 20, "the REPL to exit on /exit")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        smackctl(home, "stop", "--force", timeout=60)


def _has(session: str) -> bool:
    return (
        subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode == 0
    )
