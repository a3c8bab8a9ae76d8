"""`smackctl profile new NAME`: a commented starter profile from the models on disk.

The models are the model store's files (named as the profile that pulled each one names it,
else from the file) and the active profile's models whose files are there; the starter is
checked like any profile before it takes its place, so what is written is valid.
"""

from __future__ import annotations

import os
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from smackctl.errors import ConfigError, UsageError

from . import output
from .completion import complete_profile

__all__ = ["Entry", "new", "starter_text"]

_PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: the tag the store puts before a pulled file's suffix (catalog.Source.stored_name)
_STORE_TAG = re.compile(r"-[0-9a-f]{10}$")


@dataclass(frozen=True)
class Entry:
    """One model of the starter: its name, its keys in the order written, and a comment."""

    name: str
    keys: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def new(
    name: Annotated[str, typer.Argument(help="The new profile's name (its file is NAME.yaml).")],
    from_: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Start from a copy of this profile (name or .yaml path) instead.",
            autocompletion=complete_profile,
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite a profile of that name in that folder.")
    ] = False,
    profile_dir: Annotated[
        Path | None,
        typer.Option(
            "--profile-dir",
            help="Write it here (default: $SMACKCTL_PROFILE_DIR, else the config dir's profiles/).",
        ),
    ] = None,
) -> None:
    """Write a starter profile with a comment on each key, from the models on disk (the model
    store's files, the active profile's models that are there), and print its path.

    It is checked as `smackctl profile validate` checks one before it is written; a profile
    of that name in that folder is kept unless --force."""
    if not _PROFILE_NAME.match(name) or ".." in name:
        raise UsageError(
            f"invalid profile name {name!r}: use letters, digits, '.', '_' and '-'",
            "pick another, e.g. `smackctl profile new my-models`",
        )
    folder = _folder(profile_dir)
    dest = folder / f"{name}.yaml"
    there = [p for p in (dest, folder / f"{name}.yml") if p.exists()]
    if there and not force:
        raise UsageError(
            f"profile {name} exists already: {there[0]}",
            f"pick another name, or replace it with `smackctl profile new {name} --force`",
        )
    if from_ is not None:
        text, count = _copied(from_, name)
    else:
        entries, default = models_on_disk(_current_profile())
        text, count = starter_text(name, entries, default, _backend()), len(entries)
    _write_checked(dest, text)
    print(dest)
    what = f"{count} model(s)" + (f", from {from_}" if from_ else "")
    output.info(
        f"wrote profile {name} ({what}): check it with `smackctl profile validate {name}`, "
        f"use it with `smackctl profile switch {name}`"
    )
    _say_if_shadowed(name, dest)


def _folder(given: Path | None) -> Path:
    """Where a new profile goes: --profile-dir, else $SMACKCTL_PROFILE_DIR, else the config
    dir's profiles/ (`smackctl config path`): where `profile show NAME` looks first."""
    from smackctl.paths import get_paths

    env = os.environ.get("SMACKCTL_PROFILE_DIR")
    return (given or (Path(env) if env else get_paths().profiles_dir)).expanduser().resolve()


def _current_profile() -> Path | None:
    """The active profile (what the supervisor runs or last ran), else $SMACKCTL_PROFILE,
    else the default one: as shell completion finds it."""
    from smackctl.paths import get_paths, list_profile_files

    from .completion import active_profile_path

    found = list_profile_files()
    active = active_profile_path(get_paths().db_path)
    if active is not None and active.is_file():
        return active
    return found.get(os.environ.get("SMACKCTL_PROFILE", "")) or found.get("default")


def _backend() -> str:
    from smackctl.paths import find_llama_server

    return "llama-server" if find_llama_server() else "llama-cpp-python"


