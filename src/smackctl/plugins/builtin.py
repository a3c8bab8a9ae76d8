"""The plugins smackctl ships: ``/file PATH [QUESTION]`` and ``/models``."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from . import Context, PluginError, Reply, Rewrite

__all__ = ["FilePlugin", "ModelsPlugin"]

#: the largest file /file puts into a prompt, unless the profile says otherwise
MAX_BYTES = 256 * 1024


class FilePlugin:
    """``/file PATH [QUESTION]``: the text file at PATH goes into the prompt, with the
    question (or a request to summarise it). Only files under the profile's ``dirs`` can be
    read, after symbolic links are resolved: ``plugins: {file: {dirs: [~/notes]}}``."""

    summary = "put a local text file into the prompt: /file PATH [QUESTION]"
    timeout = 5.0

    def run(self, args: str, ctx: Context) -> Rewrite:
        dirs = [Path(os.path.expanduser(str(d))).resolve() for d in ctx.settings.get("dirs", [])]
        if not dirs:
            raise PluginError(
                "the file plugin has no allowed directories",
                "list them in the profile: `plugins: {file: {dirs: [~/notes]}}`",
            )
        name, _, question = args.strip().partition(" ")
        if not name:
            raise PluginError("which file? usage: /file PATH [QUESTION]")
        asked = Path(os.path.expanduser(name))
        path = (asked if asked.is_absolute() else dirs[0] / asked).resolve()
        if not any(path.is_relative_to(d) for d in dirs):
            raise PluginError(
                f"{name} is outside the directories the file plugin may read",
                "ask for a file under "
                + ", ".join(str(d) for d in dirs)
                + ", or add its directory to `plugins.file.dirs` in the profile",
            )
        limit = int(ctx.settings.get("max_bytes", MAX_BYTES))
        try:
            data = _read_capped(path, limit)
        except FileNotFoundError:
            raise PluginError(f"no file {name} under {dirs[0]}") from None
        except IsADirectoryError:
            raise PluginError(f"{name} is a directory, not a file") from None
        except OSError as exc:
            raise PluginError(f"cannot read {name}: {exc.strerror}") from None
        if data is None:
            raise PluginError(
                f"{name} is not a regular file (a pipe, a device or a socket), which the "
                "plugin does not read: it may never end",
                "ask about a regular text file",
            )
        if len(data) > limit:
            raise PluginError(
                f"{name} is more than the {limit:,} bytes the plugin puts in a prompt",
                "ask about a smaller file, or raise `plugins.file.max_bytes`",
            )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise PluginError(f"{name} is not UTF-8 text") from None
        prompt = f"The file {name}:\n\n```\n{text}\n```\n\n" + (
            question.strip() or "Summarise this file."
        )
        return Rewrite([*ctx.messages[:-1], {"role": "user", "content": prompt}])


def _read_capped(path: Path, limit: int) -> bytes | None:
    """At most ``limit + 1`` bytes of the regular file at ``path`` (more than ``limit``: the
    file is too big, whatever its size said a moment before, as a growing file or a /proc
    file's 0 does), or None when it is not a regular file: opening a FIFO waits for a writer
    and reading a device may never end, holding the plugin's thread for good."""
    if not stat.S_ISREG(path.stat().st_mode):
        if path.is_dir():
            raise IsADirectoryError(path)
        return None
    # O_NONBLOCK: a FIFO put in the file's place since the stat cannot block the open
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return f.read(limit + 1)


class ModelsPlugin:
    """``/models``: the supervisor's models, what each holds and its state, answered by the
    supervisor without asking a model."""

    summary = "list the models, their state and memory, without asking a model"
    timeout = 2.0

    def run(self, args: str, ctx: Context) -> Reply:
        status: dict[str, Any] = ctx.status()
        lines = [f"Profile {status['profile']}:"]
        for m in status["models"]:
            held = m.get("rss") or 0
            memory = f", {held / 2**20:.0f} MiB" if held else ""
            lines.append(f"- {m['name']}: {m['state']}{memory}")
        mem = status["memory"]
        lines.append(
            f"Memory: {mem['used_ram'] / 2**20:.0f} MiB used of a "
            f"{mem['budget_ram'] / 2**20:.0f} MiB budget."
        )
        return Reply("\n".join(lines))
