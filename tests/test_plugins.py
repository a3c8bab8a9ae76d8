"""Slash-command plugins through real entry points: smackctl's own (/file, /models), the
example package in examples/smackctl-shout (/shout, /noop) and tests/faulty-plugins (plugins
that hang, raise or cannot load), both installed here with pip into a folder the
supervisor's Python path holds. The model is a tiny one whose vocabulary is bytes, so what a
plugin puts into the prompt shows in ``prompt_tokens``, a token a byte."""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from starlette.responses import Response

from smackctl.cli.repl import completions
from smackctl.daemon.plugins import Installed, Plugins, slash_command
from smackctl.plugins.builtin import ModelsPlugin

from conftest import ROOT, Supervisor, launch_on, shutdown, smackctl

PATH = "/v1/chat/completions"


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    for package in (ROOT / "examples" / "smackctl-shout", ROOT / "tests" / "faulty-plugins"):
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
             "--target", str(target), str(package)],
            check=True, capture_output=True,
        )  # fmt: skip
    return target


@pytest.fixture(scope="module")
def sup(
    tmp_path_factory: pytest.TempPathFactory, model_dir: Path, plugin_path: Path
) -> Iterator[Supervisor]:
    root = tmp_path_factory.mktemp("plugins")
    notes = root / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("buy milk\nfix the roof\n")
    (notes / "big.txt").write_text("x" * 5000)
    (root / "secret.txt").write_text("the password")
    (notes / "link.txt").symlink_to(root / "secret.txt")
    os.mkfifo(notes / "pipe")  # no writer ever opens it: opening it to read would wait for good
    s = launch_on(
        root,
        "p",
        "name: p\nmodels:\n"
        f"  tiny:\n    path: {model_dir / 'tiny-a.gguf'}\n    n_ctx: 4096\n    threads: 1\n"
        # /proc/self: the supervisor's own, whose files say 0 bytes and hold more
        f"plugins:\n  file:\n    dirs: [{notes}, /proc/self]\n    max_bytes: 4096\n  models:\n"
        "  shout: {}\n  noop: {}\n  hang: {}\n  ahang: {}\n  boom: {}\n  broken: {}\n",
        PYTHONPATH=os.pathsep.join([str(plugin_path), os.environ.get("PYTHONPATH", "")]),
    )
    yield s
    shutdown(s)


def _ask(sup: Supervisor, text: str, **extra: Any) -> httpx.Response:
    body = {"model": "tiny", "messages": [{"role": "user", "content": text}], "max_tokens": 2}
    with sup.client(timeout=60) as c:
        return c.post(PATH, json={**body, **extra})


def _prompt_tokens(r: httpx.Response) -> int:
    assert r.status_code == 200, r.text
    return int(r.json()["usage"]["prompt_tokens"])


def test_plugins_list_shows_what_is_installed_and_what_the_profile_enables(
    sup: Supervisor,
) -> None:
    with sup.client() as c:
        listed = {p["name"]: p for p in c.get("/api/plugins").json()}
    assert listed["file"]["source"] == "smackctl" and listed["file"]["enabled"]
    assert listed["shout"]["source"] == "smackctl-shout" and listed["shout"]["enabled"]
    assert listed["unlisted"]["enabled"] is False
    assert "cannot be loaded" not in str(listed["hang"]) and listed["broken"]["error"]
    cli = smackctl(sup.home, "plugins", "list")
    assert cli.returncode == 0, cli.stderr
    assert "/shout" in cli.stdout and "smackctl-shout" in cli.stdout
    assert "cannot run: AttributeError" in cli.stdout  # /broken: a class that does not exist


def test_models_answers_by_itself_streamed_and_not(sup: Supervisor) -> None:
    client = openai.OpenAI(base_url=sup.url + "/v1", api_key=sup.token, max_retries=0)
    got = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "/models"}]
    )
    text = got.choices[0].message.content or ""
    assert "Profile p:" in text and "- tiny:" in text and "MiB budget" in text
    stream = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "/models"}], stream=True
    )
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert "Profile p:" in streamed
    r = _ask(sup, "/models")
    assert r.headers["X-Smackctl-Plugin"] == "models"


def test_file_puts_a_file_into_the_prompt_and_never_one_outside_its_dirs(
    sup: Supervisor,
) -> None:
    plain = _prompt_tokens(_ask(sup, "What is in it?"))
    with_file = _prompt_tokens(_ask(sup, "/file todo.txt What is in it?"))
    assert with_file - plain >= len("buy milk\nfix the roof\n")  # the file, a token a byte
    for asked, why in [
        ("../secret.txt", "outside the directories"),
        ("link.txt", "outside the directories"),  # a symbolic link out of them
        ("/etc/passwd", "outside the directories"),
        ("nope.txt", "no file nope.txt"),
        ("big.txt", "more than the 4,096"),
    ]:
        r = _ask(sup, f"/file {asked}")
        assert r.status_code == 400, (asked, r.text)
        msg = r.json()["error"]["message"]
        assert msg.startswith("plugin file: ") and why in msg, msg
    assert "the password" not in _ask(sup, "/file link.txt").text


