"""The plugins smackctl ships: ``/file PATH [QUESTION]`` and ``/models``."""

from __future__ import annotations

import os
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
            size = path.stat().st_size
            if size > limit:
                raise PluginError(
                    f"{name} is {size:,} bytes, more than the {limit:,} the plugin puts in a "
                    "prompt",
                    "ask about a smaller file, or raise `plugins.file.max_bytes`",
                )
            text = path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            raise PluginError(f"no file {name} under {dirs[0]}") from None
        except IsADirectoryError:
            raise PluginError(f"{name} is a directory, not a file") from None
        except UnicodeDecodeError:
            raise PluginError(f"{name} is not UTF-8 text") from None
        except OSError as exc:
            raise PluginError(f"cannot read {name}: {exc.strerror}") from None
        prompt = f"The file {name}:\n\n```\n{text}\n```\n\n" + (
            question.strip() or "Summarise this file."
        )
        return Rewrite([*ctx.messages[:-1], {"role": "user", "content": prompt}])


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
