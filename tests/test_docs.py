"""Generated docs cannot drift; completion is real and light."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from smackctl.cli.docs import COMPLETION_FILES, HELP_FILE, completion_script, help_json, man_page

from conftest import Home

ROOT = Path(__file__).resolve().parents[1]
STALE = "stale: regenerate with `make docs` and commit the result"
#: the tiny models of the test profile whose names start with "tiny-", in completion order
ALL_TINY = ["tiny-a", "tiny-b", "tiny-base", "tiny-c", "tiny-hostile", "tiny-q4", "tiny-q8"]


@pytest.mark.parametrize("shell", sorted(COMPLETION_FILES))
def test_completion_scripts_are_current(shell: str) -> None:
    checked_in = (ROOT / "completions" / COMPLETION_FILES[shell]).read_text()
    assert checked_in == completion_script(shell), STALE


def test_man_page_is_current_and_renders_without_warnings() -> None:
    path = ROOT / "man" / "smackctl.1"
    assert path.read_text() == man_page(), STALE
    r = subprocess.run(
        ["man", "--warnings", "-l", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "MANWIDTH": "80", "MAN_KEEP_FORMATTING": "0"},
    )
    assert r.returncode == 0
    assert r.stderr == ""  # no groff warnings
    text = re.sub(".\b", "", r.stdout)  # drop the overstrike bold/underline
    for needle in (
        "smackctl profile switch",
        "EXIT STATUS",
        "SMACKCTL_HOME",
        "EXAMPLES",
        "state.db",
    ):
        assert needle in text


def test_help_pages_are_current() -> None:
    assert HELP_FILE.read_text(encoding="utf-8") == help_json(), STALE


def imports_of(stderr: str) -> set[str]:
    """Module names from ``python -X importtime``'s report."""
    return {line.split("|")[-1].strip() for line in stderr.splitlines() if "|" in line}


def run_cli(args: list[str], columns: int, fast: bool) -> subprocess.CompletedProcess[str]:
    """The console script's main (with the fast paths), or the typer app alone."""
    code = "from smackctl.cli import main" if fast else "from smackctl.cli.app import main"
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"{code}; main()", *args],
        env={**os.environ, "COLUMNS": str(columns)},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "args", [["--help"], ["-h"], ["models", "--help"], ["models", "bench", "-h"], ["chat", "-h"]]
)
def test_help_is_printed_without_typer_and_exactly_as_typer_prints_it(args: list[str]) -> None:
    fast, typer_side = run_cli(args, 120, fast=True), run_cli(args, 120, fast=False)
    assert (fast.returncode, fast.stdout) == (0, typer_side.stdout)
    assert typer_side.stdout.startswith("Usage: smackctl")
    assert "typer" not in imports_of(fast.stderr)
    assert "typer" in imports_of(typer_side.stderr)  # the comparison is with typer's page


def test_help_on_a_narrow_terminal_or_with_options_goes_to_typer() -> None:
    narrow = run_cli(["models", "--help"], 60, fast=True)
    assert narrow.returncode == 0 and "typer" in imports_of(narrow.stderr)
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 58  # click's width
    with_option = run_cli(["--url", "http://x", "status", "--help"], 120, fast=True)
    assert with_option.returncode == 0 and "Usage: smackctl status" in with_option.stdout
    assert "typer" in imports_of(with_option.stderr)
    unknown = run_cli(["nosuch", "--help"], 120, fast=True)
    assert unknown.returncode == 2 and "No such command 'nosuch'" in unknown.stderr


def complete(home: Home, words: str, *extra_env: str) -> subprocess.CompletedProcess[str]:
    env = {
        **home.env,
        "_SMACKCTL_COMPLETE": "complete_bash",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)),
    }
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "smackctl"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_model_names_complete_from_local_files_without_heavy_imports(home: Home) -> None:
    r = complete(home, "smackctl models load tiny-")
    assert r.stdout.split() == ALL_TINY
    imported = imports_of(r.stderr)
    heavy = ("httpx", "rich", "gguf", "numpy", "typer", "pydantic", "smackctl.client")
    for module in heavy:
        assert module not in imported, f"completion imported {module}"
    # the names are cached with what they came from: the next <TAB> reads neither YAML nor SQLite
    again = complete(home, "smackctl models load tiny-")
    assert again.stdout.split() == ALL_TINY
    imported = imports_of(again.stderr)
    for module in ("yaml", "sqlite3", *heavy):
        assert module not in imported, f"a cached completion imported {module}"
    r = complete(home, "smackctl chat -m f")
    assert r.stdout.split() == ["fast"]  # a routing alias


