"""The page's door, without a browser (issue 30): `smackctl ui`'s one-time link, the session
cookie and its flags, CSRF and Origin rules, a key's session seeing its own only, logout,
revocation and rotation ending sessions, and the WebSocket (hello, the live overview, a
chat's frames through the same rules as HTTP, bad frames) against a real supervisor with
real runners. test_ui_browser.py drives the page itself in Chromium."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from smackctl.daemon.keys import Key
from smackctl.daemon.ui.sessions import LINK_TTL, PER_KEY, SESSION_TTL, Sessions

from conftest import CHAT, Supervisor, launch_on, make_key, profile_yaml, shutdown, smackctl

LINK = re.compile(r"^http://127\.0\.0\.1:\d+/ui/login\?code=[A-Za-z0-9_-]{43}$")


@pytest.fixture(scope="module")
def sup(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Supervisor]:
    s = launch_on(tmp_path_factory.mktemp("ui"), "test", profile_yaml(model_dir))
    yield s
    shutdown(s)


def link_for(sup: Supervisor, token: str | None = None) -> str:
    """`smackctl ui --no-browser` as a user runs it: the link alone on stdout."""
    env = {"SMACKCTL_TOKEN": token} if token else {}
    done = smackctl(type(sup.home)(sup.home.root, {**sup.home.env, **env}), "ui", "--no-browser")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1 and LINK.match(done.stdout.strip()), done.stdout
    return done.stdout.strip()


def logged_in(sup: Supervisor, token: str | None = None) -> tuple[httpx.Client, str]:
    """A browser-like client holding a session cookie, and its CSRF token."""
    c = httpx.Client(base_url=sup.url, timeout=30)
    r = c.get(link_for(sup, token).removeprefix(sup.url))
    assert r.status_code == 303 and r.headers["location"] == "/ui/", r.text
    csrf = c.get("/ui/session").json()["csrf"]
    return c, csrf


def ws_connect(sup: Supervisor, **headers: str) -> ClientConnection:
    return connect(sup.url.replace("http", "ws") + "/api/ws", additional_headers=headers,
                   open_timeout=10)  # fmt: skip


def frames(ws: ClientConnection, until: Any, timeout: float = 60) -> list[dict[str, Any]]:
    """Frames read until ``until(frame)`` holds (a deadline, not a sleep)."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no frame for which the condition holds; got {got[-5:]}"
        got.append(json.loads(ws.recv(timeout=left)))
        if until(got[-1]):
            return got


def test_a_login_link_works_once_and_sets_a_strict_http_only_cookie(sup: Supervisor) -> None:
    link = link_for(sup)
    path = link.removeprefix(sup.url)
    first = httpx.get(sup.url + path)
    assert first.status_code == 303 and first.headers["location"] == "/ui/"
    cookie = first.headers["set-cookie"]
    for flag in ("HttpOnly", "SameSite=strict", "Path=/", "Max-Age=43200"):
        assert flag in cookie, cookie
    assert "Secure" not in cookie  # plain HTTP here; under TLS it is set (test below)
    sid = cookie.split(";")[0].split("=", 1)[1]
    again = httpx.get(sup.url + path)
    assert again.status_code == 400
    assert "has been used or has expired" in again.text and "smackctl ui" in again.text
    assert "set-cookie" not in again.headers
    page = httpx.get(sup.url + "/ui/", cookies={"smackctl_session": sid})
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert not re.search(r"<script(?![^>]*\bsrc=)", page.text)  # no inline script
    assert not re.search(r"\son[a-z]+=", page.text) and "style=" not in page.text
    assert sup.token not in page.text and sid not in page.text
    # without a session the page sends the browser to the form
    bare = httpx.get(sup.url + "/ui/")
    assert bare.status_code == 303 and bare.headers["location"] == "/ui/login"
    form = httpx.get(sup.url + "/ui/login")
    assert form.status_code == 200 and 'name="key"' in form.text
    assert "script-src 'self'" in form.headers["content-security-policy"]


