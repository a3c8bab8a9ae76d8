"""schemathesis drives a real supervisor from its own OpenAPI description (``/openapi.json``).

Every route but ``/api/shutdown`` (it would end the run) gets valid and invalid requests:
bodies of the wrong shape and type, unknown fields, odd strings in paths and queries. What
must hold: no 5xx, no request that hangs (a 30 s limit per call), answers in the content
types the description says, and afterwards a healthy supervisor that still serves a chat.

Bounded for CI: ``FUZZ_EXAMPLES`` (6) examples an operation and mode (24 operations, ~290
requests, ~2.5 minutes here), derandomized so a run is repeatable. The copy of the
description the fuzzer reads is narrowed so that each example is quick (the published one is
not changed): model names are drawn from this profile's (and one unknown), generation stops
at 8 tokens, and a bench is small.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import content_type_conformance, not_a_server_error
from starlette.routing import Mount, Route, WebSocketRoute

from smackctl import __version__
from smackctl.daemon.openapi import openapi

from conftest import CHAT, Home, Supervisor, free_port, launch, profile_yaml, shutdown

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "6"))
# not `broken` and `alien`: a model whose file cannot load answers 500 model_load_error, on
# purpose (the server's configuration is at fault, not the request; test_faults.py checks it)
NAMES = ["tiny-a", "tiny-q8", "tiny-base", "tiny-hostile", "fast", "nope"]


@pytest.fixture(scope="module")
def fuzz_sup(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Supervisor]:
    root = tmp_path_factory.mktemp("fuzz") / "home"
    profiles = root / "profiles"
    profiles.mkdir(parents=True)
    # a request that sets no token limit stops at 8 tokens too: a tiny model's 4,000-token
    # answer to such a request took 30-45 s on a busy 2-core machine, past the fuzzer's limit
    (profiles / "test.yaml").write_text(profile_yaml(model_dir, "defaults:\n  max_tokens: 8\n"))
    env = {
        "SMACKCTL_HOME": str(root),
        "SMACKCTL_PROFILE_DIR": str(profiles),
        "SMACKCTL_PORT": str(free_port()),
        "SMACKCTL_PROFILE": "test",
    }
    home = Home(root, {**os.environ, **env})
    sup = launch(home)
    yield sup
    shutdown(sup)


def _narrow(spec: dict[str, Any]) -> dict[str, Any]:
    spec = copy.deepcopy(spec)
    schemas = spec["components"]["schemas"]
    for name in (
        "ChatRequest",
        "CompletionRequest",
        "EmbeddingRequest",
        "AnthropicRequest",
        "ResponsesRequest",
        "CountTokensRequest",
        "RerankRequest",
        "InfillRequest",
        "TokenizeRequest",
    ):
        props = schemas[name]["properties"]
        props["model"] = {"enum": NAMES}
        for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
            if key in props:
                props[key] = {"type": "integer", "minimum": 1, "maximum": 8}
    for path, item in spec["paths"].items():
        for op in item.values():
            for p in op.get("parameters", []):
                if p["name"] == "name":
                    p["schema"] = {"enum": [*NAMES, "--all"]}
            if path == "/api/models/{name}/bench":
                props = op["requestBody"]["content"]["application/json"]["schema"]["properties"]
                props["prompt_tokens"]["maximum"] = 32
                props["gen_tokens"]["maximum"] = 4
                props["runs"]["maximum"] = 1
    del spec["paths"]["/api/shutdown"]
    del spec["paths"]["/api/token/rotate"]  # the fuzzer's own token would stop working
    # a valid profile would replace the fuzzer's own (test_ui.py sends it bad ones);
    # /api/profiles/check reads the same bodies and is fuzzed
    del spec["paths"]["/api/profiles/active"]
    for p in spec["paths"]["/api/events"]["get"]["parameters"]:
        if p["name"] == "follow":  # a followed stream never ends: fuzzed without it
            p["required"], p["schema"] = True, {"type": "integer", "enum": [0]}
    return spec


# built from the same function the supervisor serves it from (a test below checks they match)
SCHEMA = schemathesis.openapi.from_dict(_narrow(openapi(__version__)))
OPERATIONS = {
    f"{op.method.upper()} {op.path}": op for op in (r.ok() for r in SCHEMA.get_all_operations())
}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_no_route_answers_5xx_or_hangs(
    label: str, mode: GenerationMode, fuzz_sup: Supervisor
) -> None:
    auth = {"Authorization": f"Bearer {fuzz_sup.token}"}

    @given(case=OPERATIONS[label].as_strategy(mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def one(case: Any) -> None:
        response = case.call(base_url=fuzz_sup.url, headers=auth, timeout=30)
        case.validate_response(response, checks=[not_a_server_error, content_type_conformance])

    one()


def test_the_supervisor_is_healthy_after_the_fuzzing(fuzz_sup: Supervisor) -> None:
    assert fuzz_sup.proc.poll() is None
    with fuzz_sup.client() as c:
        r = c.post("/v1/chat/completions", json={**CHAT, "model": "tiny-a"})
        assert r.status_code == 200, r.text
        served = c.get("/api/usage").json()
    assert sum(row["requests"] for row in served) > 0
    log = fuzz_sup.log()
    assert "Traceback" not in log and "status=5" not in log


def test_the_description_is_openapi_and_covers_every_route(fuzz_sup: Supervisor) -> None:
    with fuzz_sup.client() as c:
        spec = c.get("/openapi.json").json()
        assert httpx.get(fuzz_sup.url + "/openapi.json").status_code == 401  # token needed
    assert spec == openapi(__version__)  # what the fuzzer read is what is served
    assert spec["openapi"].startswith("3.1")
    routes = {
        (r.path, m.lower())
        for r in fuzz_sup_routes()
        if isinstance(r, Route)
        for m in (r.methods or ())
        if m != "HEAD"
    }
    routes |= {(r.path + "/{path}", "get") for r in fuzz_sup_routes() if isinstance(r, Mount)}
    described = {(p, m) for p, item in spec["paths"].items() for m in item}
    assert routes == described
    # the WebSocket, which OpenAPI has no path for, is told in the description's words
    sockets = [r.path for r in fuzz_sup_routes() if isinstance(r, WebSocketRoute)]
    assert sockets == ["/api/ws"] and "`GET /api/ws` is a WebSocket" in spec["info"]["description"]


def fuzz_sup_routes() -> list[Any]:
    """The Starlette routes the supervisor serves: its route table, listed without building
    a scheduler or any service."""
    from smackctl.daemon.api import ROUTES

    return list(ROUTES)
