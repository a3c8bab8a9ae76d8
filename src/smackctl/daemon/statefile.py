"""The supervisor's state file (SQLite, WAL) and its faults: see ``store.py``."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections import deque
from pathlib import Path
from typing import Any

from smackctl.errors import SmackError, StateUnwritable

from .usage_log import MIGRATIONS

__all__ = ["StateFile"]

log = logging.getLogger("smackctl.state")

#: a statement's parameters: positional, or named
Params = tuple[Any, ...] | dict[str, Any]

#: writes kept in memory while the file refuses them; past this the oldest request-log rows go
#: (they are counted, and said)
PENDING_CAP = 100_000
#: how long a write on the event loop may wait for another program's lock
WRITE_WAIT_MS = 100
#: at open, roll-up steps are taken for at most this long; the reaper takes the rest
ROLL_AT_OPEN_S = 2.0
#: a roll-up that could not be made (the file refused writes) is tried again this much later
ROLL_RETRY_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS added_models (
    name TEXT PRIMARY KEY, spec TEXT NOT NULL, added_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS restore_models (name TEXT PRIMARY KEY, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runners (
    pid INTEGER PRIMARY KEY, model TEXT NOT NULL, create_time REAL NOT NULL, cmdline TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS measurements (
    model TEXT NOT NULL, load_key TEXT NOT NULL, ram INTEGER, vram INTEGER, at REAL NOT NULL,
    PRIMARY KEY (model, load_key));
CREATE TABLE IF NOT EXISTS requests (
    at REAL NOT NULL, model TEXT NOT NULL, route TEXT NOT NULL, status INTEGER NOT NULL,
    tokens_in INTEGER, tokens_out INTEGER, latency_ms REAL, request_id TEXT);
CREATE INDEX IF NOT EXISTS requests_at ON requests(at);
CREATE TABLE IF NOT EXISTS bench (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, model TEXT NOT NULL,
    result TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS bench_model ON bench(model, at);
CREATE TABLE IF NOT EXISTS crashes (at REAL NOT NULL, model TEXT NOT NULL, what TEXT NOT NULL);
"""


def _locked(exc: sqlite3.Error) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or "busy" in str(exc)
    )


def _holders(path: Path) -> list[int]:
    """Pids of other processes with the database file open (best effort)."""
    import psutil

    found = []
    names = {str(path), f"{path}-wal", f"{path}-shm"}
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == os.getpid():
            continue
        try:
            if any(f.path in names for f in proc.open_files()):
                found.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    return found


