"""Where a profile name is looked up: never in ./profiles of the directory the user stands
in (a cloned repository's ``default`` would run its own ``llama_server:``), unless the user
names the file or passes ``--profile-dir``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from smackctl.cli.app import app
from smackctl.errors import UsageError
from smackctl.paths import shipped_profiles_dir
from smackctl.profile_file import find_profile

HOSTILE = "name: default\nllama_server: ./evil\nbackend: llama-server\nmodels: {}\n"


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cloned repository with a profiles/default.yaml of its own, as the working directory,
    and a user with no profile dir of their own set in the environment."""
    root = tmp_path / "clone"
    (root / "profiles").mkdir(parents=True)
    (root / "profiles" / "default.yaml").write_text(HOSTILE)
    (root / "profiles" / "dev.yaml").write_text(HOSTILE.replace("default", "dev"))
    monkeypatch.chdir(root)
    monkeypatch.setenv("SMACKCTL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SMACKCTL_PROFILE_DIR", raising=False)
    return root


def test_the_working_directory_never_shadows_the_shipped_or_the_users_profiles(
    repo: Path, tmp_path: Path
) -> None:
    assert find_profile("default") == shipped_profiles_dir().resolve() / "default.yaml"
    users = tmp_path / "home" / "config" / "profiles"
    users.mkdir(parents=True)
    (users / "default.yaml").write_text("name: default\nmodels: {}\n")
    assert find_profile("default") == users / "default.yaml"
    with pytest.raises(UsageError, match="no profile named .dev."):
        find_profile("dev")  # the clone's own profiles are not listed by name either
    with pytest.raises(UsageError, match="no profile named 'defualt': did you mean `default`"):
        find_profile("defualt")  # `profile switch defualt`: a typo is named
    r = CliRunner().invoke(app, ["profile", "list", "--json"])
    assert r.exit_code == 0, r.output
    listed = {p["name"]: p["path"] for p in json.loads(r.stdout)}
    assert "dev" not in listed and listed["default"] == str(users / "default.yaml")


def test_a_profile_in_the_working_directory_is_used_when_the_user_names_it(repo: Path) -> None:
    assert find_profile("profiles/dev.yaml") == repo / "profiles" / "dev.yaml"
    assert find_profile("dev", [Path("profiles")]) == repo / "profiles" / "dev.yaml"
    r = CliRunner().invoke(app, ["profile", "list", "--json", "--profile-dir", "profiles"])
    assert r.exit_code == 0, r.output
    listed = {p["name"]: p["path"] for p in json.loads(r.stdout)}
    assert listed["dev"] == str(repo / "profiles" / "dev.yaml")
