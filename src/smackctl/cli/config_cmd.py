"""`smackctl config path | show`: where smackctl keeps things and what is in force."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

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
    for k, v in data.items():
        print(f"{k:<13} {', '.join(v) if isinstance(v, list) else v}")


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
    for k, v in data.items():
        print(f"{k:<12} {v}")


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
