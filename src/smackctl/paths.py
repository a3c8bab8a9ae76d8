"""Where smackctl keeps things. ``SMACKCTL_HOME`` moves all of it under one directory.

Only the standard library and platformdirs are imported here: shell completion uses it.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "private_db",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "find_llama_server",
    "Paths",
    "get_paths",
    "pid_status",
    "list_profile_files",
    "profile_dirs",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7622

APP = "smackctl"


class Paths:
    """The three directories. A plain class: ``dataclasses`` imports ``inspect``, which would
    cost every <TAB> of shell completion 18 ms."""

    __slots__ = ("config_dir", "data_dir", "state_dir")

    def __init__(self, *, config_dir: Path, data_dir: Path, state_dir: Path) -> None:
        self.config_dir = config_dir  # profiles/, settings
        self.data_dir = data_dir  # models/
        self.state_dir = state_dir  # state.db, token, supervisor.pid, logs/

    def __repr__(self) -> str:
        return (
            f"Paths(config_dir={self.config_dir!r}, data_dir={self.data_dir!r}, "
            f"state_dir={self.state_dir!r})"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Paths) and repr(self) == repr(other)

    def __hash__(self) -> int:
        return hash(repr(self))

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def profiles_dir(self) -> Path:
        return self.config_dir / "profiles"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def db_path(self) -> Path:
        return self.state_dir / "state.db"

    @property
    def pid_path(self) -> Path:
        return self.state_dir / "supervisor.pid"

    @property
    def token_path(self) -> Path:
        return self.state_dir / "token"

    @property
    def endpoint_path(self) -> Path:
        """The URL the running supervisor listens on, written once it is ready."""
        return self.state_dir / "endpoint"

    @property
    def endpoint_cert_path(self) -> Path:
        """The certificate a supervisor serving HTTPS presents (its path), written with the
        endpoint: the CLI trusts it for that URL."""
        return self.state_dir / "endpoint-cert"

    @property
    def supervisor_log(self) -> Path:
        return self.logs_dir / "supervisor.log"

    @property
    def history_path(self) -> Path:
        return self.state_dir / "chat_history"

    def runner_log(self, model: str) -> Path:
        return self.logs_dir / f"runner-{model}.log"

    def ensure(self) -> Paths:
        for d in (self.config_dir, self.data_dir, self.state_dir, self.models_dir, self.logs_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self


def pid_status(paths: Paths) -> tuple[int | None, bool]:
    """(pid in the pid file, whether a live supervisor holds its lock)."""
    try:
        f = open(paths.pid_path)  # noqa: SIM115
    except FileNotFoundError:
        return None, False
    with f:
        text = f.read().strip()
        pid = int(text) if text.isdigit() else None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return pid, True
        fcntl.flock(f, fcntl.LOCK_UN)
        return pid, False


def get_paths() -> Paths:
    home = os.environ.get("SMACKCTL_HOME")
    if home:
        root = Path(home).expanduser().resolve()
        return Paths(config_dir=root / "config", data_dir=root / "data", state_dir=root / "state")
    import platformdirs

    return Paths(
        config_dir=Path(platformdirs.user_config_dir(APP)),
        data_dir=Path(platformdirs.user_data_dir(APP)),
        state_dir=Path(platformdirs.user_state_dir(APP)),
    )


def shipped_profiles_dir() -> Path:
    """``profiles/`` of the source tree smackctl runs from (an editable install)."""
    return Path(__file__).resolve().parents[2] / "profiles"


def profile_dirs(extra: Iterable[Path] = ()) -> list[Path]:
    """Where profiles are looked up, first match wins: --profile-dir, $SMACKCTL_PROFILE_DIR,
    the user's config dir, the shipped profiles.

    Never ``./profiles``: a profile runs programs (``llama_server:``), and a directory the user
    merely stands in (a cloned repository) must not shadow their own ``default``. A profile
    there is used when named by its path (``smackctl profile switch profiles/dev.yaml``) or
    with ``--profile-dir profiles``."""
    dirs = [*extra]
    env = os.environ.get("SMACKCTL_PROFILE_DIR")
    if env:
        dirs.append(Path(env))
    dirs += [get_paths().profiles_dir, shipped_profiles_dir()]
    out: list[Path] = []
    for d in dirs:
        r = d.resolve()
        if r not in out:
            out.append(r)
    return out


def list_profile_files(extra: Iterable[Path] = ()) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in profile_dirs(extra):
        if d.is_dir():
            for f in sorted(d.glob("*.y*ml")):
                found.setdefault(f.stem, f)
    return found


def find_llama_server(configured: str | None = None) -> str | None:
    """The binary: the profile's ``llama_server``, else the one `make install` put beside
    this Python, else one on PATH."""
    import shutil
    import sys

    if configured:
        path = Path(os.path.expandvars(configured)).expanduser()
        return str(path) if path.is_file() and os.access(path, os.X_OK) else None
    beside = Path(sys.executable).parent / "llama-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("llama-server")


def private_db(path: Path) -> None:
    """A SQLite file that holds prompts or answers made the user's alone, whatever the
    umask: created 0600 if it is not there, and it and its -wal and -shm set to 0600 (SQLite
    gives those the database file's mode)."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for suffix in ("", "-wal", "-shm"):
        try:
            os.chmod(f"{path}{suffix}", 0o600)
        except FileNotFoundError:
            pass
