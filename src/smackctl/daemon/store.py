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
import sqlite3
import time
from pathlib import Path
from typing import Any

from smackctl.errors import StateUnwritable

from .statefile import ROLL_AT_OPEN_S, ROLL_RETRY_S, StateFile, log
from .usage_log import KEEP_RAW, ROLL_BATCH, next_roll, roll_up, usage

__all__ = ["Store"]


_SAVE_KEY = (
    "INSERT OR REPLACE INTO keys (name, scope, models, created, expires, revoked, id, digest, "
    "priority, limits, preferences) VALUES (:name, :scope, :models, :created, :expires, "
    ":revoked, :id, :digest, :priority, :limits, :preferences)"
)


def _key_params(row: dict[str, Any]) -> dict[str, Any]:
    return {
        **row,
        "models": json.dumps(list(row["models"])),
        "limits": json.dumps(row["limits"]),
        "preferences": json.dumps(row["preferences"]),
    }


def _dicts(cur: sqlite3.Cursor) -> list[dict[str, Any]]:
    """A query's rows as dicts by column name."""
    names = [c[0] for c in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur]


class Store(StateFile):
    def __init__(self, path: Path, open_wait: float = 5.0, keep_raw: float = KEEP_RAW) -> None:
        #: seconds a request's own row is kept before it is rolled into per-day totals
        self.keep_raw = keep_raw
        self._roll_at = 0.0
        super().__init__(path, open_wait)
        started = time.monotonic()
        while self._roll_due() and time.monotonic() - started < ROLL_AT_OPEN_S:
            pass

    def flush(self, wait_ms: int = 0) -> bool:
        self._roll_due()
        return super().flush(wait_ms)

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
        key: str | None = None,
        cost: float | None = None,
        compute_ms: float | None = None,
    ) -> None:
        self._write(
            "INSERT INTO requests (at, model, route, status, tokens_in, tokens_out, latency_ms, "
            "request_id, key, cost, compute_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                time.time(),
                model,
                route,
                status,
                tokens_in,
                tokens_out,
                latency_ms,
                request_id,
                key,
                cost,
                compute_ms,
            ),  # fmt: skip
        )

    def usage(
        self, since: float, by: str = "model", key: str | None = None, bucket: str = "day"
    ) -> list[dict[str, Any]]:
        """Requests, tokens and errors per model (or per key) per day (UTC) since a unix
        time: the raw rows since then, and the whole days rolled up from that day on
        (``bucket="hour"``: per hour, of the raw rows)."""
        return usage(self.db, since, by, key, bucket)

    # -- keys (``keys.py``) and the audit log -----------------------------------------------------

    def keys(self) -> list[dict[str, Any]]:
        """Each key's row: ``models`` a tuple, ``limits`` and ``preferences`` dicts."""
        cur = self.db.execute(
            "SELECT name, scope, models, created, expires, revoked, id, digest, priority, "
            "limits, preferences FROM keys"
        )
        rows = _dicts(cur)
        for row in rows:
            row["models"] = tuple(json.loads(row["models"]))
            row["limits"] = json.loads(row["limits"])
            row["preferences"] = json.loads(row["preferences"])
        return rows

    def save_key(self, row: dict[str, Any], now: bool = True) -> None:
        """Write a key's row: at once or a clear error (``now``), else as soon as the file
        takes writes (a revocation, already in force in memory)."""
        if now:
            self._write_now(_SAVE_KEY, _key_params(row))
        else:
            self._write(_SAVE_KEY, _key_params(row))

    def save_keys(self, rows: list[dict[str, Any]]) -> None:
        """Write keys' rows in one transaction, or none of them (a clear error)."""
        self._write_now("BEGIN IMMEDIATE", ())
        try:
            for row in rows:
                self.db.execute(_SAVE_KEY, _key_params(row))
            self.db.execute("COMMIT")
        except BaseException as exc:
            self.db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.DatabaseError):
                raise StateUnwritable(
                    f"{self.path} cannot be written ({exc}): no key was imported",
                    "free disk space, or close the program that holds the file",
                ) from None
            raise

    def key_history(self, key: str, since: float) -> list[tuple[float, int, float, float]]:
        """(time, tokens, seconds, cost) of the key's requests since a unix time that were let
        in (not those refused at the door, for their body or by its limits), and its per-day
        totals for days rolled up."""
        raw = self.db.execute(
            "SELECT at, COALESCE(tokens_in, 0) + COALESCE(tokens_out, 0), "
            "COALESCE(compute_ms, latency_ms, 0) / 1000.0, COALESCE(cost, 0) FROM requests "
            "WHERE key = ? "
            "AND at >= ? AND status NOT IN (400, 401, 403, 408, 413, 429)",
            (key, since),
        )
        daily = self.db.execute(
            "SELECT CAST(strftime('%s', day) AS REAL), tokens_in + tokens_out, "
            "compute_ms_sum / 1000.0, cost FROM usage_daily WHERE key = ? AND day >= date(?, "
            "'unixepoch')",
            (key, since),
        )
        return [*raw, *daily]

    def audit(self, key: str, method: str, path: str, status: int, request_id: str) -> None:
        self._write(
            "INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?)",
            (time.time(), key, method, path, status, request_id),
        )

    def audit_log(self, since: float, limit: int = 1000) -> list[dict[str, Any]]:
        cur = self.db.execute(
            "SELECT at, key, method, path, status, request_id FROM audit WHERE at >= ? "
            "ORDER BY at DESC LIMIT ?",
            (since, limit),
        )
        return _dicts(cur)

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
