"""A profile's file read: YAML bounded in size and expansion, variables expanded, and every
problem reported at once, each at its ``file:line key.path`` with the fix or a "did you mean"
(``validate_profile_file``); and profiles found by name or path (``find_profile``)."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from smackctl.config import (
    _CHECKED_ALREADY,
    ModelSpec,
    Profile,
    _reference_problems,
    key_path,
    resolve_path,
)
from smackctl.errors import ConfigError, UsageError
from smackctl.paths import list_profile_files, profile_dirs
from smackctl.profile_refs import Loc, Problem, fields_at, suggest

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")

__all__ = [
    "ProfileIssue",
    "find_profile",
    "list_profile_files",
    "load_profile",
    "profile_dirs",
    "profiles_defining",
    "validate_profile_file",
]


@dataclass
class ProfileIssue:
    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where} {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


@dataclass
class _Located:
    data: Any
    lines: dict[tuple[str | int, ...], int] = field(default_factory=dict)


#: the most values a profile may expand to, aliases counted each time they are used, and the
#: deepest it may nest: the shipped profiles have 14 to 30 values, a profile of 100 models
#: a few thousand, and they nest 5 deep; YAML aliases of aliases grow without limit (6 levels
#: of 10: a million values, seconds and 100+ MB). Walking 20,000 takes ~45 ms, on a thread
#: that shares the GIL with the event loop (100,000: ~290 ms, and 50 ms of loop lag)
MAX_NODES = 20_000
MAX_DEPTH = 64


class _Refused(Exception):
    """A profile's YAML that is refused before it is read as data: an alias bomb, an alias
    inside itself, nesting past MAX_DEPTH, a key that is not a plain value."""

    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path, self.message = path, message
        self.lines: dict[tuple[str | int, ...], int] = {}


def _compose(text: str) -> _Located:
    """YAML → plain data, plus the line of every key path (for error messages). Raises
    ``_Refused`` for an alias bomb, a self-reference, a nesting past MAX_DEPTH or a key that
    is not a plain value; every value is counted as it is walked, so the cost is bounded."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:  # PyYAML's composer recurses: `[[[[…` thousands deep
        raise _Refused((), f"nests more than {MAX_DEPTH} levels deep") from None
    lines: dict[tuple[str | int, ...], int] = {}
    loader = yaml.SafeLoader("")  # one constructor for every scalar
    inside: set[int] = set()  # the nodes being walked now: an alias to one is a cycle
    count = 0

    def walk(n: yaml.Node | None, path: tuple[str | int, ...]) -> Any:
        nonlocal count
        if n is None:
            return None
        count += 1
        if count > MAX_NODES:
            raise _Refused(
                path,
                f"expands to more than {MAX_NODES:,} values (YAML aliases "
                "used over and over?): write the values out, or use fewer aliases",
            )
        if len(path) > MAX_DEPTH:
            raise _Refused(path, f"nests more than {MAX_DEPTH} levels deep")
        lines.setdefault(path, n.start_mark.line + 1)
        if not isinstance(n, yaml.MappingNode | yaml.SequenceNode):
            return loader.construct_object(n, deep=True)
        if id(n) in inside:
            raise _Refused(
                path,
                "a YAML alias refers to a value that contains it (`&a` … "
                "`*a` inside itself): remove the alias",
            )
        inside.add(id(n))
        try:
            if isinstance(n, yaml.SequenceNode):
                return [walk(v, (*path, i)) for i, v in enumerate(n.value)]
            out: dict[Any, Any] = {}
            for k, v in n.value:
                if not isinstance(k, yaml.ScalarNode):
                    raise _Refused(path, "a key must be a plain value, not a list or mapping")
                key = k.value
                lines[(*path, key)] = k.start_mark.line + 1
                out[key] = walk(v, (*path, key))
            return out
        finally:
            inside.discard(id(n))

    try:
        return _Located(walk(node, ()), lines)
    except _Refused as exc:
        exc.lines = lines
        raise
    finally:
        loader.dispose()


