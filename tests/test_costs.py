"""Costs (issue 29): a deployment's ``price`` makes each request's cost in the usage log
(rolled up with the rest), a key's ``budget_usd`` holds against it, and a group's ``cost`` and
``quality`` policies order its deployments; `smackctl usage --by key --csv` exports it."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from smackctl.config import Price
from smackctl.daemon.gateway.plan import Deployed, order
from smackctl.daemon.limits import Limits, Meter
from smackctl.daemon.store import Store
from smackctl.daemon.usage import Usage
from smackctl.errors import RateLimited

from conftest import CHAT, Supervisor, launch_on, make_key, profile_yaml, shutdown, smackctl


def test_cost_and_quality_policies_order_a_group() -> None:
    deployed = {
        "local": Deployed("local", price=0.0, quality=3),
        "cheap": Deployed("cheap", remote=True, price=0.5, quality=5),
        "best": Deployed("best", remote=True, price=15.0, quality=9),
    }
    names = ["cheap", "local", "best"]  # listed in neither order
    assert order(names, "cost", deployed, 0) == ["local", "cheap", "best"]
    assert order(names, "quality", deployed, 0) == ["best", "cheap", "local"]
    assert order(names, "priority", deployed, 0) == names


def test_a_priced_request_has_its_cost_in_the_log_and_against_a_budget(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db", keep_raw=0)
    price = Price(input=1000.0, output=3000.0)  # USD per million tokens
    usage = Usage(store, price_of=lambda name: price if name == "gpt" else None)
    usage.record("gpt", "/v1/chat/completions", 200, "r1", tokens_in=100, tokens_out=50)
    usage.record("tiny", "/v1/chat/completions", 200, "r2", tokens_in=100, tokens_out=50)
    rows = {r["model"]: r["cost"] for r in store.usage(0)}
    assert rows == {"gpt": pytest.approx(0.25), "tiny": 0}  # 0.1 + 0.15
    store.db.execute("UPDATE requests SET at = at - 3 * 86400")
    assert store.roll_up() == 2
    assert {r["model"]: r["cost"] for r in store.usage(0)} == rows  # kept when rolled up
    meter = Meter()
    lim = Limits(budget_usd=0.3, period="day")
    meter.admit("ann", lim)
    meter.spent("ann", 150, 1.0, lim, 0.25)
    meter.admit("ann", lim)
    meter.spent("ann", 150, 1.0, lim, 0.25)  # crosses the line: finished
    with pytest.raises(RateLimited, match="a budget of 0.3 USD per day"):
        meter.admit("ann", lim)
    store.close()


@pytest.fixture(scope="module")
def sup(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Supervisor]:
    extra = (
        "groups:\n"
        "  thrifty: {deployments: [tiny-a, tiny-b], policy: cost}\n"  # the cheap one listed last
        "  finest: {deployments: [tiny-b, tiny-a], policy: quality}\n"  # the best one listed last
    )
    priced = {
        "tiny-a": "price: {input: 2000, output: 4000}\nquality: 9",
        "tiny-b": "price: {input: 10, output: 20}\nquality: 2",
    }
    s = launch_on(
        tmp_path_factory.mktemp("costs"), "test", profile_yaml(model_dir, extra, **priced)
    )
    yield s
    shutdown(s)


def test_groups_by_cost_and_quality_and_a_usd_budget_end_to_end(sup: Supervisor) -> None:
    key = make_key(sup, "payer", "--budget-usd", "0.05")

    with httpx.Client(base_url=sup.url, headers={"Authorization": f"Bearer {key}"},
                      timeout=60) as c:  # fmt: skip
        cheap = c.post("/v1/chat/completions", json={**CHAT, "model": "thrifty"})
        assert cheap.status_code == 200 and cheap.json()["model"] == "tiny-b"
        best = c.post("/v1/chat/completions", json={**CHAT, "model": "finest"})
        assert best.status_code == 200 and best.json()["model"] == "tiny-a"
        # tiny-a: ~27 tokens in at 2000 USD/M and 4 out at 4000 USD/M: ~0.07 USD, over 0.05
        over = c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-b"})
        assert over.status_code == 429, over.text
        assert "a budget of 0.05 USD per month" in over.json()["error"]["message"]
    res = smackctl(sup.home, "usage", "--by", "key", "--csv")
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert list(rows[0]) == ["day", "key", "requests", "tokens_in", "tokens_out", "errors",
                             "avg_ms", "seconds", "cost"]  # fmt: skip
    mine = [r for r in rows if r["key"] == "payer"]
    assert sum(int(r["requests"]) for r in mine) == 3  # its 429 is counted as an error
    assert sum(float(r["cost"]) for r in mine) > 0.05
    assert sum(float(r["seconds"]) for r in mine) > 0  # compute seconds, per key
    by_dep = json.loads(smackctl(sup.home, "usage", "--by", "deployment", "--json").stdout)
    spent = {r["deployment"]: r["cost"] for r in by_dep}
    assert spent["tiny-a"] > spent["tiny-b"] > 0
    shown = json.loads(smackctl(sup.home, "keys", "show", "payer", "--json").stdout)
    assert shown["counters"]["period_usd"] > 0.05
