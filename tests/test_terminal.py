"""`smackctl chat` as a person sees it: a real terminal (tmux), the default (non-plain) path,
SmolLM2's seeded 150-token answer at 40, 80 and 200 columns and through a resize. Every
word of the stored answer must be on the screen or in its scrollback, in order, and no line
of the answer may be longer than the terminal is wide (words are not cut)."""

from __future__ import annotations

import json
import os
import shlex
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Supervisor, launch_on, shutdown, wait_for

QUESTION = "Explain in a long paragraph why the sky is blue."


@pytest.fixture(scope="module")
def smol(tmp_path_factory: pytest.TempPathFactory, smollm2_file: Path) -> Iterator[Supervisor]:
    yaml = (
        "name: term\nmodels:\n  smollm2:\n"
        f"    path: {smollm2_file}\n    n_ctx: 2048\n    threads: 2\n"
        "routing:\n  default_model: smollm2\n"
    )
    sup = launch_on(tmp_path_factory.mktemp("term"), "term", yaml)
    yield sup
    shutdown(sup)


def _tmux(*args: str) -> str:
    done = subprocess.run(["tmux", *args], capture_output=True, text=True)
    assert done.returncode == 0, f"tmux {args[0]}: {done.stderr.strip()}"
    return done.stdout


def _new_session(name: str, *args: str) -> None:
    """A detached session. Its server may be on its way out as the test before killed its
    last session ("server exited unexpectedly"): asked again until one starts."""

    def started() -> bool:
        done = subprocess.run(["tmux", "new-session", "-d", "-s", name, *args],
                              capture_output=True, text=True)  # fmt: skip
        failed.append(done.stderr.strip())
        return done.returncode == 0

    failed: list[str] = []
    try:
        wait_for(started, 10, "a tmux session")
    except AssertionError:
        raise AssertionError(f"tmux new-session failed: {failed[-1]}") from None


def _stored_answer(sup: Supervisor) -> str:
    db = sqlite3.connect(sup.home.state / "chats.db")
    try:
        row = db.execute("SELECT messages FROM conversations ORDER BY id DESC LIMIT 1").fetchone()
    finally:
        db.close()
    return str(json.loads(row[0])[-1]["content"])


def _in_order(words: list[str], screen: list[str]) -> bool:
    """``words`` appear in ``screen`` one after the other (other words may come between only
    before the first and after the last: the answer is printed as one run)."""
    n = len(words)
    return any(screen[i : i + n] == words for i in range(len(screen) - n + 1))


#: what the shell prints once `smackctl chat` has exited
DONE = "SMK-CHAT-EXITED"


def _chat_in_terminal(sup: Supervisor, width: int, resize_to: int | None = None) -> list[str]:
    env = " ".join(
        f"{k}={shlex.quote(v)}" for k, v in sup.home.env.items() if k.startswith("SMACKCTL")
    )
    cmd = (
        f"env {env} TERM=xterm-256color {sys.executable} -m smackctl chat --seed 7 "
        f"--temperature 0 --max-tokens 150 {shlex.quote(QUESTION)}; echo {DONE}; sleep 600"
    )
    session = f"smk-term-{os.getpid()}-{width}-{resize_to}"
    _new_session(session, "-x", str(width), "-y", "20", cmd)
    try:

        def everything() -> str:
            return _tmux("capture-pane", "-p", "-J", "-S", "-", "-E", "-", "-t", session)

        if resize_to is not None:
            wait_for(lambda: len(everything().split()) > 20, 120, "the answer to stream")
            _tmux("resize-window", "-t", session, "-x", str(resize_to), "-y", "20")
        # the command's end, not its stats line: the conversation is saved after that line
        wait_for(lambda: DONE in everything(), 180, "the answer and the command's end")
        assert "tokens/s" in everything()
        joined = everything()
        lines = _tmux("capture-pane", "-p", "-S", "-", "-E", "-", "-t", session).splitlines()
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    answer = _stored_answer(sup)
    assert len(answer.split()) > 40  # a long answer: it takes several screens at 40 columns
    assert _in_order(answer.split(), joined.split()), (answer, joined)
    if resize_to is None:  # words wrapped by smackctl, never cut by the terminal
        assert all(len(line) <= width for line in lines)
    return lines


@pytest.mark.parametrize("width", [40, 80, 200])
def test_every_word_of_a_streamed_answer_is_on_the_screen(smol: Supervisor, width: int) -> None:
    lines = _chat_in_terminal(smol, width)
    if width == 40:
        assert len(lines) > 20  # longer than the screen: it scrolled, nothing was redrawn


def test_resizing_the_terminal_mid_answer_loses_nothing(smol: Supervisor) -> None:
    _chat_in_terminal(smol, 100, resize_to=40)


# -- the wrapping itself, with pieces longer than a tiny model's tokens ----------------------


class _Screen:
    """A terminal 24 columns wide that keeps what was written, and what it showed after
    each piece."""

    columns = 24

    def __init__(self) -> None:
        self.text = ""

    def write(self, s: str) -> int:
        self.text += s
        return len(s)

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        raise OSError("not a real terminal")  # the width comes from _width, patched below


def test_long_pieces_are_wrapped_whole_and_shown_as_they_come(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A model whose tokens are long (or a server that sends many tokens a chunk): every
    word of every piece is shown, in order, each line within the width, and the words of a
    piece are on the screen before the next piece is asked for."""
    from smackctl.cli import output

    screen = _Screen()
    monkeypatch.setattr(output.sys, "stdout", screen)
    monkeypatch.setattr(output._WordWrap, "_width", lambda self: _Screen.columns)
    pieces = [
        "The sky looks blue because sunlight ",
        "is scattered by the molecules of the atmosphere, ",
        "and the shorter wavelengths scatter most.\n\nThat is Rayleigh scattering; ",
        "antidisestablishmentarianism-style-compounds-longer-than-a-line wrap too. ",
        "Done.",
    ]
    shown_before: list[str] = []

    def deltas() -> Iterator[str]:
        for piece in pieces:
            shown_before.append(screen.text)
            yield piece

    text = output.stream_answer(deltas(), markdown=True)
    assert text == "".join(pieces)
    # nothing dropped, cut or reordered; a word longer than a line is broken, the rest whole
    assert "".join(screen.text.split()) == "".join(text.split())
    words = screen.text.split()
    assert all(w in words for w in text.split() if len(w) <= _Screen.columns)
    assert all(len(line) <= _Screen.columns for line in screen.text.splitlines())
    # streamed: the first piece's whole words were out before the second piece was asked for
    assert " ".join(shown_before[1].split()) == "The sky looks blue because sunlight"
    assert "scattered by the molecules of the" in " ".join(shown_before[2].split())
