"""The only module that imports rich, and only when something is drawn.

Data goes to stdout; progress, chatter and errors to stderr. Spinners and progress bars only
on a terminal; ``NO_COLOR`` turns every style off (``_console``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "err_console",
    "error",
    "human_bytes",
    "human_duration",
    "info",
    "is_tty",
    "print_json",
    "progress_bars",
    "spinner",
    "table",
    "warn",
]


def as_text(s: str) -> str:
    """``s`` as valid Unicode: bytes that were not UTF-8 (Python keeps those of stdin and of
    argv as lone surrogates, which no model can read and the supervisor refuses) become
    U+FFFD, as an editor shows them."""
    try:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a lone surrogate of another kind
        return s.encode("utf-8", "replace").decode("utf-8")


def read_stdin() -> str:
    """All of stdin as text, its bytes that are not UTF-8 as U+FFFD, whatever the locale
    (under en_US.UTF-8 Python's own decoding raises on them)."""
    raw = getattr(sys.stdin, "buffer", None)
    if raw is None:  # a text stream without bytes under it (a test's)
        return as_text(sys.stdin.read())
    return str(raw.read().decode("utf-8", "replace"))


def is_tty(stream: Any = None) -> bool:
    stream = stream or sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


def _console(stderr: bool) -> Console:
    import os

    from rich.console import Console

    # NO_COLOR (no-color.org): rich drops colours for it but still writes bold and dim;
    # a person who sets it gets no escape sequence at all
    plain = os.environ.get("NO_COLOR", "") != ""
    return Console(
        stderr=stderr,
        highlight=False,
        soft_wrap=not stderr,
        color_system=None if plain else "auto",
    )


def err_console() -> Console:
    return _console(True)


def print_json(data: Any) -> None:
    """``data`` as indented JSON, its text as it reads (こんにちは, not \\u3053…), escaped only
    where the output cannot take a character (a lone surrogate, a non-UTF-8 terminal)."""
    text = json.dumps(data, indent=2, default=str, ensure_ascii=False)
    try:
        text.encode(sys.stdout.encoding or "utf-8")
    except (UnicodeEncodeError, LookupError):
        text = json.dumps(data, indent=2, default=str)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def info(message: str) -> None:
    if is_tty(sys.stderr):
        _console(True).print(message, markup=False, style="dim")
    else:
        sys.stderr.write(message + "\n")


def warn(message: str) -> None:
    sys.stderr.write(f"smackctl: warning: {message}\n")


def error(message: str, hint: str | None = None) -> None:
    sys.stderr.write(f"smackctl: error: {message}\n")
    if hint:
        sys.stderr.write(f"  fix: {hint}\n")


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    if not is_tty():
        # plain, aligned, greppable; no box drawing when piped
        cells = [list(columns)] + [["-" if c is None else str(c) for c in r] for r in rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
        for row in cells:
            line = "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            sys.stdout.write(line + "\n")
        return
    from rich.table import Table

    t = Table(title=title, box=None, header_style="bold", pad_edge=False)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*("-" if c is None else str(c) for c in r))
    _console(False).print(t)


@contextlib.contextmanager
def spinner(text: str) -> Iterator[None]:
    if not is_tty(sys.stderr):
        yield
        return
    with _console(True).status(text):
        yield


class _Bars:
    """One bar per task, driven by (key, description, done, total) updates. Not on a
    terminal: a line when the phase changes, and one every few seconds while bytes move
    (how many, how fast, how long left)."""

    #: seconds between two byte lines when not on a terminal
    EVERY = 3.0

    def __init__(self) -> None:
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}
        self._last: dict[str, str] = {}
        self._said: dict[str, tuple[float, int]] = {}  # key: (when, bytes) of its last line
        self._began: dict[str, tuple[float, int]] = {}  # key: (when, bytes) its phase began

    def update(self, key: str, description: str, done: int = 0, total: int | None = None) -> None:
        if self._progress is None:
            self._plain(key, description, done, total)
            return
        if key not in self._tasks:
            self._tasks[key] = self._progress.add_task(description, total=total)
        self._progress.update(
            self._tasks[key], description=f"{key}: {description}", completed=done, total=total
        )

    def _plain(self, key: str, description: str, done: int, total: int | None) -> None:
        import time

        now = time.monotonic()
        if self._last.get(key) != description:
            sys.stderr.write(f"{key}: {description}\n")
            self._last[key] = description
            self._said[key] = self._began[key] = (now, done)
            return
        when, _ = self._said.get(key, (now, done))
        if not done or now - when < self.EVERY:
            return
        self._said[key] = (now, done)
        sys.stderr.write(f"{key}: {description} {_transfer(done, total, now, self._began[key])}\n")


