"""The supervisor's state in SQLite (WAL): what must survive a restart.

Only the supervisor writes here. Queries are tiny and run on the event-loop thread.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

__all__ = ["Store"]

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


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    # -- key/value ----------------------------------------------------------------------------

    def get(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set(self, key: str, value: str | None) -> None:
        if value is None:
            self.db.execute("DELETE FROM kv WHERE key=?", (key,))
        else:
            self.db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, value))

    # -- models added with `smackctl models add` ---------------------------------------------

    def added_models(self) -> dict[str, dict[str, Any]]:
        rows = self.db.execute("SELECT name, spec FROM added_models ORDER BY name")
        return {name: json.loads(spec) for name, spec in rows}

    def add_model(self, name: str, spec: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO added_models VALUES (?, ?, ?)",
            (name, json.dumps(spec), time.time()),
        )

    def remove_model(self, name: str) -> bool:
        return self.db.execute("DELETE FROM added_models WHERE name=?", (name,)).rowcount > 0

    # -- what to load again after a restart ----------------------------------------------------

    def set_restore(self, names: dict[str, str]) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM restore_models")
            self.db.executemany("INSERT INTO restore_models VALUES (?, ?)", names.items())

    def restore(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT name, reason FROM restore_models ORDER BY name"))

    # -- runner processes, so a later supervisor can reap ones an earlier one left --------------

    def record_runner(self, pid: int, model: str, create_time: float, cmdline: str) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO runners VALUES (?, ?, ?, ?)", (pid, model, create_time, cmdline)
        )

    def forget_runner(self, pid: int) -> None:
        self.db.execute("DELETE FROM runners WHERE pid=?", (pid,))

    def runners(self) -> list[tuple[int, str, float, str]]:
        return list(self.db.execute("SELECT pid, model, create_time, cmdline FROM runners"))

    # -- measured memory per model + load parameters ---------------------------------------------

    def save_measurement(
        self, model: str, load_key: str, ram: int | None, vram: int | None
    ) -> None:
        self.db.execute(
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
        self.db.execute(
            "INSERT INTO requests VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (time.time(), model, route, status, tokens_in, tokens_out, latency_ms, request_id),
        )

    def usage(self, since: float) -> list[dict[str, Any]]:
        """Requests, tokens and errors per model per day (UTC) since a unix time."""
        rows = self.db.execute(
            "SELECT date(at, 'unixepoch') AS day, model, COUNT(*), "
            "COALESCE(SUM(tokens_in), 0), COALESCE(SUM(tokens_out), 0), "
            "SUM(status >= 400), ROUND(AVG(latency_ms), 1) "
            "FROM requests WHERE at >= ? GROUP BY day, model ORDER BY day, model",
            (since,),
        )
        keys = ("day", "model", "requests", "tokens_in", "tokens_out", "errors", "avg_ms")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    # -- runner crashes (`smackctl doctor` reads them from the file) -----------------------------

    def record_crash(self, model: str, what: str) -> None:
        self.db.execute("INSERT INTO crashes VALUES (?, ?, ?)", (time.time(), model, what))
        self.db.execute("DELETE FROM crashes WHERE at < ?", (time.time() - 30 * 86400,))

    # -- `smackctl models bench` results -------------------------------------------------------

    def save_bench(self, model: str, result: dict[str, Any]) -> int:
        cur = self.db.execute(
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