def test_links_and_sessions_end_on_time() -> None:
    now = [1000.0]
    sessions = Sessions(clock=lambda: now[0])
    who = Key("alice", "inference")
    code, expires = sessions.link(who, "id1")
    assert expires == 1000.0 + LINK_TTL == 1300.0
    now[0] += LINK_TTL + 1
    assert sessions.redeem(code) is None  # too late
    code, _ = sessions.link(who, "id1")
    redeemed = sessions.redeem(code)
    assert redeemed is not None and sessions.redeem(code) is None  # once
    sid, session = redeemed
    assert session.key is who and session.expires == now[0] + SESSION_TTL
    now[0] += SESSION_TTL - 1
    assert sessions.get(sid) is session
    now[0] += 2
    assert sessions.get(sid) is None and len(sessions) == 0


def test_changes_need_the_csrf_token_and_this_origin(sup: Supervisor) -> None:
    c, csrf = logged_in(sup)
    try:
        assert c.get("/api/status").status_code == 200  # a read needs no CSRF token
        bare = c.post("/api/models/tiny-c/load")
        assert bare.status_code == 403 and bare.json()["error"]["code"] == "csrf"
        wrong = c.post("/api/models/tiny-c/load", headers={"X-CSRF-Token": "x" + csrf})
        assert wrong.status_code == 403
        evil = {"X-CSRF-Token": csrf, "Origin": "http://evil.example"}
        foreign = c.post("/api/models/tiny-c/unload", headers=evil)
        assert foreign.status_code == 403 and foreign.json()["error"]["code"] == "cross_origin"
        rebinding = c.get("/api/status", headers={"Host": "evil.example"})
        assert rebinding.status_code == 403 and "DNS rebinding" in rebinding.text
        own = {"X-CSRF-Token": csrf, "Origin": sup.url}
        assert c.post("/api/models/tiny-c/unload", headers=own).status_code == 200
        # logout ends the session at once; the old cookie is refused with the fix
        old = c.cookies["smackctl_session"]
        out = c.post("/ui/logout", headers={"X-CSRF-Token": csrf})
        assert out.status_code == 204 and "smackctl_session=" in out.headers["set-cookie"]
        assert "Max-Age=0" in out.headers["set-cookie"]
    finally:
        c.close()
    gone = httpx.get(sup.url + "/api/status", cookies={"smackctl_session": old})
    assert gone.status_code == 401 and "smackctl ui" in gone.json()["error"]["message"]