def _transfer(done: int, total: int | None, now: float, began: tuple[float, int]) -> str:
    """``120.0 MiB of 241.0 MiB, 30.1 MiB/s, 4s left``."""
    rate = (done - began[1]) / max(1e-6, now - began[0])
    text = human_bytes(done) + (f" of {human_bytes(total)}" if total else "")
    text += f", {human_bytes(rate)}/s"
    if total and rate > 0:
        text += f", {human_duration(max(0.0, (total - done) / rate))} left"
    return text


@contextlib.contextmanager
def progress_bars() -> Iterator[_Bars]:
    bars = _Bars()
    if not is_tty(sys.stderr):
        yield bars
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
        console=_console(True),
        transient=False,
    ) as p:
        bars._progress = p
        yield bars


def human_bytes(n: int | float | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit in ("B", "KiB") else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def write_answer(text: str, markdown: bool) -> None:
    if markdown:
        from rich.markdown import Markdown

        _console(False).print(Markdown(text))
        return
    sys.stdout.write(text + ("\n" if text and not text.endswith("\n") else ""))
    sys.stdout.flush()


def stream_answer(deltas: Iterator[str], markdown: bool) -> str:
    """Print text pieces as they arrive. On a terminal (``markdown``: not piped, not
    ``--plain``) each word goes out as it completes, wrapped at the terminal's width at word
    boundaries; the text only ever scrolls, nothing is redrawn (a redraw of a block taller
    than the screen loses what scrolled off). Code between fences is not wrapped. The whole
    answer is rendered as Markdown only when it comes at once (``--no-stream``)."""
    parts: list[str] = []
    wrap = _WordWrap(sys.stdout) if markdown else None
    try:
        for piece in deltas:
            parts.append(piece)
            if wrap is not None:
                wrap.write(piece)
            else:
                sys.stdout.write(piece)
            sys.stdout.flush()
    finally:
        if wrap is not None:
            wrap.close()
        elif parts and not parts[-1].endswith("\n"):
            sys.stdout.write("\n")
        sys.stdout.flush()
    return "".join(parts)


class _WordWrap:
    """Streamed text to a terminal, wrapped at word boundaries: a word is held until the
    space or newline after it, then goes on this line if it fits, else on the next. The
    width is read again at each line, so a resize applies from the next line on."""

    def __init__(self, out: Any) -> None:
        from rich.cells import cell_len

        self.out, self.cells = out, cell_len
        self.col = 0
        self.word = ""
        self.line = ""  # the current line's text so far, for fences
        self.fenced = False
        self.width = self._width()

    def _width(self) -> int:
        try:
            return max(10, os.get_terminal_size(self.out.fileno()).columns)
        except (OSError, ValueError, AttributeError):
            return 80

    def write(self, text: str) -> None:
        for ch in text:
            if self.fenced and ch != "\n":
                self.line += ch
                self.out.write(ch)  # code keeps its lines: the terminal wraps them
                self.col += 1
            elif ch == "\n":
                self._word()
                self.out.write("\n")
                if self.line.lstrip().startswith(("```", "~~~")):
                    self.fenced = not self.fenced
                self.line, self.col, self.width = "", 0, self._width()
            elif ch == " " or ch == "\t":
                self._word()
                self.line += ch
                if self.col < self.width:
                    self.out.write(ch)
                    self.col += 1
            else:
                self.word += ch
                self.line += ch
                if self.cells(self.word) >= self.width:  # longer than a line: it must break
                    self._word()

    def _word(self) -> None:
        if not self.word:
            return
        n = self.cells(self.word)
        if self.col and self.col + n > self.width:
            self.out.write("\n")
            self.col = 0
        self.out.write(self.word)
        self.col += n
        self.word = ""

    def close(self) -> None:
        self._word()
        if self.col or self.line:
            self.out.write("\n")


def render(renderable: Any) -> None:
    """Print a rich renderable to stdout (plain text when not a terminal)."""
    _console(False).print(renderable)


def frame(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Any:
    """A title line over a table, as one renderable (for `top`)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    t = Table(box=None, header_style="bold", pad_edge=False)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*("-" if c is None else str(c) for c in r))
    return Group(Text(title), t)


@contextlib.contextmanager
def live(initial: Any) -> Iterator[Any]:
    """Redraw a renderable in place; yields update(renderable)."""
    from rich.live import Live

    with Live(initial, console=_console(False), auto_refresh=False) as lv:
        yield lambda r: lv.update(r, refresh=True)
