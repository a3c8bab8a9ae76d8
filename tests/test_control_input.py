"""Bad input on the control routes is a 400 that names the fix, never a 500, and changes
nothing: a reconnecting client's ``Last-Event-ID``, the ``timeout`` and ``force`` of
``POST /api/shutdown``."""

from __future__ import annotations

from conftest import Supervisor


def test_a_bad_last_event_id_is_a_400_naming_the_header(supervisor: Supervisor) -> None:
    with supervisor.client() as c:
        for bad in ["abc", "-1", "1.5", "²".encode("latin-1"), "9" * 40]:
            r = c.get("/api/events", params={"follow": 0}, headers={"Last-Event-ID": bad})
            assert r.status_code == 400, (bad, r.text)
            msg = r.json()["error"]["message"]
            assert "header `Last-Event-ID` must be an event id" in msg, msg
            assert "or no Last-Event-ID header" in msg  # the fix
        for bad in ["²", "abc"]:  # a query number, as every whole-number query parameter
            r = c.get("/api/events", params={"follow": 0, "after": bad})
            assert r.status_code == 400 and "`after` must be a whole number" in r.text, r.text
        ok = c.get("/api/events", params={"follow": 0}, headers={"Last-Event-ID": "0"})
        assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/event-stream")


def test_a_bad_shutdown_timeout_or_force_is_a_400_and_the_supervisor_runs_on(
    supervisor: Supervisor,
) -> None:
    with supervisor.client() as c:
        for body, needle in [
            (
                b'{"timeout": "abc"}',
                '`timeout` must be a number of seconds from 0 to 86400, not "abc"',
            ),
            (b'{"timeout": -1}', "not -1"),
            (b'{"timeout": NaN}', "not NaN"),  # Python's json reads it
            (b'{"timeout": Infinity}', "not Infinity"),
            (b'{"timeout": [5]}', "not [5]"),
            (b'{"timeout": true}', "not true"),
            (b'{"force": "no"}', '`force` must be true or false, not "no"'),
        ]:
            r = c.post("/api/shutdown", content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == 400, (body, r.text)
            msg = r.json()["error"]["message"]
            assert needle in msg and "smackctl stop" in msg, msg
        assert c.get("/api/status").status_code == 200
    assert supervisor.proc.poll() is None  # none of them started a stop