def test_a_keys_session_sees_its_own_and_ends_when_the_key_is_revoked(sup: Supervisor) -> None:
    alice = make_key(sup, "ui-alice", "--models", "tiny-a")
    make_key(sup, "ui-bob", "--models", "tiny-a")
    c = httpx.Client(base_url=sup.url, timeout=60)
    wrong = c.post("/ui/login", content="key=smk-nope", headers={
        "content-type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert wrong.status_code == 401 and "not a key of this supervisor" in wrong.text
    r = c.post("/ui/login", data={"key": alice})
    assert r.status_code == 303 and "smackctl_session" in r.headers["set-cookie"]
    me = c.get("/ui/session").json()
    assert (me["name"], me["admin"], me["models"]) == ("ui-alice", False, ["tiny-a"])
    assert c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-a"},
                  headers={"X-CSRF-Token": me["csrf"]}).status_code == 200  # fmt: skip
    own = c.get("/api/usage", params={"by": "key"}).json()
    assert {row["key"] for row in own} == {"ui-alice"}
    other = c.get("/api/usage", params={"key": "ui-bob"})
    assert other.status_code == 403 and "its own usage only" in other.json()["error"]["message"]
    assert c.get("/api/keys").status_code == 403
    assert [row["key"] for row in c.get("/api/activity").json()["recent"]] == ["ui-alice"]
    assert smackctl(sup.home, "keys", "revoke", "ui-alice").returncode == 0
    revoked = c.get("/ui/session")
    assert revoked.status_code == 401 and "revoked" in revoked.json()["error"]["message"]
    c.close()


def test_a_rotated_token_ends_the_operators_sessions(tmp_path: Path, model_dir: Path) -> None:
    sup = launch_on(tmp_path, "test", profile_yaml(model_dir))
    try:
        c, _ = logged_in(sup)
        assert c.get("/api/status").status_code == 200
        with sup.client() as admin:
            r = admin.post("/api/token/rotate")
            assert r.status_code == 200, r.text
        sup.token = r.json()["key"]
        ended = c.get("/api/status")
        assert ended.status_code == 401 and "session has ended" in ended.json()["error"]["message"]
        c.close()
    finally:
        shutdown(sup)


def test_the_websocket_refuses_strangers_and_other_origins(sup: Supervisor) -> None:
    with pytest.raises(InvalidStatus) as none:
        ws_connect(sup)
    assert none.value.response.status_code == 401
    assert b"missing or wrong API token" in (none.value.response.body or b"")
    c, _ = logged_in(sup)
    cookie = f"smackctl_session={c.cookies['smackctl_session']}"
    with pytest.raises(InvalidStatus) as foreign:
        ws_connect(sup, Cookie=cookie, Origin="http://evil.example")
    assert foreign.value.response.status_code == 403
    with ws_connect(sup, Cookie=cookie, Origin=sup.url) as ws:  # the page's own
        assert json.loads(ws.recv(timeout=10))["type"] == "hello"
    c.close()


def test_the_websocket_streams_a_chat_and_pushes_the_overview(sup: Supervisor) -> None:
    with ws_connect(sup, Authorization=f"Bearer {sup.token}") as ws:
        hello = json.loads(ws.recv(timeout=10))
        assert hello == {"type": "hello", "v": 1, "name": "operator", "admin": True}
        ws.send(json.dumps({"op": "subscribe", "topics": ["overview", "activity"]}))
        first = frames(ws, lambda f: f["type"] == "overview")[-1]["data"]
        assert {m["name"] for m in first["models"]} >= {"tiny-a", "tiny-b"}
        assert first["machine"]["total"] > 0
        # a load elsewhere shows up by itself (pushed: nothing is asked)
        with httpx.Client(base_url=sup.url, timeout=120) as c:
            r = c.post("/api/models/tiny-b/load", headers={"Authorization": f"Bearer {sup.token}"})
            assert r.status_code == 200

        def tiny_b_ready(f: dict[str, Any]) -> bool:
            models = f["data"]["models"] if f["type"] == "overview" else []
            return any(m["name"] == "tiny-b" and m["state"] == "ready" for m in models)

        frames(ws, tiny_b_ready)
        body = {**CHAT, "model": "tiny-b", "max_tokens": 8}
        ws.send(json.dumps({"op": "chat", "id": "one", "body": body}))
        got = frames(ws, lambda f: f.get("id") == "one" and f["type"] in ("done", "error"))
        mine = [f for f in got if f.get("id") == "one"]
        assert mine[0]["type"] == "start" and mine[0]["status"] == 200
        assert mine[0]["headers"]["x-smackctl-deployment"] == "tiny-b"
        rid = mine[0]["headers"]["x-request-id"]
        assert [f["type"] for f in mine[1:-1]] == ["chunk"] * (len(mine) - 2) and len(mine) > 3
        assert mine[-1]["type"] == "done"
        # the activity topic told its start and its end, with the answer's tokens
        rows = [f["data"] for f in got if f["type"] == "request" and f["data"]["id"] == rid]

        def ended(f: dict[str, Any]) -> bool:
            return f["type"] == "request" and f["data"]["id"] == rid and bool(f["data"]["status"])

        if not any(ended(f) for f in got):  # its usage may be written after the last chunk
            rows += [frames(ws, ended)[-1]["data"]]
        end = [r for r in rows if r["id"] == rid and r["status"] is not None][-1]
        assert end["status"] == 200 and end["tokens_out"] and end["key"] == "operator"


def test_a_keys_chat_over_the_websocket_keeps_its_rules(sup: Supervisor) -> None:
    carol = make_key(sup, "ui-carol", "--models", "tiny-a")
    with ws_connect(sup, Authorization=f"Bearer {carol}") as ws:
        assert json.loads(ws.recv(timeout=10))["admin"] is False
        ws.send(json.dumps({"op": "chat", "id": "x", "body": {**CHAT, "model": "tiny-b"}}))
        error = frames(ws, lambda f: f.get("id") == "x")[-1]
        assert error["type"] == "error" and error["status"] == 403
        assert "may not use model 'tiny-b'" in error["error"]["message"]
        ws.send(json.dumps({"op": "subscribe", "topics": ["logs"]}))
        denied = frames(ws, lambda f: f["type"] == "error")[-1]
        assert denied["status"] == 403 and "may not follow logs" in denied["error"]["message"]
        for bad, says in (("not json", "must be a JSON object"),
                          ('{"op": "fly"}', "unknown op"),
                          ('{"a": ' * 500 + "1" + "}" * 500, "nests too deeply"),
                          ('{"op": "chat", "body": {}}', "needs an `id`")):  # fmt: skip
            ws.send(bad)
            assert says in frames(ws, lambda f: f["type"] == "error")[-1]["error"]["message"]
        # after all that the connection still serves
        ws.send(json.dumps({"op": "chat", "id": "y", "body": {**CHAT, "model": "tiny-a"}}))
        assert (
            frames(ws, lambda f: f.get("id") == "y" and f["type"] in ("done", "error"))[-1]["type"]
            == "done"
        )
    assert sup.proc.poll() is None


def test_activity_shows_a_failure_with_its_fix_and_usage_exports_the_clis_csv(
    sup: Supervisor,
) -> None:
    auth = {"Authorization": f"Bearer {sup.token}"}
    with httpx.Client(base_url=sup.url, headers=auth, timeout=60) as c:
        hours_around = {time.strftime("%Y-%m-%d %H:00", time.gmtime())}
        r = c.post("/v1/chat/completions", json={**CHAT, "model": "no-such-model"})
        assert r.status_code == 404
        failed = c.get("/api/activity").json()["recent"][0]
        assert failed["status"] == 404 and "unknown model 'no-such-model'" in failed["error"]
        assert failed["hint"] and "(fix:" not in failed["error"]
        csv = c.get("/api/usage", params={"by": "model", "format": "csv"})
        assert csv.headers["content-type"].startswith("text/csv")
    cli = smackctl(sup.home, "usage", "--csv", "--since", "30d")
    assert cli.returncode == 0 and cli.stdout == csv.text
    with httpx.Client(base_url=sup.url, headers=auth) as c:
        hours = c.get("/api/usage", params={"bucket": "hour"}).json()
    hours_around.add(time.strftime("%Y-%m-%d %H:00", time.gmtime()))  # an hour may turn
    assert any(row["hour"] in hours_around and row["requests"] > 0 for row in hours)


def test_cancel_stops_the_runner_mid_answer(sup: Supervisor) -> None:
    with ws_connect(sup, Authorization=f"Bearer {sup.token}") as ws:
        frames(ws, lambda f: f["type"] == "hello")
        ws.send(json.dumps({"op": "subscribe", "topics": ["activity"]}))
        body = {**CHAT, "model": "tiny-a", "max_tokens": 3000, "logit_bias": {"2": -100}}
        ws.send(json.dumps({"op": "chat", "id": "long", "body": body}))
        started = frames(ws, lambda f: f.get("id") == "long" and f["type"] == "chunk")
        rid = next(f for f in started if f["type"] == "start")["headers"]["x-request-id"]
        ws.send(json.dumps({"op": "cancel", "id": "long"}))
        got = frames(ws, lambda f: f["type"] == "request" and f["data"]["id"] == rid
                     and f["data"]["status"] is not None)  # fmt: skip
        ended = got[-1]["data"]
        assert ended["tokens_out"] is None or ended["tokens_out"] < 3000
        last = [f["type"] for f in got if f.get("id") == "long"]
        assert "error" not in last
    with sup.client() as c:  # its slot is free: the model answers the next one at once
        assert c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-a"}).status_code == 200


def test_the_editor_checks_a_text_and_writes_only_a_valid_one(sup: Supervisor) -> None:
    path = sup.home.root / "profiles" / "test.yaml"
    before = path.read_text()
    bad = before.replace("routing:\n", "routing:\n  defualt_model: tiny-a\n", 1)
    with sup.client() as c:
        checked = c.post("/api/profiles/check", json={"text": bad}).json()
        problem = checked["problems"][0]
        assert problem["path"] == "routing.defualt_model" and "default_model" in problem["message"]
        assert problem["text"].startswith(f"{path}:{problem['line']} routing.defualt_model:")
        assert bad.splitlines()[problem["line"] - 1].strip() == "defualt_model: tiny-a"
        assert checked["plan"] is None and "+  defualt_model: tiny-a" in checked["diff"]
        refused = c.put("/api/profiles/active", json={"text": bad})
        assert refused.status_code == 400 and refused.json()["problems"]
        assert path.read_text() == before  # nothing written
        fine = before.replace("n_ctx: 4096", "n_ctx: 2048", 1)
        plan = c.post("/api/profiles/check", json={"text": fine}).json()["plan"]
        assert plan is not None and plan["steps"] is not None
        for hostile in ("{" * 5000, "a: b: c", "\x00", "x" * (1024 * 1024 + 1)):
            r = c.post("/api/profiles/check", json={"text": hostile})
            assert r.status_code in (200, 400), r.text
        assert c.get("/health").status_code == 200


def test_a_websocket_closes_when_its_key_is_revoked_or_its_session_ends(sup: Supervisor) -> None:
    dan = make_key(sup, "ui-dan", "--models", "tiny-a")
    with ws_connect(sup, Authorization=f"Bearer {dan}") as ws:
        ws.send(json.dumps({"op": "subscribe", "topics": ["overview"]}))
        overview = frames(ws, lambda f: f["type"] == "overview")[-1]["data"]
        assert [m["name"] for m in overview["models"]] == ["tiny-a"]
        model = overview["models"][0]  # an inference key sees no file, pid, port or error
        assert not {"file", "pid", "port", "last_error"} & set(model)
        assert not {"profile_path", "warnings", "pid", "restoring"} & set(overview)
        assert smackctl(sup.home, "keys", "revoke", "ui-dan").returncode == 0
        ended = frames(ws, lambda f: f["type"] == "error")[-1]
        assert ended["status"] == 401 and "revoked" in ended["error"]["message"]
        with pytest.raises(ConnectionClosed):
            frames(ws, lambda f: False, timeout=10)
    c, csrf = logged_in(sup)
    cookie = f"smackctl_session={c.cookies['smackctl_session']}"
    with ws_connect(sup, Cookie=cookie, Origin=sup.url) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "hello"
        assert c.post("/ui/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
        ended = frames(ws, lambda f: f["type"] == "error")[-1]
        assert "session has ended" in ended["error"]["message"]
    c.close()


def test_anonymous_requests_are_not_audited_and_the_static_page_keeps_its_headers(
    sup: Supervisor,
) -> None:
    for _ in range(3):
        httpx.post(sup.url + "/ui/login", data={"key": "guess"})
        httpx.delete(sup.url + "/ui/static/x")
    with sup.client() as c:
        audited = c.get("/api/audit").json()
    assert not [r for r in audited if r["path"] == "/ui/login" or "/static/" in r["path"]]
    copy = httpx.get(sup.url + "/ui/static/index.html")
    assert (
        copy.status_code == 200 and "script-src 'self'" in copy.headers["content-security-policy"]
    )
    assert copy.headers["x-frame-options"] == "DENY"
    # a login link another site's page sends the browser to is refused, and stays unused
    link = link_for(sup).removeprefix(sup.url)
    other = httpx.get(sup.url + link, headers={"Sec-Fetch-Site": "cross-site"})
    assert other.status_code == 403 and "opened by itself" in other.text
    assert httpx.get(sup.url + link, headers={"Sec-Fetch-Site": "none"}).status_code == 303


def test_one_key_cannot_push_out_anothers_sessions() -> None:
    sessions = Sessions()
    admin_sid, _ = sessions.open(Key("operator", "admin"), "s")
    alice = Key("alice", "inference")
    sids = [sessions.open(alice, "a")[0] for _ in range(PER_KEY + 5)]
    assert sessions.get(admin_sid) is not None
    assert [sessions.get(s) is not None for s in sids] == [False] * 5 + [True] * PER_KEY
