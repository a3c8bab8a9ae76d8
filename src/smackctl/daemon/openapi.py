"""The supervisor's routes as an OpenAPI 3.1 description, served at ``GET /openapi.json``.

The OpenAI request bodies come from the same pydantic models that validate them
(``schemas.py``), so the description cannot drift from what the supervisor accepts; the
control routes' bodies are written here, next to the list of routes. ``tests/test_fuzz.py``
drives a real supervisor from this description with schemathesis.
"""

from __future__ import annotations

from typing import Any

from .openapi_ui import WEBSOCKET, page_paths
from .schemas import QUERY_BOUNDS, REQUEST_SCHEMAS

__all__ = ["openapi"]

_REF = "#/components/schemas/{model}"

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "code": {"type": ["string", "null"]},
                "hint": {"type": ["string", "null"]},
            },
        }
    },
}

_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "A model's name or alias.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 128},
}


def _json(schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"application/json": {"schema": schema or {"type": "object"}}}


def _op(
    summary: str,
    *,
    body: dict[str, Any] | None = None,
    ok: dict[str, Any] | None = None,
    status: str = "200",
    params: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            status: {"description": "success", "content": ok or _json()},
            "default": {"description": "an error, OpenAI-shaped", "content": _json(_ERROR)},
        },
    }
    if body is not None:
        op["requestBody"] = {"required": False, "content": _json(body)}
    if params:
        op["parameters"] = params
    return op


def _obj(**props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props, "additionalProperties": False}


def _query(name: str, schema: dict[str, Any], what: str) -> dict[str, Any]:
    if name in QUERY_BOUNDS:  # the bounds api.py checks
        schema = {**schema, "minimum": QUERY_BOUNDS[name][0], "maximum": QUERY_BOUNDS[name][1]}
    return {"name": name, "in": "query", "required": False, "description": what, "schema": schema}


_NDJSON = {"application/x-ndjson": {"schema": {"type": "string"}}}


_SUMMARIES = {
    "/v1/messages": "Anthropic Messages",
    "/v1/messages/count_tokens": "Anthropic token counting",
    "/v1/rerank": "Rerank documents against a query (llama-server, Jina, Cohere shape)",
    "/infill": "Fill in the middle (llama-server's, for editors)",
    "/tokenize": "A model's token ids for a text (llama-server's)",
}


def _inference(schemas: dict[str, Any]) -> dict[str, Any]:
    """The routes of the APIs clients speak, their bodies' schemas added to ``schemas``."""
    ops: dict[str, Any] = {}
    for path, model in REQUEST_SCHEMAS.items():
        js = model.model_json_schema(ref_template=_REF)
        schemas.update(js.pop("$defs", {}))
        schemas[model.__name__] = js
        ok = {
            **_json(),
            "text/event-stream": {"schema": {"type": "string"}},  # with "stream": true
        }
        op = _op(_SUMMARIES.get(path, f"OpenAI {path.removeprefix('/v1/')}"), ok=ok)
        op["requestBody"] = {
            "required": True,
            "content": _json({"$ref": _REF.format(model=model.__name__)}),
        }
        ops[path] = {"post": op}
    return ops


