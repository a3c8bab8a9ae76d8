"""The request log's SQL: each request's row (``requests``, in store.py's schema) for
``keep_raw``, then per-day totals for good (``usage_daily``), and the usage read from both.

Rows are rolled up oldest first, a bounded batch in one transaction, whole UTC days at a time
(so a roll-up is due once a day); a batch may end inside a day, so the totals are added to,
and ``usage`` sums a day's rolled-up totals with its raw rows still there.
"""

from __future__ import annotations

import sqlite3
from typing import Any

__all__ = ["KEEP_RAW", "MIGRATIONS", "ROLL_BATCH", "next_roll", "roll_cutoff", "roll_up", "usage"]

DAY = 86400
#: raw request rows older than this are rolled into per-day totals (``usage.keep_raw``)
KEEP_RAW = 30 * DAY
#: rows rolled up in one step: ~15 ms of the event loop (2 shared cores; 5,000 took ~55 ms)
ROLL_BATCH = 1000

#: ``MIGRATIONS[n]`` takes a state.db of schema ``n`` (``PRAGMA user_version``) to ``n + 1``;
#: store.py's ``_SCHEMA`` is schema 0, what every file before them had
MIGRATIONS = (
    # 1: per-day totals of the request log, kept for good once the raw rows go
    """
    CREATE TABLE IF NOT EXISTS usage_daily (
        day TEXT NOT NULL, model TEXT NOT NULL, route TEXT NOT NULL,
        requests INTEGER NOT NULL, errors INTEGER NOT NULL,
        tokens_in INTEGER NOT NULL, tokens_out INTEGER NOT NULL,
        latency_ms_sum REAL NOT NULL, latency_n INTEGER NOT NULL,
        PRIMARY KEY (day, model, route));
    """,
    # 2: keys (``keys.py``), each request's key, the per-day totals per key, the audit log
    """
    CREATE TABLE IF NOT EXISTS keys (
        name TEXT PRIMARY KEY, id TEXT NOT NULL UNIQUE, digest TEXT NOT NULL,
        scope TEXT NOT NULL, models TEXT NOT NULL, created REAL NOT NULL,
        expires REAL, revoked REAL, priority TEXT NOT NULL DEFAULT 'interactive',
        limits TEXT NOT NULL DEFAULT '{}', preferences TEXT NOT NULL DEFAULT '{}');
    ALTER TABLE requests ADD COLUMN key TEXT;
    ALTER TABLE requests ADD COLUMN cost REAL;
    ALTER TABLE requests ADD COLUMN compute_ms REAL;
    CREATE TABLE usage_daily_2 (
        day TEXT NOT NULL, model TEXT NOT NULL, route TEXT NOT NULL,
        key TEXT NOT NULL DEFAULT '',
        requests INTEGER NOT NULL, errors INTEGER NOT NULL,
        tokens_in INTEGER NOT NULL, tokens_out INTEGER NOT NULL,
        latency_ms_sum REAL NOT NULL, latency_n INTEGER NOT NULL,
        cost REAL NOT NULL DEFAULT 0, compute_ms_sum REAL NOT NULL DEFAULT 0,
        PRIMARY KEY (day, model, route, key));
    INSERT INTO usage_daily_2 SELECT day, model, route, '', requests, errors, tokens_in,
        tokens_out, latency_ms_sum, latency_n, 0, latency_ms_sum FROM usage_daily;
    DROP TABLE usage_daily;
    ALTER TABLE usage_daily_2 RENAME TO usage_daily;
    CREATE TABLE IF NOT EXISTS audit (
        at REAL NOT NULL, key TEXT NOT NULL, method TEXT NOT NULL, path TEXT NOT NULL,
        status INTEGER NOT NULL, request_id TEXT);
    CREATE INDEX IF NOT EXISTS audit_at ON audit(at);
    """,
)

