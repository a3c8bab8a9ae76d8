"""Keys beside the operator's token (issue 29, its first part): made with `smackctl keys
create`, printed once and stored as a sha256 in the real state.db, checked on every route;
a scope and a list of models bound what a key reaches; revoked or expired keys get 401 at
once, streams in flight included; what a key asked is its own in the usage log; what admins
change is audited. Checked with the official SDKs against a real supervisor, and a state.db
of the schema before keys opens with its history intact."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from smackctl.daemon.api.guard import scope_needed
from smackctl.daemon.keys import KeyRing, expiry
from smackctl.daemon.store import Store
from smackctl.daemon.usage_log import MIGRATIONS
from smackctl.errors import UnknownKey, UsageError

from conftest import (
    CHAT,
    Home,
    Supervisor,
    launch_on,
    make_key,
    profile_yaml,
    shutdown,
    smackctl,
    wait_for,
)

DATA = Path(__file__).parent / "data"


# -- the key ring, on a real state.db ----------------------------------------------------------


def test_a_key_is_stored_as_its_digest_and_checked_whole(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    ring = KeyRing(store)
    key, token = ring.create("ann", "inference", ["tiny-a", " tiny-b ", "tiny-a"], None)
    assert token.startswith(f"smk-{key.id}-") and len(token) == 4 + 8 + 1 + 43
    assert key.models == ("tiny-a", "tiny-b")
    assert ring.check(token.encode()) is key
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("state.db"))
    assert token[13:].encode() not in raw and key.digest.encode() in raw  # only its sha256
    again = KeyRing(Store(tmp_path / "state.db"))  # read back from the file
    held = again.check(token.encode())
    assert held is not None and held.name == "ann" and held.models == ("tiny-a", "tiny-b")
    wrong = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert again.check(wrong.encode()) is None  # one character off
    assert again.check(b"smk-00000000-" + token[13:].encode()) is None  # no such id
    assert again.check(b"") is None and again.check(b"smk-zz") is None
    again.store.close()


def test_revoked_rotated_and_expired_keys_are_refused_with_the_reason(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    ring = KeyRing(store)
    key, old = ring.create("bob", "metrics", ["*"], expiry("2w", time.time()))
    assert key.models == ("*",) and key.expires is not None
    rotated, new = ring.rotate("bob")
    assert ring.check(old.encode()) is None and ring.check(new.encode()) is rotated
    assert rotated.refusal(time.time()) is None
    assert rotated.refusal(time.time() + 15 * 86400) == (
        f"key bob expired at {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(rotated.expires))}"
    )
    ring.revoke("bob")
    assert (why := rotated.refusal(time.time())) is not None and why.startswith(
        "key bob was revoked"
    )
    assert KeyRing(store).check(new.encode()) is not None  # kept, to say why it is refused
    assert KeyRing(store).get("bob").revoked is not None
    _, again = ring.create("bob", "inference", ["*"], None)  # a revoked name may be made anew
    assert ring.check(again.encode()) is not None and ring.check(new.encode()) is None
    with pytest.raises(UsageError, match="a key needs the models it may use"):
        ring.create("empty", "inference", ["", " "], None)  # never every model by mistake
    with pytest.raises(UsageError, match="a key named bob exists"):
        ring.create("bob", "inference", ["*"], None)
    with pytest.raises(UsageError, match="not allowed"):
        ring.create("operator", "admin", ["*"], None)
    with pytest.raises(UsageError, match="scope 'root' is unknown"):
        ring.create("x", "root", ["*"], None)
    with pytest.raises(UnknownKey):
        ring.revoke("nobody")
    with pytest.raises(UsageError, match="90m, 12h, 30d"):
        expiry("tomorrow", 0)
    store.close()


def test_each_route_needs_the_scope_its_noun_says() -> None:
    assert scope_needed("POST", "/v1/chat/completions") == "inference"
    assert scope_needed("POST", "/v1/messages") == "inference"
    assert scope_needed("POST", "/v1/responses") == "inference"
    assert scope_needed("GET", "/v1/models") == "inference"
    assert scope_needed("GET", "/api/usage") == "inference"  # its own rows only
    assert scope_needed("GET", "/metrics") == "metrics"
    assert scope_needed("GET", "/api/status") == "metrics"
    assert scope_needed("GET", "/api/events") == "metrics"  # as the page's live events
    for method, path in [("POST", "/api/shutdown"), ("POST", "/api/profiles/switch"),
                         ("POST", "/api/models"), ("POST", "/api/models/x/pull"),
                         ("GET", "/api/keys"), ("POST", "/api/keys"), ("GET", "/api/logs"),
                         ("GET", "/v1/chat/completions"), ("DELETE", "/api/cache")]:  # fmt: skip
        assert scope_needed(method, path) == "admin", (method, path)


def test_a_state_db_of_the_schema_before_keys_opens_with_its_history_intact(
    tmp_path: Path,
) -> None:
    db = tmp_path / "state.db"
    shutil.copyfile(DATA / "state-35da309.db", db)
    saved = json.loads((DATA / "state-35da309.usage.json").read_text())
    expected = [{**r, "cost": 0} for r in saved]  # no deployment had a price then
    s = Store(db)
    try:
        assert s.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert s.recovered is None
        got = [{k: v for k, v in r.items() if k != "seconds"} for r in s.usage(0)]
        assert got == expected  # per model, to the unit (seconds: the sum of latencies)
        by_key = s.usage(0, "key")
        assert {r["key"] for r in by_key} == {""}  # made before keys: no key
        assert sum(r["requests"] for r in by_key) == sum(r["requests"] for r in expected) == 420
        assert s.added_models()["extra"]["n_ctx"] == 4096
        s.log_request("smollm2", "/v1/chat/completions", 200, 5, 6, 10.0, "r1", "ann")
        mine = s.usage(0, "key", "ann")
        assert [(r["key"], r["requests"], r["tokens_out"]) for r in mine] == [("ann", 1, 6)]
    finally:
        s.close()


def test_rows_of_a_key_roll_up_into_its_own_daily_totals(tmp_path: Path) -> None:
    s = Store(tmp_path / "state.db", keep_raw=0)
    try:
        for key in ("ann", "ann", None):
            s.log_request("m", "/v1/chat/completions", 200, 1, 2, 5.0, "r", key)
        s.db.execute("UPDATE requests SET at = at - 3 * 86400")
        assert s.roll_up() == 3
        assert s.db.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 0
        by_key = {r["key"]: r["requests"] for r in s.usage(0, "key")}
        assert by_key == {"": 1, "ann": 2}
    finally:
        s.close()


# -- through a real supervisor, with the official SDKs ----------------------------------------


@pytest.fixture(scope="module")
def sup(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Supervisor]:
    s = launch_on(
        tmp_path_factory.mktemp("keys"),
        "test",
        profile_yaml(model_dir, **{"tiny-a": "aliases: [a]"}),
    )
    yield s
    shutdown(s)


def test_an_inference_key_reaches_its_models_and_nothing_else(sup: Supervisor) -> None:
    key = make_key(sup, "app1", "--models", "tiny-a,fast")
    ai = openai.OpenAI(base_url=sup.url + "/v1", api_key=key, max_retries=0)
    answer = ai.chat.completions.create(model="tiny-a", **CHAT)  # type: ignore[call-overload]
    assert answer.choices[0].message.content is not None
    assert ai.chat.completions.create(model="a", **CHAT).choices  # type: ignore[call-overload]
    listed = sorted(m.id for m in ai.models.list())
    assert listed == ["tiny-a", "tiny-b"]  # only its own (`fast` is the profile's for tiny-b)
    assert ai.chat.completions.create(model="tiny-b", **CHAT).choices  # type: ignore[call-overload]
    with pytest.raises(openai.PermissionDeniedError) as no:
        ai.chat.completions.create(model="tiny-c", **CHAT)  # type: ignore[call-overload]
    assert "key app1 may not use model 'tiny-c'" in str(no.value)
    assert "use one of its models: tiny-a, fast" in str(no.value)
    claude = anthropic.Anthropic(base_url=sup.url, api_key=key, max_retries=0)
    said = claude.messages.create(
        model="tiny-a", max_tokens=4, messages=[{"role": "user", "content": "hi"}]
    )
    assert said.usage.output_tokens >= 1
    raw = httpx.post(sup.url + "/v1/messages", headers={"x-api-key": key}, timeout=60,
                     json={"model": "tiny-a", "max_tokens": 4,
                           "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    assert raw.status_code == 200 and float(raw.headers["x-smackctl-queued-ms"]) >= 0
    with httpx.Client(base_url=sup.url, headers={"Authorization": f"Bearer {key}"}) as c:
        for method, path in [("POST", "/api/shutdown"), ("GET", "/api/keys"),
                             ("POST", "/api/profiles/switch"), ("GET", "/metrics")]:  # fmt: skip
            r = c.request(method, path, json={})
            assert r.status_code == 403, (path, r.text)
            needed = "metrics" if path == "/metrics" else "admin"
            assert (
                f"key app1 has scope inference; {method} {path} needs scope {needed}"
                in (r.json()["error"]["message"])
            )
        mine = c.get("/api/usage", params={"by": "key"}).json()
        assert {r["key"] for r in mine} == {"app1"}  # its own usage, nobody else's
        assert sum(r["requests"] for r in mine) >= 4
    assert sup.proc.poll() is None  # the shutdown was refused
    assert key not in sup.log() and key[13:] not in sup.log()  # never a key in the log
    assert "key=app1 model=tiny-a route=/v1/chat/completions status=200" in sup.log()


def test_a_metrics_key_reads_metrics_and_status_only(sup: Supervisor) -> None:
    key = make_key(sup, "grafana", "--scope", "metrics")
    with httpx.Client(base_url=sup.url, headers={"Authorization": f"Bearer {key}"}) as c:
        assert c.get("/metrics").status_code == 200
        assert c.get("/api/status").json()["models"]
        for method, path in [("POST", "/api/shutdown"), ("GET", "/api/keys/export"),
                             ("GET", "/api/usage"), ("GET", "/api/logs")]:  # fmt: skip
            r = c.request(method, path, json={})
            assert r.status_code == 403, (path, r.text)
        r = c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-a"})
        assert r.status_code == 403 and "needs scope inference" in r.json()["error"]["message"]
    assert sup.proc.poll() is None


def test_revoking_a_key_stops_it_at_once_streams_in_flight_included(sup: Supervisor) -> None:
    key = make_key(sup, "leaver")
    with sup.client() as c:
        assert c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-b"}).status_code == 200
    pid = sup.model("tiny-b")["pid"]
    body = {**CHAT, "model": "tiny-b", "max_tokens": 2000, "stream": True}
    lines: list[str] = []
    with httpx.Client(base_url=sup.url, headers={"Authorization": f"Bearer {key}"},
                      timeout=60) as c, c.stream("POST", "/v1/chat/completions",
                                                 json=body) as r:  # fmt: skip
        assert r.status_code == 200
        it = r.iter_lines()
        for line in it:
            if line.startswith("data: {"):
                break
        os.kill(pid, signal.SIGSTOP)  # mid-answer while it is revoked
        try:
            revoked = smackctl(sup.home, "keys", "revoke", "leaver")
            assert revoked.returncode == 0 and "revoked key leaver" in revoked.stdout
        finally:
            os.kill(pid, signal.SIGCONT)
        started = time.monotonic()
        lines = [ln for ln in it if ln]
        took = time.monotonic() - started
    again = smackctl(sup.home, "keys", "revoke", "leaver")
    assert again.returncode == 0 and "key leaver was revoked already" in again.stdout
    last = json.loads(lines[-1].removeprefix("data: "))
    assert last["error"]["code"] == "key_revoked"
    assert "key leaver was revoked" in last["error"]["message"]
    assert "data: [DONE]" not in lines
    assert took < 30  # ended by the revocation, not by 2,000 tokens or a timeout
    with httpx.Client(base_url=sup.url, headers={"Authorization": f"Bearer {key}"}) as c:
        r = c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-a"})
    assert r.status_code == 401 and "key leaver was revoked" in r.json()["error"]["message"]
    ai = openai.OpenAI(base_url=sup.url + "/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        ai.models.list()
    wait_for(lambda: sup.model("tiny-b")["in_flight"] == 0, 30, "the cut-off stream to end")
    cut = "key=leaver model=tiny-b route=/v1/chat/completions status=401"
    wait_for(lambda: cut in sup.log(), 10, "the cut-off stream's line, under its key")
    with sup.client() as c:  # the model serves on
        assert c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-b"}).status_code == 200


def test_keys_list_show_rotate_and_the_audit_log(sup: Supervisor) -> None:
    made = smackctl(sup.home, "keys", "create", "ci", "--models", "tiny-a", "--expires", "30d",
                    "--json")  # fmt: skip
    assert made.returncode == 0, made.stderr
    k = json.loads(made.stdout)
    assert k["name"] == "ci" and k["scope"] == "inference" and k["key"].startswith("smk-")
    assert 29.9 * 86400 < k["expires"] - time.time() <= 30 * 86400
    assert k["unknown_models"] == [] and "has no model" not in made.stderr
    typo = smackctl(sup.home, "keys", "create", "typo", "--models", "tiny-aa, fast,nope-x")
    assert typo.returncode == 0, typo.stderr  # made as asked (another profile may have it)
    assert "no model tiny-aa is known here (did you mean tiny-a?)" in typo.stderr
    assert "no model nope-x is known" in typo.stderr and "model fast" not in typo.stderr
    with httpx.Client(base_url=sup.url, headers={"Authorization": f"Bearer {k['key']}"}) as c:
        assert c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-a"}).status_code == 200
    listed = smackctl(sup.home, "keys", "list")
    assert listed.returncode == 0 and "ci" in listed.stdout and "inference" in listed.stdout
    assert k["key"] not in listed.stdout and k["key"][13:] not in listed.stdout
    shown = smackctl(sup.home, "keys", "show", "ci")
    assert "key ci: active, scope inference, models tiny-a" in shown.stdout
    assert "used today: 1 request(s)" in shown.stdout
    rotated = smackctl(sup.home, "keys", "rotate", "ci")
    new = rotated.stdout.strip()
    assert rotated.returncode == 0 and new.startswith("smk-") and new != k["key"]
    with httpx.Client(base_url=sup.url) as c:
        old = c.get("/v1/models", headers={"Authorization": f"Bearer {k['key']}"})
        assert old.status_code == 401
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {new}"}).status_code == 200
    missing = smackctl(sup.home, "keys", "revoke", "nobody")
    assert missing.returncode == 1 and "no key named 'nobody'" in missing.stderr
    assert "smackctl keys list" in missing.stderr
    audit = json.loads(smackctl(sup.home, "keys", "audit", "--json").stdout)
    done = [(a["key"], a["method"], a["path"], a["status"]) for a in audit]
    assert ("operator", "POST", "/api/keys", 201) in done
    assert ("operator", "POST", "/api/keys/ci/rotate", 200) in done
    assert ("operator", "DELETE", "/api/keys/nobody", 404) in done
    assert not any(a["method"] == "GET" for a in audit)  # reads are not changes
    by_key = json.loads(smackctl(sup.home, "usage", "--by", "key", "--json").stdout)
    assert any(r["key"] == "ci" and r["requests"] >= 1 for r in by_key)


def test_an_admin_key_is_audited_under_its_own_name(sup: Supervisor) -> None:
    key = make_key(sup, "ops", "--scope", "admin")
    with httpx.Client(base_url=sup.url, headers={"Authorization": f"Bearer {key}"}) as c:
        assert c.post("/api/keys", json={"name": "made-by-ops"}).status_code == 201
        audit = c.get("/api/audit").json()
    assert any(a["key"] == "ops" and a["path"] == "/api/keys" for a in audit)
    conn = sqlite3.connect(sup.home.state / "state.db")
    try:
        stored = dict(conn.execute("SELECT name, digest FROM keys"))
    finally:
        conn.close()
    assert len(stored["ops"]) == 64 and key not in stored.values()


def test_a_rotated_key_revoked_later_still_ends_its_streams(tmp_path: Path) -> None:
    """Rotation gives the key a new token but keeps the key the door and the streams hold:
    a revocation after it reaches them."""
    store = Store(tmp_path / "state.db")
    ring = KeyRing(store)
    held, old = ring.create("eve", "inference", ["*"], None)  # a stream in flight holds it
    rotated, new = ring.rotate("eve")
    assert rotated is held and ring.check(old.encode()) is None
    assert ring.check(new.encode()) is held
    ring.revoke("eve")
    assert held.refusal(time.time()) is not None  # what the stream checks
    store.close()


def test_the_cli_works_with_a_key_of_scope_inference(sup: Supervisor) -> None:
    """Someone with only an inference key (SMACKCTL_TOKEN) chats and reads their usage with
    the CLI; what needs admin says so."""
    key = make_key(sup, "cli-user", "--models", "tiny-a")
    as_user = Home(sup.home.root, {**sup.home.env, "SMACKCTL_TOKEN": key})
    said = smackctl(as_user, "chat", "-m", "tiny-a", "hello", "--max-tokens", "3")
    assert said.returncode == 0, said.stderr
    usage = smackctl(as_user, "usage", "--by", "key", "--json")
    assert usage.returncode == 0 and {r["key"] for r in json.loads(usage.stdout)} == {"cli-user"}
    refused = smackctl(as_user, "keys", "list")
    assert refused.returncode == 1 and "needs scope admin" in refused.stderr