def test_file_refuses_a_fifo_at_once_and_never_holds_it_open(sup: Supervisor) -> None:
    fifo = sup.home.root.parent / "notes" / "pipe"
    r = _ask(sup, "/file pipe")
    assert r.status_code == 400, r.text  # not a 504 at the plugin's timeout
    assert "pipe is not a regular file" in r.json()["error"]["message"]
    # nothing holds it open to read (a thread stuck in open() would): a writer finds no reader
    with pytest.raises(OSError) as exc:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert exc.value.errno == errno.ENXIO
    assert _prompt_tokens(_ask(sup, "/file todo.txt")) > 0


def test_file_refuses_a_file_longer_than_the_cap_whatever_its_size_said(
    sup: Supervisor,
) -> None:
    # a /proc file's stat size is 0 while it reads as kilobytes: what a file that grows
    # between the size check and the read looks like, with no race to win
    maps = f"/proc/{sup.pid}/maps"
    assert os.stat(maps).st_size == 0 and len(Path(maps).read_bytes()) > 4096
    r = _ask(sup, "/file /proc/self/maps")
    assert r.status_code == 400, r.text
    assert "more than the 4,096 bytes" in r.json()["error"]["message"]


def test_models_reads_the_status_on_the_event_loop_not_on_its_thread() -> None:
    seen: list[bool] = []

    def status() -> dict[str, Any]:  # what api.status_of reads: the loop's state
        seen.append(threading.current_thread() is threading.main_thread())
        return {"profile": "p", "models": [{"name": "m", "state": "ready", "rss": 2**20}],
                "memory": {"used_ram": 2**20, "budget_ram": 2**30}}  # fmt: skip

    plugins = Plugins(
        lambda: {"models": {}},
        status,
        installed={"models": Installed("models", "smackctl", "", ModelsPlugin())},
    )
    body = {"model": "m", "messages": [{"role": "user", "content": "/models"}]}
    answer = asyncio.run(plugins.apply(body))  # the loop runs on the main thread
    assert isinstance(answer, Response) and b"- m: ready, 1 MiB" in answer.body
    assert seen == [True]


def test_the_example_package_rewrites_the_request(sup: Supervisor) -> None:
    plain = _prompt_tokens(_ask(sup, "hello"))
    assert _prompt_tokens(_ask(sup, "/noop hello")) == plain  # the command is not the prompt
    shouted = _prompt_tokens(_ask(sup, "/shout hello"))
    assert shouted - plain >= len("Answer in capital letters only.")
    r = _ask(sup, "/shout")
    assert r.status_code == 400 and "usage: /shout QUESTION" in r.json()["error"]["message"]


def test_a_plugin_that_hangs_raises_or_cannot_load_is_an_error_naming_it(
    sup: Supervisor,
) -> None:
    t = time.monotonic()
    r = _ask(sup, "/hang")
    assert r.status_code == 504 and "plugin hang did not answer within its 0.5 s" in r.text
    assert time.monotonic() - t < 2.5  # cut off at its timeout, not when it woke up
    r = _ask(sup, "/ahang")  # an async one is cut off at its timeout too
    assert r.status_code == 504 and "plugin ahang did not answer within its 0.5 s" in r.text
    r = _ask(sup, "/boom")
    assert r.status_code == 500
    assert "plugin boom failed: RuntimeError: on purpose" in r.json()["error"]["message"]
    r = _ask(sup, "/broken")
    assert r.status_code == 500 and "plugin broken cannot be loaded" in r.text
    r = _ask(sup, "/unlisted")
    assert r.status_code == 400
    assert "`plugins: {unlisted: {}}`" in r.json()["error"]["message"]
    assert _prompt_tokens(_ask(sup, "hello")) > 0  # the supervisor serves on
    assert "Traceback" in sup.log() and sup.proc.poll() is None  # boom's, in the log only


def test_a_message_without_a_command_passes_untouched() -> None:
    plugins = Plugins(lambda: {"x": {}}, dict, installed={"x": Installed("x", "t", "", None)})

    def same(body: dict[str, Any]) -> bool:
        return asyncio.run(plugins.apply(body)) is body

    user = {"role": "user", "content": "hello"}
    assert same({"messages": [user]})
    assert same({"messages": [{"role": "user", "content": "/usr/bin/env is a path"}]})
    assert same({"messages": [{"role": "user", "content": "/unknown command"}]})
    assert same({"messages": [{"role": "assistant", "content": "/x"}]})  # not the user's
    assert same({"messages": []})
    assert slash_command({"messages": [{"role": "user", "content": "/x a b"}]}) == ("x", "a b")
    parts = [{"type": "text", "text": "/x args"}]
    assert slash_command({"messages": [{"role": "user", "content": parts}]}) == ("x", "args")


def test_the_repl_completes_the_plugins_commands() -> None:
    assert completions("/sh", "/sh", ["tiny"], ["shout", "file"]) == ["/shout"]
    assert "/file" in completions("/", "/", [], ["shout", "file"])
    assert completions("/model ti", "ti", ["tiny"], ["shout"]) == ["tiny"]
