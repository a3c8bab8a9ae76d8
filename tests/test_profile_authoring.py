"""Issue 27, profiles without hand-editing: `profile validate NAME`, every problem of a profile
in one pass at its own line with "did you mean", and `profile new` writing a valid starter
from the models on disk. Through the CLI (CliRunner) on real files."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from smackctl.catalog import parse_source
from smackctl.cli.app import app
from smackctl.profile_file import load_profile

from conftest import Home, profile_yaml
from tinygguf import write_tiny_gguf

GEMMA = load_profile(Path(__file__).resolve().parents[1] / "profiles" / "small-pair.yaml").models[
    "gemma3-270m"
]


def write_profile(home: Home, name: str, text: str) -> Path:
    p = Path(home.env["SMACKCTL_PROFILE_DIR"]) / f"{name}.yaml"
    p.write_text(text)
    return p


def test_validate_takes_a_profile_name_as_show_and_switch_do(home: Home, model_dir: Path) -> None:
    mine = write_profile(home, "mine", profile_yaml(model_dir).replace("name: test", "name: mine"))
    r = CliRunner().invoke(app, ["profile", "validate", "mine"])
    assert r.exit_code == 0, r.output
    assert r.stdout == f"ok  {mine}\n"
    # several at once, a name and a path; a misspelt name is one problem among them
    r = CliRunner().invoke(app, ["profile", "validate", "mine", "tset", str(mine)])
    assert r.exit_code == 1
    assert r.stdout.splitlines() == [
        f"ok  {mine}",
        "tset: no profile named 'tset': did you mean `test`? (`smackctl profile list` shows "
        "them; a file is named by its path, e.g. ./mine.yaml)",
        f"ok  {mine}",
    ]
    assert "1 of 3 profile(s) have problems" in r.stderr


def test_every_problem_of_a_profile_in_one_pass_each_at_its_line(
    home: Home, model_dir: Path
) -> None:
    broken = write_profile(
        home,
        "broken",
        "name: broken\n"  # 1
        "models:\n"  # 2
        "  smollm2:\n"  # 3
        f"    path: {model_dir / 'tiny-a.gguf'}\n"  # 4
        "    thread: 2\n"  # 5: an unknown key
        "    n_ctx: 0\n"  # 6: a bad value
        "  other:\n"  # 7
        f"    path: {model_dir / 'gone.gguf'}\n"  # 8: no such file
        "groups:\n"  # 9
        "  chat:\n"  # 10
        "    deployments:\n"  # 11
        "      - other\n"  # 12
        "      - smolm2\n"  # 13: not a model
        "routing:\n"  # 14
        "  default_model: smollm3\n",  # 15: not a model
    )
    r = CliRunner().invoke(app, ["profile", "validate", str(broken)])
    assert r.exit_code == 1
    assert r.stdout.splitlines() == [
        f"{broken}:5 models.smollm2.thread: unknown key: did you mean `threads`? (else remove it)",
        f"{broken}:6 models.smollm2.n_ctx: Input should be greater than 0, got 0",
        f"{broken}:8 models.other.path: no such file: {model_dir / 'gone.gguf'} "
        "(fix the path, or use `source:`)",
        f"{broken}:13 groups.chat.deployments: 'smolm2' is not a model of this profile: "
        "did you mean `smollm2`?",
        f"{broken}:15 routing.default_model: 'smollm3' is not a model of this profile: "
        "did you mean `smollm2`?",
    ]


def stock_the_store(home: Home) -> tuple[Path, Path]:
    """A file pulled for small-pair's gemma3-270m, and one no profile names."""
    store = home.root / "data" / "models"
    store.mkdir(parents=True)
    assert GEMMA.source is not None
    pulled = write_tiny_gguf(store / parse_source(GEMMA.source).stored_name, seed=7, name="g")
    loose = write_tiny_gguf(store / "Loose-Model.Q8_0-0123456789.gguf", seed=8, name="l")
    return pulled, loose


def test_new_writes_a_valid_commented_starter_from_the_models_on_disk(
    home: Home, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, loose = stock_the_store(home)
    write_profile(
        home,
        "current",
        f"models:\n  mine:\n    path: {model_dir / 'tiny-b.gguf'}\n    n_ctx: 1024\n"
        "    aliases: [m]\n"
        "  later:\n    source: pypi:nothing-here#later.gguf\n"  # not on disk: left out
        "routing:\n  default_model: mine\n",
    )
    monkeypatch.setenv("SMACKCTL_PROFILE", "current")
    dest = Path(home.env["SMACKCTL_PROFILE_DIR"]) / "fresh.yaml"

    r = CliRunner().invoke(app, ["profile", "new", "fresh"])
    assert r.exit_code == 0, r.output
    assert r.stdout == f"{dest}\n"
    assert "smackctl profile validate fresh" in r.stderr
    profile = load_profile(dest)
    assert list(profile.models) == ["mine", "gemma3-270m", "Loose-Model.Q8_0"]
    mine, gemma, other = profile.models.values()
    assert (mine.path, mine.n_ctx, mine.aliases) == (str(model_dir / "tiny-b.gguf"), 1024, ("m",))
    # a pulled file keeps the name, source and digest of the profile that pulled it
    assert (gemma.source, gemma.sha256, gemma.chat) == (GEMMA.source, GEMMA.sha256, False)
    assert other.path == str(loose) and other.n_ctx == 2048
    assert profile.routing.default_model == "mine"
    text = dest.read_text()
    for key in ("backend", "n_ctx", "ttl", "parallel", "ram", "reserve", "default_model"):
        assert f"# {key}: " in text, key
    r = CliRunner().invoke(app, ["profile", "validate", "fresh"])
    assert (r.exit_code, r.stdout) == (0, f"ok  {dest}\n")

    # an existing profile is kept, unless --force
    dest.write_text("# my own\nmodels: {}\n")
    r = CliRunner().invoke(app, ["profile", "new", "fresh"])
    assert r.exit_code == 2
    assert f"profile fresh exists already: {dest}" in r.stderr
    assert "smackctl profile new fresh --force" in r.stderr
    assert dest.read_text() == "# my own\nmodels: {}\n"
    r = CliRunner().invoke(app, ["profile", "new", "fresh", "--force"])
    assert r.exit_code == 0, r.output
    assert list(load_profile(dest).models) == ["mine", "gemma3-270m", "Loose-Model.Q8_0"]


def test_new_from_another_profile_and_with_nothing_on_disk(home: Home) -> None:
    r = CliRunner().invoke(app, ["profile", "new", "pair", "--from", "small-pair"])
    assert r.exit_code == 0, r.output
    copy = load_profile(Path(r.stdout.strip()))
    assert copy.name == "pair" and list(copy.models) == ["smollm2", "gemma3-270m"]
    # nothing on disk: the current profile's models, pulled on first use (the test profile's
    # files are on disk; name the shipped default instead)
    home_profile = Path(home.env["SMACKCTL_PROFILE_DIR"]) / "test.yaml"
    home_profile.unlink()
    r = CliRunner().invoke(app, ["profile", "new", "bare"], env={"SMACKCTL_PROFILE": "default"})
    assert r.exit_code == 0, r.output
    bare = load_profile(Path(r.stdout.strip()))
    assert list(bare.models) == ["smollm2"] and bare.models["smollm2"].source is not None
    assert bare.routing.default_model == "smollm2"
    r = CliRunner().invoke(app, ["profile", "new", "../evil"])
    assert r.exit_code == 2 and "invalid profile name '../evil'" in r.stderr
