"""A key's preferences per context, and the operator's token rotated (issue 29): checked as
plain functions, and through a real supervisor with the CLI and the official SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from smackctl.daemon import prefs
from smackctl.errors import UsageError

from conftest import Supervisor, launch_on, make_key, profile_yaml, shutdown, smackctl

PREFS = {
    "model": "tiny-a",
    "sampling": {"temperature": 0.7, "max_tokens": 3},
    "contexts": {"code": {"model": "tiny-c", "sampling": {"temperature": 0.1}}},
}


def test_preferences_fill_what_a_request_leaves_out() -> None:
    checked = prefs.check(PREFS)
    assert checked == PREFS
    chat = "/v1/chat/completions"
    body: dict[str, Any] = {"messages": []}
    prefs.apply(body, checked, None, chat)
    assert body == {"messages": [], "model": "tiny-a", "temperature": 0.7, "max_tokens": 3}
    body = {"model": "default", "temperature": 1.0}
    prefs.apply(body, checked, "code", chat)  # the context's, then the key's
    assert body == {"model": "tiny-c", "temperature": 1.0, "max_tokens": 3}
    body = {"model": "tiny-b"}
    prefs.apply(body, checked, "nope", "/v1/messages")  # a model named: kept; no sampling
    assert body == {"model": "tiny-b"}
    body = {"model": "default"}
    prefs.apply(body, {}, None, chat)  # no preference: the profile's default
    assert body == {}


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ({"sampling": {"temperature": 9}}, "temperature must be a number from 0 to 5"),
        ({"sampling": {"logit_bias": 1}}, "sampling.logit_bias is not known"),
        ({"sampling": {"top_p": True}}, "top_p must be a number"),
        ({"modle": "x"}, "preferences.modle is not a preference"),
        ({"contexts": {"a b": {}}}, "context name 'a b' is not allowed"),
        ({"contexts": {"code": {"contexts": {}}}}, "contexts.code.contexts is not a preference"),
        ([], "preferences must be an object"),
    ],
)
def test_preferences_that_are_not_are_refused_by_name(bad: Any, says: str) -> None:
    with pytest.raises(UsageError, match=says.replace(".", r"\.")):
        prefs.check(bad)


@pytest.fixture(scope="module")
def sup(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Supervisor]:
    s = launch_on(tmp_path_factory.mktemp("prefs"), "test", profile_yaml(model_dir))
    yield s
    shutdown(s)


def test_a_key_gets_its_preferred_model_and_sampling_per_context(sup: Supervisor) -> None:
    key = make_key(sup, "dev")
    done = smackctl(sup.home, "keys", "prefer", "dev", "--model", "tiny-b",
                    "--set", "max_tokens=2")  # fmt: skip
    assert done.returncode == 0, done.stderr
    done = smackctl(sup.home, "keys", "prefer", "dev", "--context", "code", "--model", "tiny-c")
    assert done.returncode == 0, done.stderr
    shown = json.loads(smackctl(sup.home, "keys", "show", "dev", "--json").stdout)
    assert shown["preferences"] == {
        "model": "tiny-b", "sampling": {"max_tokens": 2}, "contexts": {"code": {"model": "tiny-c"}}
    }  # fmt: skip
    ai = openai.OpenAI(base_url=sup.url + "/v1", api_key=key, max_retries=0)
    hi = [{"role": "user", "content": "hello"}]
    plain = ai.chat.completions.create(model="default", messages=hi)  # type: ignore[arg-type]
    assert plain.model == "tiny-b" and plain.usage is not None
    assert plain.usage.completion_tokens <= 2  # its max_tokens
    code = ai.chat.completions.create(
        model="",
        messages=hi,
        extra_headers={"X-Smackctl-Context": "code"},  # type: ignore[arg-type]
    )
    assert code.model == "tiny-c"
    named = ai.chat.completions.create(model="tiny-a", messages=hi)  # type: ignore[arg-type]
    assert named.model == "tiny-a"  # a model named is kept
    bad = smackctl(sup.home, "keys", "prefer", "dev", "--set", "temperature=99")
    assert bad.returncode == 2 and "temperature must be a number from 0 to 5" in bad.stderr
    with httpx.Client(base_url=sup.url, headers={"Authorization": f"Bearer {key}"}) as c:
        own = c.put("/api/keys/dev/preferences", json={"model": "tiny-a"})
        assert own.status_code == 200  # a key sets its own
        other = c.get("/api/keys/someone/preferences")
        assert other.status_code == 403 and "its own preferences only" in other.text
    audit = json.loads(smackctl(sup.home, "keys", "audit", "--json").stdout)
    assert any(a["key"] == "dev" and a["method"] == "PUT" for a in audit)


def test_the_operator_token_is_rotated_in_place(sup: Supervisor) -> None:
    old = sup.token
    done = smackctl(sup.home, "keys", "rotate", "operator")
    assert done.returncode == 0, done.stderr
    new = done.stdout.strip()
    assert new.startswith("smk-") and new != old
    assert (sup.home.state / "token").read_text().strip() == new
    assert oct((sup.home.state / "token").stat().st_mode & 0o777) == "0o600"
    with httpx.Client(base_url=sup.url) as c:
        assert c.get("/api/status", headers={"Authorization": f"Bearer {old}"}).status_code == 401
        assert c.get("/api/status", headers={"Authorization": f"Bearer {new}"}).status_code == 200
    assert smackctl(sup.home, "status").returncode == 0  # the CLI reads the new one
    sup.token = new  # for the fixture's shutdown
    assert new not in sup.log() and old not in sup.log()
