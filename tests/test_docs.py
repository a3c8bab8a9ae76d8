"""Generated docs cannot drift; completion is real and light."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from smackctl.cli.docs import COMPLETION_FILES, completion_script, man_page

from conftest import Home

ROOT = Path(__file__).resolve().parents[1]
STALE = "stale: regenerate with `make docs` and commit the result"


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
    assert r.stdout.split() == ["tiny-a", "tiny-b", "tiny-c"]
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if "|" in line}
    # (typer 0.29 itself imports pydantic, in typer._adapters: not ours to avoid)
    for heavy in ("httpx", "rich", "gguf", "numpy", "smackctl.client", "smackctl.config"):
        assert heavy not in imported, f"completion imported {heavy}"
    r = complete(home, "smackctl chat -m f")
    assert r.stdout.split() == ["fast"]  # a routing alias


def test_profile_names_complete(home: Home) -> None:
    r = complete(home, "smackctl profile switch sm")
    assert r.stdout.split() == ["small-pair"]
