"""Profile parsing and validation: every error names file:line key.path and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from smackctl.config import ModelSpec, Profile, parse_size, validate_model_name
from smackctl.errors import ConfigError, UsageError
from smackctl.profile_file import load_profile, validate_profile_file

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "dev.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def issues(path: Path) -> list[str]:
    profile, found = validate_profile_file(path)
    assert profile is None
    return [str(i) for i in found]


@pytest.mark.parametrize("shipped", sorted((ROOT / "profiles").glob("*.yaml")))
def test_shipped_profiles_are_valid(shipped: Path) -> None:
    profile = load_profile(shipped)
    default = profile.routing.default_model
    assert profile.models and (default in profile.models or default == "auto")
    if default == "auto":  # the routing profile: its rules name models of its own
        assert profile.routing.auto is not None and profile.routing.auto.general in profile.models


def test_wrong_value_names_line_and_key(tmp_path: Path) -> None:
    p = write(tmp_path, "models:\n  coder:\n    path: /x.gguf\n    n_ctx: -4\n")
    assert any(
        i.endswith(":4 models.coder.n_ctx: Input should be greater than 0, got -4")
        for i in issues(p)
    ), issues(p)


def test_unknown_key_is_rejected_with_its_line(tmp_path: Path) -> None:
    p = write(tmp_path, "models:\n  m:\n    source: pypi:x#y.gguf\n    colour: red\n")
    assert issues(p) == [f"{p}:4 models.m.colour: unknown key (remove it, or check its spelling)"]


def test_an_unknown_key_says_what_it_may_have_meant(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "n_ctx: 4096\nmodels:\n  m:\n    source: pypi:x#y.gguf\n    n_ctxx: 4\n"
        "memory:\n  reserv: 1GiB\nrouting:\n  auto:\n    genral: m\n",
    )
    assert issues(p) == [
        f"{p}:1 n_ctx: unknown key here: `n_ctx` is a model's setting, put it under `models.NAME`",
        f"{p}:5 models.m.n_ctxx: unknown key: did you mean `n_ctx`? (else remove it)",
        f"{p}:7 memory.reserv: unknown key: did you mean `reserve`? (else remove it)",
        f"{p}:9 routing.auto.general: Field required",
        f"{p}:10 routing.auto.genral: unknown key: did you mean `general`? (else remove it)",
    ]


def test_a_bad_name_hides_no_other_problem(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "models:\n  a:\n    source: pypi:x#a.gguf\n    aliases: [ok, 'b c']\n"
        "  b:\n    source: pypi:x#b.gguf\n    n_ctx: -1\n    fallbacks: [c]\n"
        "routing:\n  default_model: A\n",
    )
    assert issues(p) == [
        f"{p}:4 models.a.aliases: invalid model name 'b c': use letters, digits, '.', '_' and '-'"
        " (at most 64, starting with a letter or digit, no '..')",
        f"{p}:7 models.b.n_ctx: Input should be greater than 0, got -1",
        f"{p}:8 models.b.fallbacks: 'c' is neither a model nor a group (models and groups: a, b)",
        f"{p}:10 routing.default_model: 'A' is not a model of this profile: did you mean `a`?",
    ]


def test_a_profile_built_in_code_is_checked_as_a_file_is() -> None:
    with pytest.raises(ValidationError) as exc:
        Profile.model_validate({"name": "p", "routing": {"default_model": "x"}})
    assert "routing.default_model: 'x' is not a model of this profile" in str(exc.value)
    with pytest.raises(ValidationError, match="invalid model name"):
        ModelSpec.model_validate({"path": "/x.gguf", "aliases": ["b c"]})


def test_several_errors_at_once(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "models:\n  m:\n    source: pypi:x#y.gguf\n    ttl: soon\n"
        "    parallel: 0\nmemory:\n  ram: lots\n",
    )
    found = issues(p)
    assert len(found) == 3
    assert any(":4 models.m.ttl:" in i and "not a duration" in i for i in found)
    assert any(":5 models.m.parallel:" in i for i in found)
    assert any(":7 memory.ram:" in i and "not a size" in i for i in found)


def test_invalid_yaml_names_the_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = write(tmp_path, "models:\n  m: [unclosed\n")
    monkeypatch.chdir("/")  # never relative to where the command (or the supervisor) started
    (only,) = issues(p)
    assert only.startswith(f"{p.resolve()}:") and "invalid YAML" in only


def test_missing_model_file_and_duplicate_alias(tmp_path: Path) -> None:
    p = write(tmp_path, f"models:\n  a:\n    path: {tmp_path}/nope.gguf\n")
    assert issues(p) == [
        f"{p}:3 models.a.path: no such file: {tmp_path}/nope.gguf (fix the path, or use `source:`)"
    ]
    p = write(
        tmp_path,
        "models:\n  a:\n    source: pypi:x#a.gguf\n    aliases: [z]\n"
        "  b:\n    source: pypi:x#b.gguf\n    aliases: [z]\n",
    )
    assert any("alias 'z' is used by both 'a' and 'b'" in i for i in issues(p))


def test_model_needs_exactly_one_source(tmp_path: Path) -> None:
    p = write(tmp_path, "models:\n  a:\n    n_ctx: 4\n")
    assert any("give exactly one of `source` or `path`" in i for i in issues(p))


def test_env_vars_are_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    p = write(
        tmp_path, "models:\n  a:\n    path: ${MODEL_DIR}/m.gguf\n    chat_format: ${FMT:-chatml}\n"
    )
    prof = load_profile(p)
    assert prof.models["a"].path == f"{tmp_path}/m.gguf"
    assert prof.models["a"].chat_format == "chatml"


def test_load_profile_raises_config_error_naming_the_fix(tmp_path: Path) -> None:
    p = write(tmp_path, "models: 3\n")
    with pytest.raises(ConfigError) as exc:
        load_profile(p)
    assert "smackctl profile validate" in str(exc.value.hint)


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "a..b", ".hidden", "x" * 65, "a b"])
def test_model_names_never_become_paths(bad: str) -> None:
    with pytest.raises(UsageError):
        validate_model_name(bad)


@pytest.mark.parametrize(
    ("text", "size"),
    [("12GiB", 12 * 1024**3), ("512MiB", 512 * 1024**2), ("1.5G", 1_500_000_000), (1024, 1024)],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


def test_remote_models_and_groups_are_checked_with_their_key(tmp_path: Path) -> None:
    remote = "    backend: openai\n    url: http://gpu-box:8000/v1\n"
    ok = write(
        tmp_path,
        f"models:\n  big:\n{remote}    api_key_env: GPU_KEY\n  small:\n    path: {__file__}\n"
        "groups:\n  chat:\n    deployments: [big, small]\n    policy: least-busy\n"
        "    fallbacks: [small]\n",
    )
    profile = load_profile(ok)
    assert profile.models["big"].remote and profile.groups["chat"].policy == "least-busy"
    assert profile.models["big"].verify_tls  # TLS checked unless the profile says otherwise
    bad_url = write(tmp_path, "models:\n  big:\n    backend: openai\n    url: ftp://x\n", "b.yaml")
    assert any(i.startswith(f"{bad_url}:4 models.big.url:") for i in issues(bad_url))
    no_url = write(tmp_path, "models:\n  big:\n    backend: openai\n", "c.yaml")
    assert any("`backend: openai` takes a `url`" in i for i in issues(no_url))
    key_in_file = write(tmp_path, f"models:\n  big:\n{remote}    api_key: sk-123\n", "d.yaml")
    assert any("models.big.api_key: unknown key" in i for i in issues(key_in_file))
    group = write(
        tmp_path,
        f"models:\n  big:\n{remote}groups:\n  chat:\n    deployments: [big, nope]\n"
        "    policy: random\n",
        "e.yaml",
    )
    found = issues(group)
    assert any("groups.chat.policy" in i and "'priority'" in i for i in found), found
    group = write(tmp_path, f"models:\n  big:\n{remote}    fallbacks: [gone]\n", "f.yaml")
    assert any(
        "models.big.fallbacks: 'gone' is neither a model nor a group" in i for i in issues(group)
    )