class StateFile:
    """The file: opened (a damaged one set aside), migrated, written (what it refuses
    kept in memory, in order, until ``flush`` can write it). ``Store`` says what is kept."""

    def __init__(self, path: Path, open_wait: float = 5.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        #: what was wrong with the file at open and what was done about it (said aloud)
        self.recovered: str | None = None
        self._pending: deque[tuple[str, Params]] = deque()
        self._dropped = 0
        self._why: str | None = None
        try:
            self.db = self._open(open_wait)
        except sqlite3.DatabaseError as exc:
            if _locked(exc):
                pids = _holders(path)
                who = f" (pid {', '.join(map(str, pids))})" if pids else ""
                raise SmackError(
                    f"{path} is locked by another program{who}",
                    "close the program that holds it (an sqlite3 shell?), then start again",
                ) from None
            self.recovered = self._set_aside(exc)
            self.db = self._open(open_wait)

    def _open(self, wait: float) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=wait)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            self._migrate(db)
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check}")
            db.execute(f"PRAGMA busy_timeout={WRITE_WAIT_MS}")
        except BaseException:
            db.close()
            raise
        return db

    def _migrate(self, db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            log.warning(
                "%s has schema %d, newer than this smackctl's %d (a newer smackctl wrote it): "
                "opened as it is",
                self.path,
                version,
                len(MIGRATIONS),
            )
        for n in range(version, len(MIGRATIONS)):
            # one transaction per step: a step that fails leaves the file as it was (the
            # connection is closed, which rolls it back)
            db.executescript(
                f"BEGIN IMMEDIATE; {MIGRATIONS[n]}; PRAGMA user_version = {n + 1}; COMMIT;"
            )
            log.info("%s: schema %d -> %d", self.path, n, n + 1)

    def _set_aside(self, exc: sqlite3.Error) -> str:
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                os.replace(src, f"{aside}{suffix}")
        msg = (
            f"{self.path} could not be read ({exc}); it was kept as {aside} and a new one "
            "started: models added with `smackctl models add`, usage and measurements start "
            "afresh"
        )
        log.warning("%s", msg)
        return msg

    def close(self) -> None:
        if not self.flush(wait_ms=2000):
            log.error(
                "%s cannot be written (%s): %d write(s) kept in memory are lost at this exit",
                self.path,
                self._why,
                len(self._pending),
            )
        self.db.close()

    # -- writes that may wait ------------------------------------------------------------------

    def _write(self, sql: str, params: Params = ()) -> None:
        """Write now, or keep the write in order until the file takes writes again."""
        if self._pending:
            self._keep(sql, params)
            return
        try:
            self.db.execute(sql, params)
        except sqlite3.DatabaseError as exc:
            self._refused(exc)
            self._keep(sql, params)

    def _keep(self, sql: str, params: Params) -> None:
        self._pending.append((sql, params))
        while len(self._pending) > PENDING_CAP:
            # the request log is what may go; state rows (runners, measurements) are kept
            for i, (old, _) in enumerate(self._pending):
                if old.startswith("INSERT INTO requests"):
                    del self._pending[i]
                    self._dropped += 1
                    break
            else:
                break

    def _refused(self, exc: sqlite3.Error) -> None:
        why = "another program holds its lock" if _locked(exc) else str(exc)
        if self._why is None:
            log.warning(
                "%s cannot be written (%s); keeping its writes in memory until it can",
                self.path,
                why,
            )
        self._why = why

    def flush(self, wait_ms: int = 0) -> bool:
        """Write what was kept, in one transaction; True when nothing is left (the reaper
        calls this every 2 s; ``Store`` also takes a roll-up step then)."""
        if not self._pending:
            return True
        done = 0
        try:
            self.db.execute(f"PRAGMA busy_timeout={wait_ms}")
            self.db.execute("BEGIN IMMEDIATE")
            for sql, params in self._pending:
                self.db.execute(sql, params)
            self.db.execute("COMMIT")
            done = len(self._pending)
        except sqlite3.DatabaseError as exc:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            self._refused(exc)
            return False
        finally:
            self.db.execute(f"PRAGMA busy_timeout={WRITE_WAIT_MS}")
        self._pending.clear()
        if self._why is not None:
            log.warning(
                "%s takes writes again: wrote the %d kept in memory%s",
                self.path,
                done,
                f" ({self._dropped} request-log rows over the cap were lost)"
                if self._dropped
                else "",
            )
        self._why = None
        return True

    def trouble(self) -> str | None:
        """A sentence on the writes kept in memory, or None when the file is fine."""
        if not self._pending:
            return None
        lost = f"; {self._dropped} request-log rows over the cap lost" if self._dropped else ""
        return (
            f"{self.path} cannot be written ({self._why}): {len(self._pending)} write(s) kept "
            f"in memory until it can{lost}"
        )

    def _write_now(self, sql: str, params: Params) -> sqlite3.Cursor:
        """A write the user waits for: made now, or a clear error."""
        if not self.flush():
            raise StateUnwritable(
                f"{self.path} cannot be written ({self._why})",
                "free disk space, or close the program that holds the file; "
                "`smackctl status` says when it is writable again",
            )
        try:
            return self.db.execute(sql, params)
        except sqlite3.DatabaseError as exc:
            self._refused(exc)
            raise StateUnwritable(
                f"{self.path} cannot be written ({self._why})",
                "free disk space, or close the program that holds the file",
            ) from None
