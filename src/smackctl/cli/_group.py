"""The click group class of every smackctl command group."""

from __future__ import annotations

from typing import Any

import typer

__all__ = ["Group"]


class Group(typer.core.TyperGroup):
    """A group whose ``--help`` lists each command with its whole first sentence, wrapped,
    where click cuts it to the width left on one line and ends it with '...'."""

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit=10_000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
