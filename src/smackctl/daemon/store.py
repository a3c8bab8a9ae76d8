"""The supervisor's state in SQLite (WAL): what must survive a restart.

Only the supervisor writes here. Queries are tiny and run on the event-loop thread, so a
write never waits long for a lock: the supervisor keeps serving whatever the file does.

- A file that is not a database, or a damaged one, is moved aside (``state.db.corrupt-…``,
  never deleted) and a new one is started; ``recovered`` says so, and the supervisor says it
  aloud (its log, ``smackctl status``).
- A write that cannot be made now (another program holds the lock, the disk is full, an I/O
  error) is kept in memory, in order, and written when the file takes writes again; the
  supervisor's reaper calls ``flush``. ``trouble`` says what is kept and why. Writes a user
  waits for (``models add``, a bench result) fail at once with the reason and the fix.
- The request log keeps each request's row for ``keep_raw`` (the profile's
  ``usage.keep_raw``, 30 days), then per-day totals for good (``usage_daily``): older rows are
  rolled up at open and, from the reaper's ``flush``, each day after UTC midnight, a bounded
  batch at a time. ``usage`` reads both, so usage over months still adds up.
- The schema has a version (``PRAGMA user_version``); ``_MIGRATIONS`` take an older file to
  this one at open, each in one transaction, history kept.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections import deque
from pathlib import Path
from typing import Any

from smackctl.errors import SmackError, StateUnwritable

from .usage_log import KEEP_RAW, MIGRATIONS, ROLL_BATCH, next_roll, roll_up, usage

__all__ = ["Store", "StateUnwritable"]

log = logging.getLogger("smackctl.state")

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


class Store:
    def __init__(self, path: Path, open_wait: float = 5.0, keep_raw: float = KEEP_RAW) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        #: seconds a request's own row is kept before it is rolled into per-day totals
        self.keep_raw = keep_raw
        self._roll_at = 0.0
        #: what was wrong with the file at open and what was done about it (said aloud)
        self.recovered: str | None = None
        self._pending: deque[tuple[str, tuple[Any, ...]]] = deque()
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
        started = time.monotonic()
        while self._roll_due() and time.monotonic() - started < ROLL_AT_OPEN_S:
            pass

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

    def _write(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        """Write now, or keep the write in order until the file takes writes again."""
        if self._pending:
            self._keep(sql, params)
            return
        try:
            self.db.execute(sql, params)
        except sqlite3.DatabaseError as exc:
            self._refused(exc)
            self._keep(sql, params)

    def _keep(self, sql: str, params: tuple[Any, ...]) -> None:
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
        calls this every 2 s: it also takes a roll-up step when one is due)."""
        self._roll_due()
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

    def _write_now(self, sql: str, params: tuple[Any, ...]) -> sqlite3.Cursor:
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

    # -- key/value ----------------------------------------------------------------------------

    def get(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set(self, key: str, value: str | None) -> None:
        if value is None:
            self._write("DELETE FROM kv WHERE key=?", (key,))
        else:
            self._write("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, value))

    # -- models added with `smackctl models add` ---------------------------------------------

    def added_models(self) -> dict[str, dict[str, Any]]:
        rows = self.db.execute("SELECT name, spec FROM added_models ORDER BY name")
        return {name: json.loads(spec) for name, spec in rows}

    def add_model(self, name: str, spec: dict[str, Any]) -> None:
        self._write_now(
            "INSERT OR REPLACE INTO added_models VALUES (?, ?, ?)",
            (name, json.dumps(spec), time.time()),
        )

    def remove_model(self, name: str) -> bool:
        return self._write_now("DELETE FROM added_models WHERE name=?", (name,)).rowcount > 0

    # -- what to load again after a restart ----------------------------------------------------

    def set_restore(self, names: dict[str, str]) -> None:
        # kept and flushed together: one transaction, or kept whole until the file takes it
        self._keep("DELETE FROM restore_models", ())
        for name, reason in names.items():
            self._keep("INSERT INTO restore_models VALUES (?, ?)", (name, reason))
        self.flush()

    def restore(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT name, reason FROM restore_models ORDER BY name"))

    # -- runner processes, so a later supervisor can reap ones an earlier one left --------------

    def record_runner(self, pid: int, model: str, create_time: float, cmdline: str) -> None:
        self._write(
            "INSERT OR REPLACE INTO runners VALUES (?, ?, ?, ?)", (pid, model, create_time, cmdline)
        )

    def forget_runner(self, pid: int) -> None:
        self._write("DELETE FROM runners WHERE pid=?", (pid,))

    def runners(self) -> list[tuple[int, str, float, str]]:
        return list(self.db.execute("SELECT pid, model, create_time, cmdline FROM runners"))

    # -- measured memory per model + load parameters ---------------------------------------------

    def save_measurement(
        self, model: str, load_key: str, ram: int | None, vram: int | None
    ) -> None:
        self._write(
            "INSERT OR REPLACE INTO measurements VALUES (?, ?, ?, ?, ?)",
            (model, load_key, ram, vram, time.time()),
        )

    def measurement(self, model: str, load_key: str) -> tuple[int | None, int | None] | None:
        row = self.db.execute(
            "SELECT ram, vram FROM measurements WHERE model=? AND load_key=?", (model, load_key)
        ).fetchone()
        return None if row is None else (row[0], row[1])

    # -- request log ------------------------------------------------------------------------------

    def log_request(
        self,
        model: str,
        route: str,
        status: int,
        tokens_in: int | None,
        tokens_out: int | None,
        latency_ms: float,
        request_id: str,
    ) -> None:
        self._write(
            "INSERT INTO requests VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (time.time(), model, route, status, tokens_in, tokens_out, latency_ms, request_id),
        )

    def usage(self, since: float) -> list[dict[str, Any]]:
        """Requests, tokens and errors per model per day (UTC) since a unix time: the raw
        rows since then, and the whole days rolled up from that day on."""
        return usage(self.db, since)

    def roll_up(self, now: float | None = None, batch: int = ROLL_BATCH) -> int | None:
        """Roll up to ``batch`` raw rows older than ``keep_raw`` into per-day totals; the
        rows rolled, or None when the file refuses writes now."""
        if self._pending:
            return None  # the reaper's flush writes what is kept first
        try:
            return roll_up(self.db, time.time() if now is None else now, self.keep_raw, batch)
        except sqlite3.DatabaseError as exc:
            log.info("%s: the request log's roll-up waits (%s)", self.path, exc)
            return None

    def _roll_due(self) -> bool:
        """A roll-up step when one is due; True when more rows wait for the next step."""
        now = time.time()
        if now < self._roll_at:
            return False
        rolled = self.roll_up(now)
        if rolled is None:
            self._roll_at = now + ROLL_RETRY_S
            return False
        more = rolled == ROLL_BATCH
        self._roll_at = now if more else next_roll(now)
        return more

    # -- runner crashes (`smackctl doctor` reads them from the file) -----------------------------

    def record_crash(self, model: str, what: str) -> None:
        self._write("INSERT INTO crashes VALUES (?, ?, ?)", (time.time(), model, what))
        self._write("DELETE FROM crashes WHERE at < ?", (time.time() - 30 * 86400,))

    # -- `smackctl models bench` results -------------------------------------------------------

    def save_bench(self, model: str, result: dict[str, Any]) -> int:
        cur = self._write_now(
            "INSERT INTO bench (at, model, result) VALUES (?, ?, ?)",
            (result["at"], model, json.dumps(result)),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def bench_history(self, model: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Stored bench results, newest first; each carries its row id."""
        rows = self.db.execute(
            "SELECT id, result FROM bench WHERE ?1 IS NULL OR model = ?1 "
            "ORDER BY at DESC, id DESC LIMIT ?2",
            (model, limit),
        )
        return [{**json.loads(result), "id": id_} for id_, result in rows]