def _models() -> dict[str, Any]:
    bench = _obj(
        prompt_tokens={"type": "integer", "minimum": 8, "maximum": 1_000_000},
        gen_tokens={"type": "integer", "minimum": 2, "maximum": 1_000_000},
        runs={"type": "integer", "minimum": 1, "maximum": 100},
        cold={"type": "boolean"},
    )
    return {
        "/api/models": {
            "get": _op(
                "Every known model",
                params=[_query("details", {"type": "string"}, "any value: add GGUF facts")],
            ),
            "post": _op(
                "Add a model file (`smackctl models add`)",
                body={
                    "type": "object",
                    "required": ["name", "path"],
                    "properties": {
                        "name": {"type": "string"},
                        "path": {"type": "string"},
                        "n_ctx": {"type": "integer", "minimum": 1},
                        "ttl": {"type": ["integer", "string"]},
                        "aliases": {"type": "array", "items": {"type": "string"}},
                        "chat_format": {"type": "string"},
                        "backend": {"enum": ["llama-cpp-python", "llama-server"]},
                    },
                },
                status="201",
            ),
        },
        "/api/models/discover": {
            "post": _op(
                "Make every GGUF model under a folder a known model",
                body={
                    "type": "object",
                    "required": ["dir"],
                    "properties": {"dir": {"type": "string"}},
                },
            )
        },
        "/api/models/{name}": {
            "get": _op("One model, with its GGUF facts", params=[_NAME]),
            "delete": _op("Remove an added model", params=[_NAME]),
        },
        "/api/models/{name}/load": {
            "post": _op(
                "Load a model; NDJSON progress, then `ready` or `error`",
                body=_obj(
                    force={"type": "boolean"},
                    estimate_only={"type": "boolean"},
                    ttl={"type": ["integer", "string"]},
                ),
                ok={**_NDJSON, **_json()},
                params=[_NAME],
            )
        },
        "/api/models/{name}/unload": {"post": _op("Unload a model", params=[_NAME])},
        "/api/models/{name}/pull": {
            "post": _op("Download a model's file; NDJSON progress", ok=_NDJSON, params=[_NAME])
        },
        "/api/models/{name}/bench": {
            "post": _op("Benchmark a model; NDJSON", body=bench, ok=_NDJSON, params=[_NAME])
        },
        "/api/bench": {
            "get": _op(
                "Stored bench results, newest first",
                params=[
                    _query("model", {"type": "string"}, "one model's results"),
                    _query("limit", {"type": "integer"}, "how many"),
                ],
            )
        },
    }


def _control() -> dict[str, Any]:
    return {
        "/api/profiles": {"get": _op("The active profile")},
        "/api/profiles/reload": {
            "post": _op("Read the active profile's file again and apply it (as a switch)")
        },
        "/api/profiles/switch": {
            "post": _op(
                "Switch to a profile file; NDJSON, or the plan with dry_run",
                body={
                    "type": "object",
                    "required": ["path"],
                    "properties": {"path": {"type": "string"}, "dry_run": {"type": "boolean"}},
                },
                ok={**_NDJSON, **_json()},
            )
        },
        "/api/events": {
            "get": _op(
                "Events as they happen (SSE), after the kept ones asked for",
                params=[
                    _query("after", {"type": "integer", "minimum": 0}, "an event id"),
                    _query("since", {"type": "number"}, "a unix time"),
                    _query("types", {"type": "string"}, "event types, comma-separated"),
                    _query(
                        "follow",
                        {"type": "integer", "minimum": 0, "maximum": 1},
                        "0: the kept events only, then the stream ends",
                    ),
                ],
                ok={"text/event-stream": {"schema": {"type": "string"}}},
            )
        },
        "/api/plugins": {"get": _op("The plugins installed, and which the active profile enables")},
        "/api/cache": {
            "get": _op("The response cache: hits, misses, entries and bytes per model"),
            "delete": _op(
                "Empty the response cache, or one model's entries",
                params=[_query("model", {"type": "string"}, "a model name")],
            ),
        },
        "/api/route": {
            "post": _op(
                "Which model `model: auto` would pick for a prompt, and why (runs nothing)",
                body={"type": "object", "properties": {"prompt": {"type": "string"}}},
            )
        },
        "/api/backends": {
            "get": _op("Deployments (local and remote), their circuit breakers, health, groups")
        },
        "/api/usage": {
            "get": _op(
                "Requests and tokens per model (or key) per day; a key's own only, but an admin's",
                params=[
                    _query("since", {"type": "number"}, "a unix time"),
                    _query(
                        "by",
                        {"type": "string", "enum": ["model", "key", "deployment"]},
                        "the grouping",
                    ),
                    _query("bucket", {"type": "string", "enum": ["day", "hour"]}, "per"),
                    _query("key", {"type": "string"}, "one key's usage (a key: its own)"),
                    _query("format", {"type": "string", "enum": ["json", "csv"]}, "csv: CSV"),
                ],
                ok={**_json(), "text/csv": {"schema": {"type": "string"}}},
            )
        },
        "/api/logs": {
            "get": _op(
                "The tail of the supervisor's or a model's log",
                ok={"text/plain": {"schema": {"type": "string"}}},
                params=[
                    _query("model", {"type": "string"}, "a model's runner log"),
                    _query(
                        "lines",
                        {"type": "integer"},
                        "how many lines",
                    ),
                ],
            )
        },
        "/metrics": {
            "get": _op("Prometheus metrics", ok={"text/plain": {"schema": {"type": "string"}}})
        },
        "/api/shutdown": {
            "post": _op(
                "Stop the supervisor (drain first unless force)",
                body=_obj(timeout={"type": "number", "minimum": 0}, force={"type": "boolean"}),
                status="202",
            )
        },
    }