def test_profile_names_complete(home: Home) -> None:
    r = complete(home, "smackctl profile switch sm")
    assert r.stdout.split() == ["small-pair"]


def test_a_changed_profile_is_read_again(home: Home) -> None:
    assert complete(home, "smackctl models show ").stdout.split()[:3] == ["a", "alien", "broken"]
    profile = home.root / "profiles" / "test.yaml"
    text = profile.read_text()
    profile.write_text(text.replace("  tiny-c:", "  zebra:\n    path: /nowhere.gguf\n  tiny-c:"))
    assert "zebra" in complete(home, "smackctl models show ").stdout.split()
    assert complete(home, "smackctl models bench tiny-a ze").stdout.split() == ["zebra"]


# what the shells send: bash COMP_WORDS/COMP_CWORD, zsh and fish _TYPER_COMPLETE_ARGS
SHELL_CASES = [
    ("bash", "smackctl models show tiny-"),
    ("bash", "smackctl models bench tiny-a tiny-"),
    ("bash", "smackctl chat -m f"),
    ("bash", "smackctl profile switch sm"),
    ("bash", "smackctl models show nothing-like-this"),
    ("zsh", "smackctl models show tiny-"),
    ("zsh", "smackctl models show nothing-like-this"),
    ("zsh", "smackctl chat --model "),
    ("fish", "smackctl models load tiny-"),
    ("fish", "smackctl profile show "),
]


@pytest.mark.parametrize(("shell", "line"), SHELL_CASES)
def test_the_fast_path_answers_exactly_as_typer_does(home: Home, shell: str, line: str) -> None:
    from smackctl.cli.fastcomplete import answer

    env = {**home.env, "_SMACKCTL_COMPLETE": f"complete_{shell}"}
    if shell == "bash":
        words = line.split()
        env |= {"COMP_WORDS": line, "COMP_CWORD": str(len(words) - (not line.endswith(" ")))}
    else:
        env |= {"_TYPER_COMPLETE_ARGS": line, "_TYPER_COMPLETE_FISH_ACTION": "get-args"}
    fast = answer(env)
    assert fast is not None, "the fast path should answer this one"
    typer_side = subprocess.run(  # the typer app itself, without the fast path in front
        [sys.executable, "-c", "from smackctl.cli.app import main; main()"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert fast + "\n" == typer_side.stdout


def test_the_fast_path_leaves_options_and_commands_to_typer() -> None:
    from smackctl.cli.fastcomplete import answer

    for words in ("smackctl mod", "smackctl models show --", "smackctl models bench --runs 3 "):
        cword = str(len(words.split()) - (not words.endswith(" ")))
        env = {"_SMACKCTL_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": cword}
        assert answer(env) is None, words


def test_the_fast_path_knows_every_parameter_that_completes_names() -> None:
    from smackctl.cli import completion, fastcomplete
    from smackctl.cli.app import command_tree

    kinds = {completion.complete_model: "model", completion.complete_profile: "profile"}
    arguments: dict[tuple[str, ...], tuple[str, int | None]] = {}
    options: dict[tuple[tuple[str, ...], str], str] = {}

    def walk(cmd: object, path: tuple[str, ...]) -> None:
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, (*path, name))
        for param in getattr(cmd, "params", []):
            # typer wraps `autocompletion=` twice: a closure over a functools wrapper
            hook = getattr(param, "_custom_shell_complete", None)
            cells = [c.cell_contents for c in getattr(hook, "__closure__", None) or ()]
            wrapped = [getattr(c, "__wrapped__", None) for c in cells]
            fn = next((f for f in wrapped if f in kinds), None)
            if fn is None:
                continue
            if param.param_type_name == "argument":
                arguments[path] = (kinds[fn], None if param.nargs == -1 else param.nargs)
            else:
                options.update({(path, opt): kinds[fn] for opt in param.opts})

    walk(command_tree(), ())
    assert arguments == fastcomplete.ARGUMENTS
    assert options == fastcomplete.OPTIONS
