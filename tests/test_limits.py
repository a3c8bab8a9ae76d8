"""A key's limits (issue 29): the counters as plain functions of a clock, their rebuild from
a real state.db (so they survive a restart), and a real supervisor's 429s with Retry-After
and the x-ratelimit-* headers, which the official SDK's own retry honours."""

from __future__ import annotations

import calendar
import json
import math
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from smackctl.daemon.limits import Limits, Meter, period_start
from smackctl.daemon.store import Store
from smackctl.errors import RateLimited, UsageError

from conftest import (
    CHAT,
    Supervisor,
    launch,
    launch_on,
    make_key,
    profile_yaml,
    shutdown,
    smackctl,
    wait_for,
)

NOON = calendar.timegm((2026, 12, 6, 12, 0, 0))


class Clock:
    def __init__(self, at: float) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


def test_rpm_is_a_sliding_minute_and_a_refusal_says_when() -> None:
    clock = Clock(NOON)
    meter = Meter(now=clock)
    lim = Limits(rpm=2)
    meter.admit("ann", lim)
    clock.at += 10
    meter.admit("ann", lim)
    clock.at += 5
    with pytest.raises(RateLimited) as over:
        meter.admit("ann", lim)
    assert over.value.status == 429 and over.value.retry_after == pytest.approx(45)
    assert "key ann is over its limit of 2 requests per minute" in over.value.message
    assert over.value.headers["x-ratelimit-limit-requests"] == "2"
    assert over.value.headers["x-ratelimit-remaining-requests"] == "0"
    assert over.value.headers["x-ratelimit-reset-requests"] == "45s"
    meter.admit("bob", lim)  # each key its own
    clock.at += 45.01
    meter.admit("ann", lim)  # the first left the minute
    with pytest.raises(RateLimited):
        meter.admit("ann", lim)


def test_tokens_are_checked_before_a_request_so_the_one_that_crosses_finishes() -> None:
    clock = Clock(NOON)
    meter = Meter(now=clock)
    lim = Limits(tpm=100, tokens_per_day=250)
    meter.admit("ann", lim)
    meter.spent("ann", 99, 0.5, lim)
    meter.admit("ann", lim)  # 99 < 100: let in
    meter.spent("ann", 60, 0.5, lim)  # and it crosses the line: finished, counted
    with pytest.raises(RateLimited, match="100 tokens per minute"):
        meter.admit("ann", lim)
    clock.at += 61
    meter.admit("ann", lim)
    meter.spent("ann", 91, 0.5, lim)  # 99 + 60 + 91 = 250 today, 91 this minute
    with pytest.raises(RateLimited, match="250 tokens per day") as over:
        meter.admit("ann", lim)
    assert over.value.retry_after == pytest.approx(12 * 3600 - 61)  # till 00:00 UTC
    clock.at = NOON + 12 * 3600  # midnight: a new day
    meter.admit("ann", lim)


def test_a_long_requests_tokens_count_in_the_minute_it_ended() -> None:
    clock = Clock(NOON)
    meter = Meter(now=clock)
    lim = Limits(tpm=100)
    meter.admit("ann", lim)
    clock.at += 70  # a request longer than a minute
    meter.spent("ann", 150, 70.0, lim)
    with pytest.raises(RateLimited, match="100 tokens per minute") as over:
        meter.admit("ann", lim)
    assert over.value.headers["x-ratelimit-remaining-tokens"] == "0"
    assert over.value.retry_after == pytest.approx(60)


