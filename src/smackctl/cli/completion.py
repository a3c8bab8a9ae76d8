"""Shell completion of model and profile names, from local files only.

Runs on every <TAB>: it must not contact the supervisor nor import httpx, rich, pydantic or
gguf. It reads the active profile's YAML and the models added to the SQLite state, and keeps
the names in ``state/completion.json`` with what they were read from (file sizes and times),
so that the next <TAB> imports neither yaml nor sqlite3 (~60 ms) while nothing changed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["complete_model", "complete_profile", "local_model_names"]


def active_profile_path(db: Path) -> Path | None:
    if not db.is_file():
        return None
    import sqlite3

    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            row = con.execute("SELECT value FROM kv WHERE key='active_profile_path'").fetchone()
    except sqlite3.Error:
        return None
    return Path(row[0]) if row else None


def _added(db: Path) -> list[str]:
    if not db.is_file():
        return []
    import sqlite3

    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            return [r[0] for r in con.execute("SELECT name FROM added_models")]
    except sqlite3.Error:
        return []


def local_model_names() -> list[str]:
    from smackctl.paths import get_paths, profile_dirs

    paths = get_paths()
    cache = paths.state_dir / "completion.json"
    db = paths.db_path
    # everything the names depend on: the state (active profile, added models), the
    # directories a profile is looked up in, and the profile file the names came from
    key: dict[str, Any] = {
        "state": [_stat(db), _stat(db.with_name(db.name + "-wal"))],
        "env": [os.environ.get("SMACKCTL_PROFILE"), os.environ.get("SMACKCTL_PROFILE_DIR")],
        "dirs": [[str(d), _stat(d)] for d in profile_dirs()],
    }
    try:
        cached = json.loads(cache.read_text())
        profile = cached["profile"]
        if cached["key"] == key and cached["profile_stat"] == _stat(
            Path(profile) if profile else None
        ):
            return [str(n) for n in cached["names"]]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    profile_path, names = _read_names(db)
    tmp = cache.with_name(f".completion.{os.getpid()}.json")
    try:
        paths.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp.write_text(
            json.dumps(
                {
                    "key": key,
                    "profile": str(profile_path) if profile_path else None,
                    "profile_stat": _stat(profile_path),
                    "names": names,
                }
            )
        )
        os.replace(tmp, cache)
    except OSError:
        pass
    return names


def _stat(p: Path | None) -> list[int] | None:
    """What tells a changed file: (mtime in ns, size); None for no file."""
    if p is None:
        return None
    try:
        st = p.stat()
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size]


def _read_names(db: Path) -> tuple[Path | None, list[str]]:
    profile, named = profile_names(db)
    return profile, sorted(set(named) | set(_added(db)))


def profile_names(db: Path) -> tuple[Path | None, dict[str, str]]:
    """The active profile's file (what the supervisor runs or last ran, else what it would
    start with) and every name it gives a model: the model's own, its aliases, routing's
    aliases, each to the model it names (the first that gives it), read from the YAML as it
    is (fast, no validation: for completion and for `logs ALIAS`)."""
    import yaml

    from smackctl.paths import list_profile_files

    found = list_profile_files()
    profile = (
        active_profile_path(db)  # what the supervisor runs (or last ran)
        or found.get(os.environ.get("SMACKCTL_PROFILE", ""))  # what it would start with
        or found.get("default")
    )
    named: dict[str, str] = {}
    if profile is not None and profile.is_file():
        try:
            data = yaml.safe_load(profile.read_text()) or {}
        except (OSError, yaml.YAMLError):
            data = {}
        data = data if isinstance(data, dict) else {}
        models = data.get("models") or {}
        if isinstance(models, dict):
            named.update((str(name), str(name)) for name in models)  # their own names first
            for name, spec in models.items():
                if isinstance(spec, dict):
                    for alias in spec.get("aliases") or []:
                        named.setdefault(str(alias), str(name))
        routing = data.get("routing") or {}
        if isinstance(routing, dict) and isinstance(routing.get("aliases"), dict):
            for alias, target in routing["aliases"].items():
                named.setdefault(str(alias), str(target))
    return profile, named


def complete_model(incomplete: str) -> list[str]:
    return [n for n in local_model_names() if n.startswith(incomplete)]


def complete_profile(incomplete: str) -> list[str]:
    from smackctl.paths import list_profile_files

    return [n for n in list_profile_files() if n.startswith(incomplete)]
