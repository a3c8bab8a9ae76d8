"""The supervisor's own state under faults: a corrupt or locked state.db, a disk that refuses
writes, a token file others could read, the active profile's file deleted.

Each fault is real: bytes written over the database, another SQLite connection holding the
write lock, the kernel refusing the supervisor's writes (RLIMIT_FSIZE 0, set on the running
process: every write fails with EFBIG, the same failed write a full disk gives SQLite), a
chmod, an unlink. What must hold: the supervisor keeps serving, says what is wrong and what
it did, and loses no data it could keep.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path

import httpx
import psutil
import pytest

from smackctl.daemon.store import Store
from smackctl.errors import SmackError, StateUnwritable

from conftest import CHAT, Home, ask, launch, shutdown, smackctl, wait_for


def _requests_logged(sup_client: httpx.Client) -> int:
    return sum(row["requests"] for row in sup_client.get("/api/usage").json())


# -- the store alone, on real SQLite files ---------------------------------------------------


def test_a_damaged_database_is_set_aside_and_a_new_one_started(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    s = Store(db)
    for i in range(2000):
        s.log_request("m", "/v1/chat/completions", 200, 1, 1, 1.0, f"r{i}")
    s.close()
    raw = bytearray(db.read_bytes())
    assert len(raw) > 16 * 4096
    raw[8 * 4096 : 12 * 4096] = b"\xa5" * (4 * 4096)  # pages in the middle of the table
    db.write_bytes(bytes(raw))

    s = Store(db)
    assert s.recovered is not None and "kept as" in s.recovered
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("state.db.corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes() == bytes(raw)  # kept, byte for byte
    assert s.usage(0) == []  # the new one is empty and works
    s.log_request("m", "/v1/chat/completions", 200, 1, 1, 1.0, "after")
    assert s.usage(0)[0]["requests"] == 1
    s.close()


def test_a_database_another_program_holds_exclusively_is_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    Store(db).close()
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("PRAGMA locking_mode=EXCLUSIVE")
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(SmackError) as err:
            Store(db, open_wait=0.2)
        assert "locked by another program" in err.value.message
        assert err.value.hint and "close the program" in err.value.hint
        assert not [p for p in tmp_path.iterdir() if "corrupt" in p.name]  # not "recovered"
    finally:
        other.close()


def test_writes_wait_in_memory_while_locked_and_land_in_order(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    s = Store(db)
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # holds the write lock
    for i in range(5):
        s.log_request("m", "/v1/chat/completions", 200, i, i, 1.0, f"r{i}")
    s.set("k", "v1")
    s.set("k", "v2")
    trouble = s.trouble()
    assert trouble is not None and "7 write(s) kept" in trouble and "lock" in trouble
    with pytest.raises(StateUnwritable) as err:
        s.add_model("x", {"path": "/x.gguf"})  # a write a user waits for fails at once
    assert err.value.status == 503 and err.value.hint
    assert s.flush() is False
    other.execute("COMMIT")
    other.close()
    assert s.flush() is True and s.trouble() is None
    assert s.usage(0)[0]["requests"] == 5 and s.get("k") == "v2"  # all of them, in order
    s.close()


# -- the supervisor ------------------------------------------------------------------------


def test_supervisor_starts_on_a_corrupt_state_db_and_says_so(home: Home) -> None:
    home.state.mkdir(parents=True, exist_ok=True)
    junk = b"this is not a database, it is what a crash mid-copy left\n" * 100
    (home.state / "state.db").write_bytes(junk)
    sup = launch(home)
    try:
        assert ask(sup, "tiny-a").status_code == 200
        with sup.client() as c:
            assert _requests_logged(c) == 1
        res = smackctl(home, "status")
        assert res.returncode == 0
        assert "could not be read" in res.stderr and "kept as" in res.stderr
        assert "Traceback" not in res.stderr and "DatabaseError(" not in res.stderr
        aside = [p for p in home.state.iterdir() if p.name.startswith("state.db.corrupt-")]
        assert len(aside) == 1 and aside[0].read_bytes() == junk
    finally:
        shutdown(sup)
    # the next start is clean: nothing more to say
    sup = launch(home)
    try:
        assert sup.status()["warnings"] == []
    finally:
        shutdown(sup)


def test_a_locked_state_db_does_not_stop_serving_and_loses_no_request(
    home: Home, model_dir: Path
) -> None:
    sup = launch(home)
    try:
        assert ask(sup, "tiny-a").status_code == 200
        other = sqlite3.connect(home.state / "state.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another program holds the write lock
        try:
            with sup.client() as c:
                for _ in range(3):
                    r = c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-a"})
                    assert r.status_code == 200
                warnings = sup.status()["warnings"]
                assert any("another program holds its lock" in w for w in warnings), warnings
                new = {"name": "extra", "path": str(model_dir / "tiny-b.gguf")}
                res = c.post("/api/models", json=new)
                assert res.status_code == 503, res.text  # refused at once, with the reason
                assert "cannot be written" in res.json()["error"]["message"]
                assert res.headers["retry-after"]
        finally:
            other.execute("COMMIT")
            other.close()
        wait_for(lambda: sup.status()["warnings"] == [], 20, "the kept writes to land")
        with sup.client() as c:
            assert _requests_logged(c) == 4
        assert "takes writes again" in sup.log()
    finally:
        shutdown(sup)


def test_a_disk_that_refuses_writes_does_not_stop_serving(home: Home) -> None:
    sup = launch(home)
    proc = psutil.Process(sup.pid)
    try:
        assert ask(sup, "tiny-a").status_code == 200
        _, hard = proc.rlimit(psutil.RLIMIT_FSIZE)
        proc.rlimit(psutil.RLIMIT_FSIZE, (0, hard))  # from now on every write it makes fails
        try:
            with sup.client() as c:
                for _ in range(3):
                    r = c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-a"})
                    assert r.status_code == 200, r.text
                warnings = sup.status()["warnings"]
                assert any("cannot be written" in w for w in warnings), warnings
                small = {"runs": 1, "prompt_tokens": 8, "gen_tokens": 2}
                r = c.post("/api/models/tiny-a/bench", json=small)
                last = json.loads(r.text.splitlines()[-1])  # a bench a user waits for
                assert last["event"] == "error" and last["status"] == 503, last
                assert "cannot be written" in last["message"] and last["hint"]
            assert sup.proc.poll() is None
        finally:
            proc.rlimit(psutil.RLIMIT_FSIZE, (hard, hard))
        wait_for(lambda: sup.status()["warnings"] == [], 20, "the kept writes to land")
        with sup.client() as c:
            assert _requests_logged(c) >= 4  # every request served, none lost
    finally:
        shutdown(sup)


def test_a_token_file_others_can_read_is_replaced(home: Home) -> None:
    home.state.mkdir(parents=True, exist_ok=True)
    token_file = home.state / "token"
    token_file.write_text("smk-the-old-one\n")
    os.chmod(token_file, 0o644)
    sup = launch(home)
    try:
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert sup.token != "smk-the-old-one"
        r = httpx.get(sup.url + "/api/status", headers={"Authorization": "Bearer smk-the-old-one"})
        assert r.status_code == 401  # whoever read the old one cannot use it
        assert ask(sup, "tiny-a").status_code == 200
        res = smackctl(home, "status")
        assert res.returncode == 0 and "mode 644" in res.stderr and "new token" in res.stderr
    finally:
        shutdown(sup)


def test_deleting_the_active_profile_is_said_and_the_next_start_falls_back(
    home: Home,
) -> None:
    profile = home.root / "profiles" / "test.yaml"
    sup = launch(home)
    try:
        profile.unlink()
        assert ask(sup, "tiny-a").status_code == 200  # still running it, from memory
        res = smackctl(home, "status")
        assert res.returncode == 0
        assert "was deleted" in res.stderr and "profile switch" in res.stderr
    finally:
        shutdown(sup)
    sup = launch(home, profile="")  # no --profile: the persisted (deleted) one
    try:
        st = sup.status()
        assert st["profile"] == "default"
        assert any("no longer exists" in w for w in st["warnings"]), st["warnings"]
    finally:
        shutdown(sup)