def _expand_env(data: Any) -> Any:
    if isinstance(data, str):
        return _ENV_RE.sub(lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), data)
    if isinstance(data, dict):
        return {k: _expand_env(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_expand_env(v) for v in data]
    return data


def _line_for(loc: tuple[str | int, ...], lines: dict[tuple[str | int, ...], int]) -> int | None:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


#: the largest profile file read: a real one is a few KiB
MAX_PROFILE_BYTES = 1024 * 1024


def _read_text(path: Path) -> str:
    """The file's text; ValueError (in words) for what is no profile: not a regular file (a
    FIFO would block the read for good), over MAX_PROFILE_BYTES, not UTF-8."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens without a writer
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file: a profile is a .yaml file")
        data = f.read(MAX_PROFILE_BYTES + 1)
    if len(data) > MAX_PROFILE_BYTES:
        raise ValueError(f"over {MAX_PROFILE_BYTES // 1024} KiB: a profile is a few KiB of YAML")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (byte {exc.start})") from None


def validate_profile_file(
    path: Path, text: str | None = None
) -> tuple[Profile | None, list[ProfileIssue]]:
    """Parse and validate one profile file (``text``: what it would hold, the page's editor);
    never raises for a bad file. Every problem the
    file has is reported in this one pass, in the order of its lines: the schema's (types,
    values, unknown keys), the cross-references' and missing files, each at the line of its
    key, with "did you mean" for a misspelt key or model name."""
    shown = _display(path)
    try:
        text = _read_text(path) if text is None else text
    except OSError as exc:
        return None, [ProfileIssue(shown, None, "", f"cannot read: {exc.strerror}")]
    except ValueError as exc:
        return None, [ProfileIssue(shown, None, "", str(exc))]
    try:
        located = _compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        return None, [ProfileIssue(shown, line, "", f"invalid YAML: {problem}")]
    except _Refused as exc:
        key = ".".join(str(p) for p in exc.path)
        return None, [ProfileIssue(shown, _line_for(exc.path, exc.lines), key, exc.message)]
    data = located.data
    if data is None:
        # an editor that empties the file before it writes it must not unload every model
        return None, [ProfileIssue(shown, None, "", "the file is empty: a profile is a mapping "
                                   "(key: value), at least `models: {}`")]  # fmt: skip
    if not isinstance(data, dict):
        return None, [ProfileIssue(shown, 1, "", "a profile must be a mapping (key: value)")]
    data = _expand_env(data)
    data.setdefault("name", path.stem)
    problems = [(loc, key_path(loc), msg) for loc, msg in _reference_problems(data)]
    problems += [(loc, key_path(loc), msg) for loc, msg in _missing_files(data, path.parent)]
    profile: Profile | None = None
    try:
        profile = Profile.model_validate(data, context={_CHECKED_ALREADY: True})
    except ValidationError as exc:
        problems += [_schema_problem(err) for err in exc.errors()]
    issues = [
        ProfileIssue(shown, _line_for(loc, located.lines), key, msg) for loc, key, msg in problems
    ]
    issues.sort(key=lambda i: i.line or 0)  # stable: one line's issues keep their order
    return (profile if not issues else None), issues


def _schema_problem(err: Any) -> tuple[Loc, str, str]:
    """One of pydantic's errors as (where, key path, message in words)."""
    loc = tuple(err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = _unknownkey_path(loc)
    elif (
        "input" in err
        and err["type"] not in ("missing", "model_name")
        and not isinstance(err["input"], dict)
    ):
        msg = f"{msg}, got {err['input']!r}"
    return loc, ".".join(str(p) for p in loc), msg


def _unknownkey_path(loc: Loc) -> str:
    """What to say of the key at ``loc`` the schema has no place for: the key it may have
    meant, or where it belongs, or to remove it."""
    word = str(loc[-1])
    close = suggest(word, fields_at(Profile, loc[:-1]))
    if close:
        return f"unknown key{close} (else remove it)"
    if len(loc) == 1 and word in ModelSpec.model_fields:
        return f"unknown key here: `{word}` is a model's setting, put it under `models.NAME`"
    return "unknown key (remove it, or check its spelling)"


def _missing_files(data: dict[str, Any], base: Path) -> list[Problem]:
    """Each local model's ``path:`` that names no file."""
    out: list[Problem] = []
    models = data.get("models")
    for name, raw in (models if isinstance(models, dict) else {}).items():
        if not isinstance(raw, dict) or not isinstance(raw.get("path"), str):
            continue
        if (raw.get("backend") or data.get("backend")) == "openai":
            continue  # the schema says that `path` is not for it
        p = resolve_path(raw["path"], base)
        if not p.is_file():
            why = f"no such file: {p} (fix the path, or use `source:`)"
            out.append((("models", name, "path"), why))
    return out


#: a profile file → ((size, mtime), the names it resolves): what profiles_defining read
_DEFINED: dict[Path, tuple[tuple[int, int], frozenset[str]]] = {}


def _names_defined(path: Path, parse: bool) -> frozenset[str] | None:
    """The model names and aliases the profile at ``path`` resolves; None when it cannot be
    read, or when ``parse`` is False and it changed since it was last read."""
    try:
        st = path.stat()
    except OSError:
        return None
    stamp = (st.st_size, st.st_mtime_ns)
    known = _DEFINED.get(path)
    if known is not None and known[0] == stamp:
        return known[1]
    if not parse:
        return None
    profile, _ = validate_profile_file(path)
    names: frozenset[str] = frozenset()
    if profile is not None:
        names = frozenset(
            [*profile.models, *profile.routing.aliases]
            + [a for spec in profile.models.values() for a in spec.aliases]
        )
    _DEFINED[path] = (stamp, names)
    return names


def profiles_defining(model: str, skip: str | None = None, *, parse: bool = True) -> list[str]:
    """The profiles (by name) that define ``model``, other than ``skip``: for the hint of an
    unknown model. Reads each profile file once per size and mtime; with ``parse=False``
    none is read (a stat each): what was read before answers (the supervisor asks so on its
    event loop, and reads the files on a thread)."""
    found = []
    for name, path in list_profile_files().items():
        if name == skip:
            continue
        names = _names_defined(path, parse)
        if names is not None and model in names:
            found.append(name)
    return found


def load_profile(path: Path) -> Profile:
    profile, issues = validate_profile_file(path)
    if profile is None:
        raise ConfigError(
            "invalid profile:\n" + "\n".join(f"  {i}" for i in issues),
            f"fix the file, then check it with `smackctl profile validate {_display(path)}`",
        )
    return profile


def _display(path: Path) -> str:
    """The file's absolute path: what the supervisor says is read in another terminal than
    the one it started in, and relative to "/" a path reads as broken (``tmp/x.yaml``)."""
    return str(path.resolve())


# --------------------------------------------------------------------------- finding


def find_profile(name_or_path: str, extra: Iterable[Path] = ()) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p.resolve()
    found = list_profile_files(extra)
    if name_or_path in found:
        return found[name_or_path]
    from .profile_refs import suggest

    close = suggest(name_or_path, found)
    raise UsageError(
        f"no profile named {name_or_path!r}{close}"
        + ("" if close else f"; known: {', '.join(sorted(found)) or 'none'}"),
        "see `smackctl profile list`, or give the path of a .yaml file",
    )
