"""Every refused request leaves a trace an operator can read: one log line with its status,
route, model and reason (never its body or a secret), and an error in `smackctl usage`."""

from __future__ import annotations

import json

import httpx

from conftest import Supervisor, smackctl, wait_for


def test_refused_requests_are_in_the_log_and_counted_as_errors(supervisor: Supervisor) -> None:
    sup = supervisor
    secret_words = "my-private-prompt-words"
    with sup.client() as c:
        unknown = c.post(
            "/v1/chat/completions",
            json={"model": "nope", "messages": [{"role": "user", "content": secret_words}]},
        )
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "model_not_found"  # OpenAI's, not a class
        invalid = c.post(
            "/v1/chat/completions",
            json={
                "model": "tiny-a",
                "messages": [{"role": "user", "content": "x"}],
                "bogus_field": 1,
            },
        )
        assert invalid.status_code == 400
        not_json = c.post("/v1/chat/completions", content=b"{not json",
                          headers={"Content-Type": "application/json"})  # fmt: skip
        assert not_json.status_code == 400
    no_token = httpx.post(
        sup.url + "/v1/chat/completions",
        json={"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": "Bearer wrong-token-value"},
    )
    assert no_token.status_code == 401

    def lines() -> list[str]:
        return [ln for ln in sup.log().splitlines() if "refused id=" in ln]

    found = wait_for(lambda: len(lines()) >= 4 and lines(), 10, "four refusal lines")
    text = "\n".join(found)
    assert "model=nope route=/v1/chat/completions status=404 reason=unknown model 'nope'" in text
    assert "model=tiny-a route=/v1/chat/completions status=400 reason=invalid field" in text
    assert "bogus_field" in text  # the reason names what was wrong
    assert "status=400 reason=request body is not valid JSON" in text
    assert "model=- route=/v1/chat/completions status=401 reason=missing or wrong API token" in text
    # never a body or a secret
    assert secret_words not in sup.log()
    assert "wrong-token-value" not in sup.log() and sup.token not in sup.log()
    # `smackctl logs` is where an operator reads them
    logs = smackctl(sup.home, "logs", "--lines", "200")
    assert "status=404" in logs.stdout and "status=401" in logs.stdout
    usage = json.loads(smackctl(sup.home, "usage", "--json").stdout)
    errors = {r["model"]: r["errors"] for r in usage}
    assert errors.get("nope") == 1 and errors.get("-") == 2 and errors.get("tiny-a", 0) >= 1


def test_a_runner_refusal_is_logged_with_its_reason(supervisor: Supervisor) -> None:
    with supervisor.client() as c:
        r = c.post(
            "/v1/chat/completions",
            json={"model": "tiny-base", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert r.status_code == 400  # a base model: no chat template
    wait_for(
        lambda: (
            "model=tiny-base route=/v1/chat/completions status=400" in supervisor.log()
            and "no chat template" in supervisor.log()
        ),
        10,
        "the refusal's line with its reason",
    )