def _write_checked(dest: Path, text: str) -> None:
    """Write ``text`` to ``dest`` once it passes validation, through a file beside it."""
    from smackctl.profile_file import validate_profile_file

    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = dest.with_name(f".{dest.name}.new")
    tmp.write_text(text, encoding="utf-8")
    try:
        profile, issues = validate_profile_file(tmp)
        if profile is None:
            lines = "\n".join(f"  {i}".replace(str(tmp), str(dest)) for i in issues)
            raise ConfigError(
                f"the profile would not be valid, so it was not written:\n{lines}",
                "fix the profile it is copied from (`smackctl profile validate NAME`), or "
                "start without --from",
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _say_if_shadowed(name: str, dest: Path) -> None:
    from smackctl.paths import list_profile_files

    first = list_profile_files().get(name)
    if first is not None and first.resolve() != dest:
        output.warn(
            f"`smackctl profile switch {name}` finds {first} first: name the new one by its "
            f"path ({dest}), or write it with --profile-dir {first.parent}"
        )


def _copied(given: str, name: str) -> tuple[str, int]:
    """Another profile's text as the start, renamed (its comments kept)."""
    from smackctl.profile_file import find_profile, validate_profile_file

    src = find_profile(given)
    profile, issues = validate_profile_file(src)
    if profile is None:
        raise ConfigError(
            f"profile {given} has problems:\n" + "\n".join(f"  {i}" for i in issues),
            f"fix them first (`smackctl profile validate {given}`)",
        )
    text = src.read_text(encoding="utf-8")
    head = f"# A copy of {src}, made by `smackctl profile new {name} --from {given}`.\n"
    line = f"name: {_scalar(name)}"
    renamed, n = re.subn(r"(?m)^name:.*$", lambda _: line, text, count=1)
    return head + (renamed if n else f"{line}\n{text}"), len(profile.models)


# --------------------------------------------------------------------------- the models


def models_on_disk(current: Path | None) -> tuple[list[Entry], str | None]:
    """The starter's models and its default one. The current profile's models whose files
    are on disk come first, then the store's files named as a profile that pulled them names
    them, then the store's other files named from the file. With none on disk: the current
    profile's models, pulled on first use."""
    from smackctl.paths import get_paths, list_profile_files
    from smackctl.profile_file import validate_profile_file

    store = get_paths().models_dir.resolve()
    order = [p for p in (current, *list_profile_files().values()) if p is not None]
    entries: list[Entry] = []
    files: set[Path] = set()
    default: str | None = None
    fallback: list[Entry] = []
    for path in dict.fromkeys(p.resolve() for p in order):  # each profile once, in order
        profile, _ = validate_profile_file(path)
        if profile is None:
            continue
        is_current = current is not None and path == current.resolve()
        for mname, spec in profile.models.items():
            if spec.remote:
                continue
            file = _file_of(profile, spec, path, store)
            if file is None or not file.is_file() or file in files:
                if is_current and spec.source is not None:
                    later = f"as in profile {profile.name}; pulled on first use"
                    fallback.append(_entry(mname, spec, None, later, fallback))
                continue
            if not is_current and file.parent != store:
                continue  # another profile's own files are its business, not the store's
            files.add(file)
            entries.append(_entry(mname, spec, file, f"as in profile {profile.name}", entries))
        if is_current and profile.routing.default_model is not None:
            named = profile.resolve(profile.routing.default_model)  # an alias: its model
            default = named if named in [e.name for e in entries] else None
    entries += _store_files(store, files, _names_taken(entries))
    if not entries:
        entries = fallback
        default = fallback[0].name if fallback else None
    return entries, default or (entries[0].name if entries else None)


def _file_of(profile: Any, spec: Any, path: Path, store: Path) -> Path | None:
    from smackctl.catalog import parse_source, stored_path
    from smackctl.errors import SmackError

    if spec.path is not None:
        return Path(profile.resolve_spec_path(spec, path.parent)).resolve()
    try:
        return stored_path(parse_source(spec.source), store, spec.sha256).resolve()
    except SmackError:
        return None


def _names_taken(entries: list[Entry]) -> set[str]:
    return {e.name for e in entries} | {a for e in entries for a in e.keys.get("aliases", [])}


def _entry(name: str, spec: Any, file: Path | None, note: str, taken: list[Entry]) -> Entry:
    """A profile's model as a starter entry: its name made unique, aliases another entry
    took left out."""
    used = _names_taken(taken)
    unique, k = name, 2
    while unique in used:
        unique, k = f"{name}-{k}", k + 1
    keys: dict[str, Any] = (
        {"source": spec.source, "sha256": spec.sha256}
        if spec.source is not None
        else {"path": str(file)}
    )
    keys = {k: v for k, v in keys.items() if v is not None}
    keys |= {"n_ctx": spec.n_ctx, "ttl": _duration(spec.ttl), "parallel": spec.parallel}
    for key in ("n_gpu_layers", "threads", "chat_format", "chat", "pinned", "preload"):
        value = getattr(spec, key)
        if value not in (None, 0, False) or (key == "chat" and value is False):
            keys[key] = value
    aliases = [a for a in spec.aliases if a not in used and a != unique]
    if aliases:
        keys["aliases"] = aliases
    return Entry(unique, keys, note)


def _store_files(store: Path, known: set[Path], taken: set[str]) -> list[Entry]:
    """The store's files no profile names, each named from its file (the store's tag left
    out), with its trained context."""
    from smackctl.discover import model_name, scan
    from smackctl.errors import SmackError
    from smackctl.gguf import read_info

    out = []
    for found in scan(store).found:
        if found.path.resolve() in known:
            continue
        base = model_name(_STORE_TAG.sub("", found.name))
        name, k = base, 2
        while name in taken:
            name, k = f"{base}-{k}", k + 1
        taken.add(name)
        n_ctx, note = 2048, "a file in the model store"
        try:
            trained = read_info(found.path).context_length
        except SmackError:
            trained = None
        if trained:
            n_ctx, note = min(n_ctx, trained), f"{note}, trained for {trained:,} tokens"
        out.append(Entry(name, {"path": str(found.path), "n_ctx": n_ctx, "ttl": "10m"}, note))
    return out


def _duration(seconds: int) -> str | int:
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return seconds


# --------------------------------------------------------------------------- the text


def _scalar(value: Any) -> str:
    """``value`` as a YAML scalar that reads back as itself."""
    import json

    import yaml

    if isinstance(value, bool | int):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    text = str(value)
    plain = re.fullmatch(r"[A-Za-z0-9_./~+-][^\s#:]*(?:[:#][^\s#:]+)*", text) is not None
    return text if plain and yaml.safe_load(text) == text else json.dumps(text)


#: what each key of the first model means (its other models have the same keys)
_MODEL_KEYS = {
    "source": "where its file comes from (pulled into the model store on first use)",
    "path": "its GGUF file, used where it is",
    "sha256": "the file's digest, checked before its first load",
    "n_ctx": "its context window in tokens, prompt and answer together: more costs memory "
    "(the KV cache grows with it)",
    "ttl": "idle time before it is unloaded: 300, 10m, 1h; 0 keeps it loaded",
    "parallel": "requests it answers at once: llama-server decodes them together, each "
    "with a whole n_ctx (more memory); the rest wait their turn",
}


def starter_text(name: str, entries: list[Entry], default: str | None, backend: str) -> str:
    """The starter profile: every key with a comment saying what it does."""
    out = [
        f"# Profile {name}, written by `smackctl profile new` from the models on disk.",
        f"# Check it with `smackctl profile validate {name}`; use it with",
        f"# `smackctl profile switch {name}` or `smackctl start --profile {name}`.",
        '# Every key: the README\'s "Profiles" section.',
        f"name: {_scalar(name)}",
        "",
        "# backend: what serves a model that names none: llama-server (llama.cpp's own server:",
        "# less memory, several requests decoded together) or llama-cpp-python (the next model",
        "# loads in the same warm process: the fastest swaps). A model may set its own.",
        f"backend: {backend}",
        "",
    ]
    if not entries:
        out += [
            "# No model file is on disk yet. Add one here, e.g.:",
            "#   mine:",
            "#     path: ~/models/mine.gguf",
            "models: {}",
        ]
    else:
        out.append("models:")
    for i, entry in enumerate(entries):
        out.append(f"  {entry.name}:" + (f"  # {entry.note}" if entry.note else ""))
        for key, value in entry.keys.items():
            if i == 0 and key in _MODEL_KEYS:
                out += textwrap.wrap(
                    f"{key}: {_MODEL_KEYS[key]}",
                    width=92,
                    initial_indent="    # ",
                    subsequent_indent="    #   ",
                )
            out.append(f"    {key}: {_scalar(value)}")
    out += [
        "",
        "memory:",
        "  # ram: the most RAM the loaded models may take together (e.g. 8GiB); a load past it",
        "  # unloads idle models, least recently used first. Unset: what the machine has",
        "  # available, less `reserve`.",
        "  # ram: 8GiB",
        "  # reserve: RAM always left to the rest of the machine",
        "  reserve: 2GiB",
        "",
        "# default_model: the model a request without `model` gets (and `smackctl chat`",
        "# without -m)",
        f"routing:\n  default_model: {_scalar(default)}" if default else "routing: {}",
    ]
    return "\n".join(out) + "\n"
