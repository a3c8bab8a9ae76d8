"""`model: auto`: the rules on their own (every branch), and a real supervisor routing real
requests by them, with a real tiny model as the classifier."""

from __future__ import annotations

import asyncio
import json
import random
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from smackctl.config import Auto
from smackctl.daemon.gateway import auto as route
from smackctl.daemon.gateway.auto import (
    INSPECTED,
    Decision,
    code_signs,
    decide,
    file_names,
    inspected,
)
from smackctl.profile_file import load_profile

from conftest import Home, launch, shutdown, smackctl

AUTO = Auto(code="coder", general="chat", long="big", tools="caller", embeddings="vec")
FENCED = "```python\ndef f(x):\n    return x\n```\nwhat does it do?"


def _decide(text: str, auto: Auto = AUTO, said: bool | None = None, **body: Any) -> Any:
    async def classify(model: str, words: str) -> bool | None:
        assert words == text
        return said

    contexts = {"chat": 100, "coder": 100, "big": 10_000}
    asked = {"messages": [{"role": "user", "content": text}], **body}
    return asyncio.run(decide(auto, "/v1/chat/completions", asked, contexts.get, classify))


def test_the_rules_pick_by_code_capability_and_length() -> None:
    d = _decide(FENCED)
    assert d.model == "coder" and "a code fence" in d.reason
    trace = 'Traceback (most recent call last):\n  File "x.py", line 3\nValueError: bad'
    assert _decide(trace).model == "coder"
    assert _decide("What is the capital of France?").model == "chat"
    assert _decide("What is the capital?", tools=[{"type": "function"}]).model == "caller"
    long = _decide("Tell me about the sea. " * 30)  # ~170 tokens: past chat's 100
    assert long.model == "big" and "do not fit chat's 100" in long.reason
    score, seen = code_signs("How do I reverse a linked list in Rust?")
    assert score >= 2 and any("rust" in s for s in seen)


def test_an_unclear_prompt_asks_the_classifier_and_says_what_it_said() -> None:
    auto = Auto(code="coder", general="chat", classifier="tiny")
    unclear = "Is python hard to learn?"  # one weak sign: a language named
    assert code_signs(unclear)[0] == 1
    assert _decide(unclear, auto, said=True).model == "coder"
    no = _decide(unclear, auto, said=False)
    assert no.model == "chat" and "the classifier tiny said not code" in no.reason
    assert "did not say" in _decide(unclear, auto, said=None).reason
    without = _decide(unclear, Auto(code="coder", general="chat"))
    assert without.model == "chat" and "too few signs of code" in without.reason


def test_the_classifier_must_be_pinned(tmp_path: Path) -> None:
    p = tmp_path / "p.yaml"
    p.write_text(
        f"models:\n  a:\n    path: {__file__}\n  b:\n    path: {__file__}\n"
        "routing:\n  default_model: auto\n  auto: {general: a, code: b, classifier: a}\n"
    )
    with pytest.raises(Exception, match="set `pinned: true` for a"):
        load_profile(p)


