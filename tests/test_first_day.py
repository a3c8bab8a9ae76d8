"""The first day with smackctl (issue 27): a chat to a model not pulled yet shows the pull,
a base model is refused (before the pull when its profile says so), never an empty answer
with exit 0; `smackctl complete` serves base models; the REPL names its model."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from smackctl.cli.app import app

from conftest import Home, launch, shutdown, smackctl
from tinygguf import write_tiny_gguf


class _Slow(http.server.BaseHTTPRequestHandler):
    """Serves ``files`` 32 KiB at a time, ``pause`` seconds apart: a pull that takes a while
    (a tiny model's 430 KB in about 7 s)."""

    files: dict[str, bytes] = {}
    pause = 0.5

    def do_GET(self) -> None:  # noqa: N802
        body = type(self).files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        for i in range(0, len(body), 32768):
            self.wfile.write(body[i : i + 32768])
            self.wfile.flush()
            time.sleep(type(self).pause)  # the server's pace, not the test's synchronisation

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def slow_source(model_dir: Path) -> Iterator[str]:
    data = (model_dir / "tiny-a.gguf").read_bytes()
    base = (model_dir / "tiny-base.gguf").read_bytes()
    handler = type("S", (_Slow,), {"files": {"/chat.gguf": data, "/base.gguf": base}})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _profile(home: Home, text: str) -> None:
    (Path(home.env["SMACKCTL_PROFILE_DIR"]) / "test.yaml").write_text(text)


def test_a_chat_to_a_model_not_pulled_shows_the_pull_then_answers(
    home: Home, slow_source: str
) -> None:
    _profile(
        home,
        "name: test\nmodels:\n  fresh:\n"
        f"    source: {slow_source}/chat.gguf\n    n_ctx: 512\n    threads: 1\n"
        "routing:\n  default_model: fresh\n",
    )
    sup = launch(home)
    try:
        r = smackctl(home, "chat", "--max-tokens", "3", "--temperature", "0", "hi")
        assert r.returncode == 0, r.stderr
        assert "fresh is not on disk yet: pulling it first" in r.stderr
        assert "fresh: downloading" in r.stderr
        moving = [ln for ln in r.stderr.splitlines() if " of " in ln and "/s" in ln]
        assert moving, r.stderr  # bytes, rate and time left while it came down
        assert " left" in moving[-1]
        assert r.stdout.strip()  # then the answer
    finally:
        shutdown(sup)


def test_a_base_model_is_refused_before_its_pull_when_the_profile_says_so(
    home: Home, slow_source: str
) -> None:
    _profile(
        home,
        "name: test\nmodels:\n  base:\n"
        f"    source: {slow_source}/base.gguf\n    n_ctx: 512\n    threads: 1\n"
        "    chat: false\n  unsaid:\n"
        f"    source: {slow_source}/base.gguf\n    n_ctx: 512\n    threads: 1\n",
    )
    sup = launch(home)
    try:
        r = smackctl(home, "chat", "-m", "base", "hi")
        assert r.returncode == 2, r.stderr
        assert "base cannot answer chat messages: its profile entry says `chat: false`" in r.stderr
        assert "smackctl complete -m base" in r.stderr
        assert not list((home.root / "data" / "models").glob("*.gguf"))  # nothing pulled
        # a base model whose profile says nothing: the file says it, once pulled; an error,
        # never an empty answer and exit 0 (the first chat to gemma3-270m was one)
        r = smackctl(home, "chat", "-m", "unsaid", "--max-tokens", "3", "hi")
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert "unsaid cannot answer chat messages: it has no chat template" in r.stderr
        assert r.stdout == ""
        # what it is for: a text completion
        done = smackctl(home, "complete", "-m", "unsaid", "--max-tokens", "4", "Paris is")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() and "4 tokens, first token" in done.stderr
    finally:
        shutdown(sup)


class _Silent(http.server.BaseHTTPRequestHandler):
    """A supervisor look-alike whose model answers a stream with no token and no reason."""

    def _json(self, data: Any) -> None:
        body = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/health":
            self._json({"status": "ok", "pid": 1})
        elif self.path == "/api/profiles":
            self._json({"active": "x", "default_model": "m", "defaults": {}})
        else:
            self._json({"name": "m", "on_disk": True, "chat": None})

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunk = {"id": "x", "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant"}}]}
        body = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_an_answer_with_nothing_in_it_is_an_error(home: Home) -> None:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Silent)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        r = CliRunner().invoke(app, ["--url", url, "chat", "hi"])
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert r.exit_code == 1, r.output
    assert "m answered nothing (no token, and no reason for stopping)" in r.stderr


def test_the_repl_names_its_model_and_what_is_not_pulled(home: Home, slow_source: str) -> None:
    _profile(
        home,
        "name: test\nmodels:\n  here:\n"
        f"    path: {Path(home.env['SMACKCTL_PROFILE_DIR']).parent}/here.gguf\n"
        "    n_ctx: 512\n    threads: 1\n"
        f"  away:\n    source: {slow_source}/chat.gguf\n    n_ctx: 512\n"
        "routing:\n  default_model: here\n",
    )
    here = Path(home.env["SMACKCTL_PROFILE_DIR"]).parent / "here.gguf"
    write_tiny_gguf(here, seed=1, name="here")
    runner = CliRunner()
    try:
        r = runner.invoke(app, ["chat", "-i"], input="/model\n/set\n/models\n/exit\n")
        assert r.exit_code == 0, r.output
        assert "model: here (the profile's default)" in r.stdout
        assert "max_tokens = 1024" in r.stdout  # the CLI's cap: the profile sets none
        assert "away  not pulled" in r.stdout
        assert "here  " in r.stdout and "here  not pulled" not in r.stdout
    finally:
        runner.invoke(app, ["stop", "--force"])
