"""`smackctl config path | show`: where smackctl keeps things and what is in force."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

import typer

from smackctl.errors import SmackError

from . import output
from ._common import client
from ._group import Group
from .doctor import read_db

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON only.")]

__all__ = ["config_app"]

config_app = typer.Typer(
    cls=Group,
    rich_markup_mode=None,  # click's plain help: typer's rich help imports 200 ms of rich
    help="Where smackctl keeps things and which settings are in force.",
    no_args_is_help=True,
)


@config_app.command("path")
def config_path(json_: JsonOpt = False) -> None:
    """Where smackctl keeps its files (SMACKCTL_HOME moves them all)."""
    from smackctl.paths import get_paths, profile_dirs

    p = get_paths()
    data = {
        "config": str(p.config_dir),
        "data": str(p.data_dir),
        "state": str(p.state_dir),
        "models": str(p.models_dir),
        "logs": str(p.logs_dir),
        "database": str(p.db_path),
        "token": str(p.token_path),
        "profile_dirs": [str(d) for d in profile_dirs()],
    }
    if json_:
        output.print_json(data)
        return
    _aligned({k: ", ".join(v) if isinstance(v, list) else v for k, v in data.items()})


@config_app.command("show")
def config_show(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """The settings in force and where each comes from."""
    from smackctl.client import default_url
    from smackctl.paths import DEFAULT_HOST, DEFAULT_PORT, get_paths

    env = {
        k: v for k, v in os.environ.items() if k.startswith("SMACKCTL_") and k != "SMACKCTL_TOKEN"
    }
    from urllib.parse import urlsplit

    from smackctl.netaddr import display_url
    from smackctl.paths import pid_status

    paths = get_paths()
    profile, source = _profile_in_force(ctx, paths.db_path)
    url = default_url()
    running = pid_status(paths)[1] and paths.endpoint_path.is_file()
    where = urlsplit(url)
    data = {
        "url": url,
        "url_elsewhere": display_url(url),  # a wildcard bind's URL from another machine
        # a running supervisor's own address, else what the next start takes
        "host": where.hostname if running else os.environ.get("SMACKCTL_HOST", DEFAULT_HOST),
        "port": where.port if running else int(os.environ.get("SMACKCTL_PORT", DEFAULT_PORT)),
        "address_from": "the running supervisor" if running else "the next start",
        "profile": profile,
        "profile_from": source,
        "environment": env,
    }
    if json_:
        output.print_json(data)
        return
    shown = {**data, "environment": " ".join(f"{k}={v}" for k, v in env.items()) or "-"}
    _aligned({_LABELS.get(k, k): v for k, v in shown.items()})


#: `config show`'s words for its JSON keys
_LABELS = {
    "url_elsewhere": "url from another machine",
    "address_from": "address from",
    "profile_from": "profile from",
}


def _aligned(rows: dict[str, object]) -> None:
    width = max(map(len, rows))
    for k, v in rows.items():
        print(f"{k:<{width}}  {v}")


def _profile_in_force(ctx: typer.Context, db: Path) -> tuple[str, str]:
    """The active profile and where that comes from: the running supervisor's, else the one
    the next start activates (SMACKCTL_PROFILE, else the last active one, else default)."""
    try:
        with client(ctx, autostart=False) as c:
            return str(c.get("/api/status")["profile"]), "the running supervisor"
    except SmackError:
        pass
    if name := os.environ.get("SMACKCTL_PROFILE"):
        return name, "SMACKCTL_PROFILE (used by the next start)"
    rows = read_db(db, "SELECT value FROM kv WHERE key='active_profile_path'")
    if rows:
        return Path(rows[0][0]).stem, "the last active one (used by the next start)"
    return "default", "the default (used by the next start)"


#: what `config export` writes first: a file of another kind is refused by `config import`
EXPORT_KIND = "smackctl-settings/1"


@config_app.command("export")
def config_export(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="The file to write (YAML, mode 0600).")],
) -> None:
    """Write your profiles, the keys (their digests: no key can be read back from the file)
    and their limits and preferences to one file, for `config import` on this or another
    machine."""
    import yaml

    from smackctl.paths import list_profile_files, shipped_profiles_dir

    shipped = shipped_profiles_dir().resolve()
    profiles = {
        name: path.read_text()
        for name, path in list_profile_files().items()
        if path.resolve().parent != shipped
    }
    with client(ctx, autostart=False) as c:
        keys = c.get("/api/keys/export")
    text = yaml.safe_dump({"kind": EXPORT_KIND, "profiles": profiles, "keys": keys},
                          sort_keys=False, allow_unicode=True)  # fmt: skip
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    print(f"wrote {len(profiles)} profile(s) and {len(keys)} key(s) to {file}")


@config_app.command("import")
def config_import(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="A file `config export` wrote.")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would change; change nothing.")
    ] = False,
) -> None:
    """Read a file `config export` wrote: every profile and key is checked first, what would
    change is shown, and then (unless --dry-run) made: profiles are written to your profile
    folder, keys to the supervisor."""
    from smackctl.errors import UsageError

    data = _exported(file)
    staged = _staged_profiles(data["profiles"])
    with client(ctx, autostart=False) as c:
        planned = c.post("/api/keys/import", {"keys": data["keys"], "dry_run": True})
        for name, (change, _, _) in staged.items():
            print(f"profile {name}: {change}")
        for k in planned:
            print(f"key {k['name']}: {k['change']}")
        if dry_run:
            output.info("a dry run: nothing was changed")
            return
        c.post("/api/keys/import", {"keys": data["keys"]})
    for change, target, text in staged.values():
        if change != "same":
            tmp = target.with_name(f".{target.name}.import")
            tmp.write_text(text)
            os.replace(tmp, target)
    if not staged and not planned:
        raise UsageError(f"{file} holds no profile and no key", "export one with `config export`")


def _exported(file: Path) -> dict[str, Any]:
    import yaml

    from smackctl.errors import UsageError

    try:
        data = yaml.safe_load(file.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UsageError(
            f"cannot read {file}: {exc}", "give a file `config export` wrote"
        ) from None
    if not isinstance(data, dict) or data.get("kind") != EXPORT_KIND:
        raise UsageError(f"{file} is not a file `config export` wrote",
                         f"its first line must be `kind: {EXPORT_KIND}`")  # fmt: skip
    if not isinstance(data.get("profiles"), dict) or not isinstance(data.get("keys"), list):
        raise UsageError(f"{file} has no `profiles` mapping or no `keys` list",
                         "export it again with `smackctl config export FILE`")  # fmt: skip
    return data


def _staged_profiles(profiles: dict[str, Any]) -> dict[str, tuple[str, Path, str]]:
    """Each profile: (new | changed | same, where it goes, its text), all checked first by
    the same validation as `profile validate` (a ConfigError lists a bad one's problems)."""
    import tempfile

    from smackctl.errors import ConfigError, UsageError
    from smackctl.paths import get_paths
    from smackctl.profile_file import validate_profile_file

    home = Path(os.environ.get("SMACKCTL_PROFILE_DIR") or get_paths().profiles_dir)
    staged = {}
    for name, text in profiles.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
            raise UsageError(f"profile name {str(name)[:40]!r} is not allowed", "rename it")
        if not isinstance(text, str):
            raise UsageError(f"profile {name} is not YAML text", "export it again")
        with tempfile.TemporaryDirectory() as tmp:
            probe = Path(tmp) / f"{name}.yaml"
            probe.write_text(text)
            profile, issues = validate_profile_file(probe)
        if profile is None:
            raise ConfigError(
                f"profile {name} is not valid:\n" + "\n".join(f"  {i}" for i in issues),
                "fix it in the file, then import again",
            )
        target = home / f"{name}.yaml"  # the user's folder: a shipped profile is never written
        old = target.read_text() if target.is_file() else None
        change = "new" if old is None else "same" if old == text else "changed"
        staged[name] = (change, target, text)
    home.mkdir(parents=True, exist_ok=True)
    return staged
