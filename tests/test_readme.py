"""The README's command examples parse against the real CLI (no drift)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from smackctl.cli.app import app

README = Path(__file__).resolve().parents[1] / "README.md"


def examples() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)
    lines = []
    for block in blocks:
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            line = line.split("| ", 1)[-1].strip() if line.startswith("echo") else line
            if line.startswith("smackctl "):
                lines.append(line)
    return lines


def test_there_are_examples() -> None:
    assert len(examples()) >= 25


@pytest.mark.parametrize("line", examples())
def test_example_parses(line: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = shlex.split(line)[1:]
    cmd = typer.main.get_command(app)
    if args == ["--install-completion"]:  # parsing it would install into the shell's rc file
        assert any("--install-completion" in p.opts for p in cmd.params)
        return
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my.gguf").write_bytes(b"GGUF")  # `models add` checks that the file exists
    ctx = cmd.make_context("smackctl", list(args), resilient_parsing=False)
    # walk down the sub-commands as click would, parsing each level's options
    # (typer 0.29 vendors click; protected args live in `_protected_args` there)
    while hasattr(ctx.command, "commands") and ctx._protected_args + ctx.args:
        rest = ctx._protected_args + ctx.args
        sub = ctx.command.get_command(ctx, rest[0])
        assert sub is not None, f"{line}: no command {rest[0]!r}"
        ctx = sub.make_context(rest[0], rest[1:], parent=ctx)
    assert not ctx.args, f"{line}: unexpected {ctx.args}"


def test_help_of_every_command_renders() -> None:
    runner = CliRunner()
    for line in {" ".join(shlex.split(e)[1:3]) for e in examples()}:
        words = [w for w in line.split() if not w.startswith(("-", '"', "."))]
        r = runner.invoke(app, [*words[:2], "--help"])
        assert r.exit_code == 0, (words, r.output)
