"""Shell completion of model and profile names, from local files only.

Runs on every <TAB>: it must not contact the supervisor nor import httpx, rich, pydantic or
gguf. It reads the active profile's YAML and the models added to the SQLite state.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

__all__ = ["complete_model", "complete_profile", "local_model_names"]


def active_profile_path(db: Path) -> Path | None:
    if not db.is_file():
        return None
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            row = con.execute("SELECT value FROM kv WHERE key='active_profile_path'").fetchone()
    except sqlite3.Error:
        return None
    return Path(row[0]) if row else None


def _added(db: Path) -> list[str]:
    if not db.is_file():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            return [r[0] for r in con.execute("SELECT name FROM added_models")]
    except sqlite3.Error:
        return []


def local_model_names() -> list[str]:
    import yaml

    from smackctl.paths import get_paths, list_profile_files

    paths = get_paths()
    found = list_profile_files()
    profile = (
        active_profile_path(paths.db_path)  # what the supervisor runs (or last ran)
        or found.get(os.environ.get("SMACKCTL_PROFILE", ""))  # what it would start with
        or found.get("default")
    )
    names: list[str] = []
    if profile is not None and profile.is_file():
        try:
            data = yaml.safe_load(profile.read_text()) or {}
        except (OSError, yaml.YAMLError):
            data = {}
        models = data.get("models") or {}
        if isinstance(models, dict):
            for name, spec in models.items():
                names.append(str(name))
                if isinstance(spec, dict):
                    names += [str(a) for a in spec.get("aliases") or []]
        routing = data.get("routing") or {}
        if isinstance(routing, dict) and isinstance(routing.get("aliases"), dict):
            names += [str(a) for a in routing["aliases"]]
    names += _added(paths.db_path)
    return sorted(set(names))


def complete_model(incomplete: str) -> list[str]:
    return [n for n in local_model_names() if n.startswith(incomplete)]


def complete_profile(incomplete: str) -> list[str]:
    from smackctl.paths import list_profile_files

    return [n for n in list_profile_files() if n.startswith(incomplete)]