#: the oldest raw rows before a cutoff, in a stable order (the ``at`` index holds it)
_PICKED = "SELECT rowid FROM requests WHERE at < ?1 ORDER BY at, rowid LIMIT ?2"
_ROLL = f"""
INSERT INTO usage_daily AS d
SELECT date(at, 'unixepoch'), model, route, COALESCE(key, ''), COUNT(*), SUM(status >= 400),
       COALESCE(SUM(tokens_in), 0), COALESCE(SUM(tokens_out), 0),
       COALESCE(SUM(latency_ms), 0), COUNT(latency_ms), COALESCE(SUM(cost), 0),
       COALESCE(SUM(COALESCE(compute_ms, latency_ms)), 0)
FROM requests WHERE rowid IN ({_PICKED}) GROUP BY 1, 2, 3, 4
ON CONFLICT (day, model, route, key) DO UPDATE SET
    cost = d.cost + excluded.cost, compute_ms_sum = d.compute_ms_sum + excluded.compute_ms_sum,
    requests = d.requests + excluded.requests, errors = d.errors + excluded.errors,
    tokens_in = d.tokens_in + excluded.tokens_in, tokens_out = d.tokens_out + excluded.tokens_out,
    latency_ms_sum = d.latency_ms_sum + excluded.latency_ms_sum,
    latency_n = d.latency_n + excluded.latency_n
"""
#: per day and model (or key: ``{by}``): the raw rows since ``?1`` and the totals of the days
#: rolled up; ``?2``: only that key's rows (NULL: every row)
_USAGE = """
SELECT day, {by}, SUM(n), SUM(t_in), SUM(t_out), SUM(errors),
       ROUND(SUM(latency) / NULLIF(SUM(latency_n), 0), 1), ROUND(SUM(cost), 6),
       ROUND(SUM(compute) / 1000.0, 3)
FROM (
    SELECT date(at, 'unixepoch') AS day, model, COALESCE(key, '') AS key, COUNT(*) AS n,
           COALESCE(SUM(tokens_in), 0) AS t_in, COALESCE(SUM(tokens_out), 0) AS t_out,
           SUM(status >= 400) AS errors, COALESCE(SUM(latency_ms), 0) AS latency,
           COUNT(latency_ms) AS latency_n, COALESCE(SUM(cost), 0) AS cost,
           COALESCE(SUM(COALESCE(compute_ms, latency_ms)), 0) AS compute
    FROM requests WHERE at >= ?1 AND (?2 IS NULL OR key = ?2) GROUP BY day, model, 3
    UNION ALL
    SELECT day, model, key, SUM(requests), SUM(tokens_in), SUM(tokens_out), SUM(errors),
           SUM(latency_ms_sum), SUM(latency_n), SUM(cost), SUM(compute_ms_sum)
    FROM usage_daily WHERE day >= date(?1, 'unixepoch') AND (?2 IS NULL OR key = ?2)
    GROUP BY day, model, key
) GROUP BY day, {by} ORDER BY day, {by}
"""
_BY = {"model": _USAGE.format(by="model"), "key": _USAGE.format(by="key")}
#: per hour (UTC): from the raw rows only (the rolled-up days keep no hours)
_HOURLY = """
SELECT strftime('%Y-%m-%d %H:00', at, 'unixepoch') AS hour, {by}, COUNT(*),
       COALESCE(SUM(tokens_in), 0), COALESCE(SUM(tokens_out), 0), SUM(status >= 400),
       ROUND(AVG(latency_ms), 1), ROUND(COALESCE(SUM(cost), 0), 6),
       ROUND(COALESCE(SUM(COALESCE(compute_ms, latency_ms)), 0) / 1000.0, 3)
FROM (SELECT *, COALESCE(key, '') AS k FROM requests)
WHERE at >= ?1 AND (?2 IS NULL OR key = ?2) GROUP BY hour, {by} ORDER BY hour, {by}
"""
_BY_HOUR = {"model": _HOURLY.format(by="model"), "key": _HOURLY.format(by="k")}


def roll_cutoff(now: float, keep_raw: float) -> float:
    """Raw rows before this are rolled up: whole UTC days only, so the cutoff moves (and a
    roll-up is due) once a day."""
    return (now - keep_raw) // DAY * DAY


def next_roll(now: float) -> float:
    """When the next day's rows pass the cutoff: the next UTC midnight."""
    return (now // DAY + 1) * DAY


def roll_up(db: sqlite3.Connection, now: float, keep_raw: float, batch: int = ROLL_BATCH) -> int:
    """Roll up to ``batch`` raw rows older than ``keep_raw`` into per-day totals, in one
    transaction; the rows rolled. Raises what SQLite raised (the transaction rolled back)."""
    cutoff = roll_cutoff(now, keep_raw)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute(_ROLL, (cutoff, batch))
        rolled: int = db.execute(
            f"DELETE FROM requests WHERE rowid IN ({_PICKED})", (cutoff, batch)
        ).rowcount
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return rolled


def usage(
    db: sqlite3.Connection,
    since: float,
    by: str = "model",
    key: str | None = None,
    bucket: str = "day",
) -> list[dict[str, Any]]:
    """Requests, tokens, errors, cost and compute seconds (runners' time on them, not the
    time they queued) per model (``by="key"``:
    per key, ``""`` for the requests made before keys or with none; ``by="deployment"``: per
    model, which is what answered) per day (UTC) since a unix time; ``key``: its rows only;
    ``bucket="hour"``: per hour of the raw rows (the last ``keep_raw``), ``hour`` for ``day``."""
    names = (bucket, by, "requests", "tokens_in", "tokens_out", "errors", "avg_ms", "cost",
             "seconds")  # fmt: skip
    table = _BY_HOUR if bucket == "hour" else _BY
    sql = table["model" if by == "deployment" else by]  # a row's model is what answered it
    return [dict(zip(names, r, strict=True)) for r in db.execute(sql, (since, key))]