def test_in_flight_and_budgets_per_period() -> None:
    clock = Clock(NOON)
    meter = Meter(now=clock)
    par = Limits(max_parallel=1)
    meter.admit("ann", par)
    with pytest.raises(RateLimited, match="1 requests at a time") as over:
        meter.admit("ann", par)
    assert over.value.retry_after == 1
    meter.release("ann")
    meter.admit("ann", par)
    month = Limits(budget_seconds=10)  # compute seconds per month
    meter.admit("bob", month)
    meter.spent("bob", 5, 10.5, month)
    with pytest.raises(RateLimited, match="10 compute seconds per month") as over:
        meter.admit("bob", month)
    first_of_january = calendar.timegm((2027, 1, 1, 0, 0, 0))
    assert over.value.retry_after == pytest.approx(first_of_january - NOON)
    days = math.ceil((first_of_january - NOON) / 86400)
    assert f"it may ask again in {days} days" in str(over.value)  # in words, not 1,900,800s
    clock.at = first_of_january
    meter.admit("bob", month)
    ever = Limits(budget_tokens=10, period="none")
    meter.admit("cy", ever)
    meter.spent("cy", 10, 1, ever)
    with pytest.raises(RateLimited, match="it may ask again in never"):
        meter.admit("cy", ever)
    assert period_start("none", NOON) == 0
    assert period_start("month", NOON) == calendar.timegm((2026, 12, 1, 0, 0, 0))


def test_a_wait_in_words() -> None:
    from smackctl.units import in_words

    said = [in_words(s) for s in (0.2, 59.4, 89, 3599, 13_964, 86_399, 200_000, 10**6)]
    assert said == ["1s", "1 min", "2 min", "1 h", "3 h 53 min", "1 day", "2 days 8 h", "12 days"]


def test_limits_refuse_what_is_not_a_limit() -> None:
    assert Limits.of({"rpm": 5, "period": "day"}) == Limits(rpm=5, period="day")
    for bad in ({"rpm": 0}, {"rpm": -1}, {"rpm": True}, {"rpm": "5"}, {"rpm": float("nan")},
                {"period": "week"}, {"rps": 5}):  # fmt: skip
        with pytest.raises(UsageError):
            Limits.of(bad)
    assert Limits(period="day").stored() == {"period": "day"}
    assert Limits(rpm=3).stored() == {"rpm": 3}