def _keys() -> dict[str, Any]:
    name = {**_NAME, "description": "A key's name."}
    made = _obj(
        name={"type": "string"},
        scope={"type": "string", "enum": ["inference", "metrics", "admin"]},
        models={"type": "array", "items": {"type": "string"}},
        expires={"type": "string", "description": "90m, 12h, 30d, 2w or never"},
        priority={"type": "string", "enum": ["interactive", "batch"]},
        limits=_obj(
            **{
                n: {"type": "integer", "minimum": 1}
                for n in ("rpm", "tpm", "tokens_per_day", "max_parallel", "budget_tokens")
            },
            budget_seconds={"type": "number", "exclusiveMinimum": 0},
            budget_usd={"type": "number", "exclusiveMinimum": 0},
            period={"type": "string", "enum": ["day", "month", "none"]},
        ),
    )
    made["required"] = ["name"]
    return {
        "/api/keys": {
            "get": _op("Every key: scope, models, expiry, revoked (never the key)"),
            "post": _op("Make a key; the answer holds it, once", body=made, status="201"),
        },
        "/api/keys/export": {"get": _op("Every key as `config export` writes it (digests)")},
        "/api/keys/import": {
            "post": _op(
                "Keys from `config export`: what would change, applied unless dry_run",
                body={
                    "type": "object",
                    "properties": {"keys": {"type": "array"}, "dry_run": {"type": "boolean"}},
                },
            )
        },
        "/api/keys/{name}": {
            "get": _op("A key, and what it used today and over 30 days", params=[name]),
            "delete": _op(
                "Revoke a key at once, its streams in flight included (`already`: it was)",
                params=[name],
            ),
        },
        "/api/keys/{name}/rotate": {
            "post": _op("A new token for a key (in the answer, once)", params=[name])
        },
        "/api/keys/{name}/preferences": {
            "get": _op("A key's preferences (its own, or any for an admin)", params=[name]),
            "put": _op(
                "Set a key's preferences: a default model and sampling, per context too",
                params=[name],
                body={
                    "type": "object",
                    "properties": {
                        "model": {"type": "string"},
                        "sampling": {"type": "object"},
                        "contexts": {"type": "object"},
                    },
                },
            ),
        },
        "/api/token/rotate": {
            "post": _op("A new operator's token (in the answer and the token file); the old fails")
        },
        "/api/audit": {
            "get": _op(
                "What admins changed: when, which key, the route, its status",
                params=[_query("since", {"type": "number"}, "a unix time")],
            )
        },
    }


def openapi(version: str) -> dict[str, Any]:
    schemas: dict[str, Any] = {"Error": _ERROR}
    paths: dict[str, Any] = {
        "/health": {"get": _op("Liveness; needs no token")},
        "/openapi.json": {"get": _op("This description")},
        "/v1/models": {"get": _op("OpenAI model list")},
        **_inference(schemas),
        "/api/status": {"get": _op("The supervisor, its budget, models and warnings")},
        **_models(),
        **_control(),
        **_keys(),
        **page_paths(),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "smackctl supervisor",
            "version": version,
            "description": "OpenAI-compatible routes and smackctl's control routes. Every "
            "route but /health needs `Authorization: Bearer TOKEN` (the state dir's token) or a "
            "key (`smackctl keys create`) whose scope reaches it, or the page's session cookie "
            "(`smackctl ui`)." + WEBSOCKET,
        },
        "servers": [{"url": "/"}],
        "components": {
            "schemas": schemas,
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"token": []}],
        "paths": paths,
    }
