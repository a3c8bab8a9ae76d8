"""The request log over months: each request's row for ``usage.keep_raw`` (30 days), per-day
totals for good, so usage adds up the same before and after rows are rolled up; and a
state.db written before per-day totals existed opens with its history intact.

``data/state-8880d60.db`` was written by the store of commit 8880d60 (the schema before
this one), and ``data/state-8880d60.usage.json`` is what that store's ``usage(0)`` read from
it (``data/make_state.py`` made both).
"""

from __future__ import annotations

import calendar
import json
import math
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from smackctl.config import Profile
from smackctl.daemon.store import Store
from smackctl.daemon.usage_log import KEEP_RAW, MIGRATIONS, next_roll, roll_cutoff

from conftest import Home, launch, shutdown, smackctl

DATA = Path(__file__).parent / "data"
DAY = 86400
CHAT = "/v1/chat/completions"


def _old_state(tmp_path: Path) -> Path:
    db = tmp_path / "state.db"
    shutil.copyfile(DATA / "state-8880d60.db", db)
    return db


def _expected() -> list[dict[str, Any]]:
    """What the old store read, and no cost (no deployment had a price then)."""
    rows = json.loads((DATA / "state-8880d60.usage.json").read_text())
    return [{**r, "cost": 0} for r in rows]


def _old(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows as the old store read them: the seconds spent answering came later (the sum
    of latencies)."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def _raw(db: Path) -> list[float]:
    conn = sqlite3.connect(db)
    try:
        return [at for (at,) in conn.execute("SELECT at FROM requests ORDER BY at")]
    finally:
        conn.close()


def test_a_state_db_of_the_schema_before_opens_with_its_history_intact(tmp_path: Path) -> None:
    db = _old_state(tmp_path)
    before = _raw(db)
    assert len(before) == 420
    s = Store(db)
    try:
        assert s.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert s.recovered is None  # migrated, not set aside
        assert _old(s.usage(0)) == _expected()  # what the old store read, to the unit
        # what else it held is there too
        assert s.get("active_profile_path") == "/home/ann/.config/smackctl/profiles/work.yaml"
        assert s.added_models() == {"extra": {"path": "/models/extra.gguf", "n_ctx": 4096}}
        assert s.measurement("smollm2", "k1") == (250_000_000, None)
        assert s.bench_history("smollm2")[0]["tokens_per_s"] == 42.0
    finally:
        s.close()
    # every row older than 30 days (whole days) went into the totals, at the open
    cutoff = roll_cutoff(time.time(), KEEP_RAW)
    assert _raw(db) == [at for at in before if at >= cutoff]
    assert len(_raw(db)) < len(before)
    again = Store(db)  # and a second open changes nothing
    try:
        assert _old(again.usage(0)) == _expected()
    finally:
        again.close()


def _logged(tmp_path: Path, ages_days: list[float], now: float) -> Store:
    """A store with one request logged per age, as its own clock would have dated it."""
    s = Store(tmp_path / "state.db")
    for i, age in enumerate(ages_days):
        status = 500 if i % 4 == 0 else 200
        s.log_request(f"m{i % 2}", CHAT, status, i, 2 * i, 10.0 * i, f"r{i}")
        s.db.execute("UPDATE requests SET at = ? WHERE request_id = ?", (now - age * DAY, f"r{i}"))
    return s


def test_rolling_up_in_batches_keeps_every_days_totals(tmp_path: Path) -> None:
    now = 1_790_000_000.0  # mid-day, UTC
    ages = [90 + i / 7 for i in range(60)] + [31, 30.5, 29.9, 10, 1, 0.1]
    s = _logged(tmp_path, ages, now)
    try:
        whole = s.usage(0)
        since = now - 40 * DAY
        recent = s.usage(since)
        rolled = []
        while (n := s.roll_up(now, batch=7)) != 0:  # batches that end inside a day
            assert n is not None
            rolled.append(n)
            assert s.usage(0) == whole  # a day half rolled up still adds up
        assert sum(rolled) == len([a for a in ages if now - a * DAY < roll_cutoff(now, 30 * DAY)])
        assert s.usage(0) == whole and s.usage(since) == recent
        left = [at for (at,) in s.db.execute("SELECT at FROM requests")]
        assert min(left) >= roll_cutoff(now, 30 * DAY) and len(left) == 5
        # a shorter keep_raw (the profile's usage.keep_raw) rolls more, reads the same
        s.keep_raw = 7 * DAY
        assert s.roll_up(now) == 3 and s.usage(0) == whole
    finally:
        s.close()


def test_the_roll_up_is_due_at_open_then_each_utc_midnight(tmp_path: Path) -> None:
    now = time.time()
    s = _logged(tmp_path, [45, 44, 2], now)
    try:
        s.flush()  # what the reaper calls every 2 s: the open rolled what was due then
        assert len(list(s.db.execute("SELECT at FROM requests"))) == 3  # next: at midnight
        s._roll_at = 0  # as if that midnight had come
        s.flush()
        assert len(list(s.db.execute("SELECT at FROM requests"))) == 1
        assert s._roll_at == next_roll(s._roll_at - 1) and s._roll_at > now
    finally:
        s.close()
    midnight = 1_790_035_200.0  # 2026-09-22T00:00:00Z
    assert next_roll(midnight - 1) == midnight and next_roll(midnight) == midnight + DAY
    assert roll_cutoff(midnight + 5, 30 * DAY) == midnight - 30 * DAY


def test_keep_raw_is_a_profile_setting_of_at_least_a_day() -> None:
    assert Profile.model_validate({"name": "p"}).usage.keep_raw == 30 * DAY
    assert Profile.model_validate({"name": "p", "usage": {"keep_raw": "90d"}}).usage.keep_raw == (
        90 * DAY
    )
    with pytest.raises(ValueError, match="keep_raw"):
        Profile.model_validate({"name": "p", "usage": {"keep_raw": "1h"}})


def test_smackctl_usage_over_months_reads_the_rolled_up_days(home: Home) -> None:
    home.state.mkdir(parents=True, exist_ok=True)
    _old_state(home.state)
    expected = _expected()
    oldest = calendar.timegm(time.strptime(expected[0]["day"], "%Y-%m-%d"))
    days = math.ceil((time.time() - oldest) / DAY) + 1
    sup = launch(home)
    try:
        res = smackctl(home, "usage", "--since", f"{days}d", "--json")
        assert res.returncode == 0, res.stderr
        assert _old(json.loads(res.stdout)) == expected
        assert len(_raw(home.state / "state.db")) < 420  # read from the per-day totals
    finally:
        shutdown(sup)