def test_model_auto_routes_real_requests_and_says_why(home: Home, model_dir: Path) -> None:
    (home.root / "profiles" / "test.yaml").write_text(
        "name: test\nmodels:\n"
        f"  general:\n    path: {model_dir / 'tiny-a.gguf'}\n    n_ctx: 512\n"
        f"  coder:\n    path: {model_dir / 'tiny-b.gguf'}\n    n_ctx: 512\n"
        f"  judge:\n    path: {model_dir / 'tiny-c.gguf'}\n    n_ctx: 512\n    pinned: true\n"
        "routing:\n  default_model: auto\n"
        "  auto: {code: coder, general: general, classifier: judge}\n"
    )
    sup = launch(home)
    try:
        ask = {"max_tokens": 2, "temperature": 0}
        with sup.client(timeout=60) as c:
            r = c.post(
                "/v1/chat/completions",
                json={**ask, "model": "auto", "messages": [{"role": "user", "content": FENCED}]},
            )
            assert r.status_code == 200, r.text
            assert r.json()["model"] == "coder"
            assert r.headers["X-Smackctl-Route"].startswith("coder; code (a code fence")
            r = c.post(
                "/v1/chat/completions",
                json={  # no model: the default is auto
                    **ask,
                    "messages": [{"role": "user", "content": "Name a colour."}],
                },
            )
            assert r.json()["model"] == "general"
            assert r.headers["X-Smackctl-Route"] == "general; no sign of code"
            # unclear: the (random-weight) classifier answers gibberish, so: general
            r = c.post(
                "/v1/chat/completions",
                json={
                    **ask,
                    "model": "auto",
                    "messages": [{"role": "user", "content": "Is python hard?"}],
                },
            )
            assert "the classifier did not say" in r.headers["X-Smackctl-Route"]
            assert "auto" in {m["id"] for m in c.get("/v1/models").json()["data"]}
        cli = smackctl(home, "route", "--json", FENCED)
        got = json.loads(cli.stdout)
        assert got["model"] == "coder" and got["microseconds"] < 10_000
        plain = smackctl(home, "route", "Name a colour.")
        assert plain.stdout.startswith("general: no sign of code")
        chat = smackctl(home, "chat", "--max-tokens", "2", "-m", "auto", FENCED)
        assert chat.returncode == 0, chat.stderr
        assert "model auto -> coder" in sup.log()
    finally:
        shutdown(sup)


#: the file-name pattern before issue 26: the reference for the linear ``file_names``
_OLD_FILE = re.compile(
    r"\b[\w./-]+\.(?:py|js|ts|tsx|jsx|rs|go|java|kt|c|cc|cpp|h|hpp|cs|rb|php|sh|sql|"
    r"swift|scala|lua|toml|yaml|yml|ipynb|gradle|dockerfile|makefile)\b",
    re.I,
)


def test_file_names_finds_what_the_single_pattern_found() -> None:
    rng = random.Random(26)
    alphabet = ["a", "Z", "_", "0", ".", "/", "-", " ", ":", "é", ".py", ".rs", ".C", ".pyc"]
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))
        want = {m.group(0).lower() for m in _OLD_FILE.finditer(text)}
        assert file_names(text) == want, text
    dots = "x" + "." * 100_000 + "py and " + "a." * 50_000
    assert file_names(dots) == {"x" + "." * 100_000 + "py"}


def test_routing_reads_a_bounded_part_of_a_long_prompt() -> None:
    # no pattern lets a line's leading blanks run over newlines (`^\s*` under re.M was
    # quadratic: 10,000 newlines held the event loop 9.5 s)
    for pattern in (route._TRACE_LINE, route._CODE_LINE):
        assert not re.search(r"\^\\s", pattern.pattern), pattern.pattern
    for filler in ("\n", ".", " ", "\t\n", "a.", "f(x);\n", "    at x.y(Z.java:1)\n"):
        text = filler * (2**20 // len(filler))
        seen = inspected(text)
        assert len(seen) <= 2 * INSPECTED + 1
        assert seen.startswith(text[:INSPECTED]) and seen.endswith(text[-INSPECTED:])
        assert code_signs(text) == code_signs(seen)
    # what sits in the question before or after a long paste still counts; the middle not
    log = "INFO all good\n" * 2000  # 28,000 characters
    assert code_signs(log)[0] == 0
    assert code_signs("Why?\n" + log + 'File "app.py", line 3\nKeyError: x')[0] >= 3
    assert code_signs("```sh\nmake\n```\n" + log)[0] >= 3
    assert code_signs(log + "```\nx = 1\n```\n" + log)[0] == 0
    # but the length rule counts every character: ~7,000 tokens do not fit chat's 100
    assert _decide(log).model == "big"


def test_the_route_header_is_ascii_whatever_the_words() -> None:
    words = "код (file name данные.py); 100% sure\r\nX-Injected: 1"
    header = Decision("coder", words).header()
    assert header.isascii() and "\r" not in header and "\n" not in header
    assert unquote(header) == f"coder; {words}"
    assert Decision("chat", "no sign of code").header() == "chat; no sign of code"
    long = Decision("chat", "é" * 5000).header()
    assert len(unquote(long)) <= route.HEADER_MAX and long.isascii()