def test_the_counters_come_back_from_the_state_db_after_a_restart(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    for status, tokens in ((200, 300), (200, 200), (429, 999), (403, 999), (500, 7)):
        store.log_request("m", "/v1/chat/completions", status, tokens, 0, 2000.0, "r", "ann")
    store.log_request("m", "/v1/chat/completions", 200, 5000, 0, 1.0, "r", "bob")
    store.close()
    store = Store(tmp_path / "state.db")  # a new supervisor
    meter = Meter(store.key_history)
    lim = Limits(rpm=10, tokens_per_day=600, budget_seconds=100)
    used = meter.used("ann", lim)
    assert used["requests_last_minute"] == 3  # the refusals are not counted
    assert used["tokens_today"] == 507 and used["period_seconds"] == pytest.approx(6.0)
    meter.admit("ann", lim)  # 507 < 600
    meter.spent("ann", 100, 1, lim)
    with pytest.raises(RateLimited, match="600 tokens per day"):
        meter.admit("ann", lim)
    store.close()


# -- a real supervisor ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sup(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Supervisor]:
    s = launch_on(tmp_path_factory.mktemp("limits"), "test", profile_yaml(model_dir))
    yield s
    shutdown(s)


def test_over_its_rpm_a_key_gets_429_with_the_headers_openai_clients_read(
    sup: Supervisor,
) -> None:
    key = make_key(sup, "rpm2", "--rpm", "2")
    with httpx.Client(
        base_url=sup.url, headers={"Authorization": f"Bearer {key}"}, timeout=60
    ) as c:
        assert c.get("/v1/models").status_code == 200  # a listing is not counted
        for _ in range(2):
            assert c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-a"}).is_success
        r = c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-a"})
        assert r.status_code == 429, r.text
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert r.headers["x-ratelimit-limit-requests"] == "2"
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert r.json()["error"]["type"] == "rate_limit_error"
        assert "key rpm2 is over its limit of 2 requests per minute" in r.json()["error"]["message"]
        hi = [{"role": "user", "content": "hi"}]
        m = c.post("/v1/messages", json={"model": "tiny-a", "max_tokens": 4, "messages": hi})
        assert m.status_code == 429 and m.json()["type"] == "error"  # Anthropic's shape
        assert m.headers["x-ratelimit-remaining-requests"] == "0"
    ai = openai.OpenAI(base_url=sup.url + "/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.RateLimitError):
        ai.chat.completions.create(model="tiny-a", **CHAT)  # type: ignore[call-overload]
    shown = json.loads(smackctl(sup.home, "keys", "show", "rpm2", "--json").stdout)
    assert shown["limits"] == {"rpm": 2}
    assert shown["counters"]["requests_last_minute"] == 2  # its refusals are not counted
    text = smackctl(sup.home, "keys", "show", "rpm2").stdout
    assert "limits rpm 2" in text and "2 request(s) and" in text and "next reset" in text


def test_the_sdks_own_retry_gets_through_once_the_key_has_room(sup: Supervisor) -> None:
    """The key's one place is held by a stream (its runner stopped); the SDK's request gets
    429 with Retry-After, the stream is then dropped by its client, and the SDK's own retry
    is served."""
    key = make_key(sup, "one-at-a-time", "--max-parallel", "1")
    with sup.client() as c:
        assert c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-b"}).is_success
    pid = sup.model("tiny-b")["pid"]
    body = {**CHAT, "model": "tiny-b", "max_tokens": 2000, "stream": True}
    log_before = sup.log().count("status=429")
    with httpx.Client(base_url=sup.url, headers={"Authorization": f"Bearer {key}"},
                      timeout=60) as c, c.stream("POST", "/v1/chat/completions",
                                                 json=body) as first:  # fmt: skip
        lines = first.iter_lines()  # kept: a dropped iterator closes the connection
        for line in lines:
            if line.startswith("data: {"):
                break
        os.kill(pid, signal.SIGSTOP)  # the first request holds the key's one place

        def drop_the_first_after_the_429() -> None:
            try:
                wait_for(lambda: sup.log().count("status=429") > log_before, 30, "a 429")
                first.close()  # its client goes: the supervisor ends it at its next piece
            finally:
                os.kill(pid, signal.SIGCONT)

        helper = threading.Thread(target=drop_the_first_after_the_429)
        helper.start()
        try:
            ai = openai.OpenAI(base_url=sup.url + "/v1", api_key=key, max_retries=5)
            answer = ai.chat.completions.create(model="tiny-a", **CHAT)  # type: ignore[call-overload]
        finally:
            helper.join(40)
            os.kill(pid, signal.SIGCONT)
    assert answer.choices[0].message is not None  # retried after Retry-After, and served
    assert sup.log().count("status=429") > log_before


def test_a_key_over_its_day_is_still_over_it_after_the_supervisor_restarts(
    tmp_path: Path, model_dir: Path
) -> None:
    """Tokens per day used up, the supervisor stopped and started again: the next request
    of the key is still a 429 (the counters come back from the request log)."""
    sup = launch_on(tmp_path, "test", profile_yaml(model_dir))
    try:
        key = make_key(sup, "daily", "--tokens-per-day", "20")
        with httpx.Client(
            base_url=sup.url, headers={"Authorization": f"Bearer {key}"}, timeout=60
        ) as c:
            assert c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-a"}).is_success
            assert (
                c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-a"}).status_code == 429
            )
    finally:
        shutdown(sup)
    sup = launch(sup.home)
    try:
        with httpx.Client(
            base_url=sup.url, headers={"Authorization": f"Bearer {key}"}, timeout=60
        ) as c:
            r = c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-a"})
        assert r.status_code == 429 and "20 tokens per day" in r.json()["error"]["message"]
    finally:
        shutdown(sup)
