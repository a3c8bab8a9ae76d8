"""What every route shares: the services, error answers, the body and query readers, and
the wrapper that turns SmackError (and a body too large or too slow) into an answer and
counts every refusal once."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from smackctl.config import parse_keep_alive
from smackctl.daemon.gateway import KEEP
from smackctl.daemon.keys import OPERATOR, Key
from smackctl.daemon.schemas import QUERY_BOUNDS
from smackctl.errors import SmackError, UsageError
from smackctl.wire import error_body, new_request_id

if TYPE_CHECKING:
    from smackctl.daemon.services import Services

__all__ = [
    "BodyTooLarge",
    "BodyTooSlow",
    "Handler",
    "err",
    "errors",
    "invalid",
    "json_body",
    "parse_object",
    "keep_alive_of",
    "number",
    "services",
    "smack_error",
    "whole",
]

MAX_BODY = 16 * 1024 * 1024

Handler = Callable[[Request], Awaitable[Response]]


class BodyTooLarge(Exception):
    pass


class BodyTooSlow(Exception):
    def __init__(self, timeout: float) -> None:
        super().__init__(timeout)
        self.timeout = timeout


def caller(request: Request) -> Key:
    """The key the door let in (the operator's, where no door stands: an app in a test)."""
    return getattr(request.state, "key", OPERATOR)


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def err(
    status: int,
    message: str,
    error_type: str,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    return Response(
        error_body(message, error_type, code),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


#: where a class name's next word begins
_SNAKE = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def smack_error(exc: SmackError) -> Response:
    # OpenAI clients show `message` only, so the fix goes in it too; `hint` is for smackctl
    message = exc.message + (f" (fix: {exc.hint})" if exc.hint else "")
    wait = exc.retry_after if exc.retry_after is not None else 1 if exc.status == 503 else None
    headers = {"Retry-After": str(max(1, math.ceil(wait)))} if wait is not None else {}
    headers.update(getattr(exc, "headers", None) or {})  # a key's x-ratelimit-* (limits.py)
    body = {
        "error": {
            "message": message,
            "type": exc.error_type,
            # OpenAI's style (``model_not_found``), not the exception's class (ModelNotFound)
            "code": getattr(exc, "code", None) or _SNAKE.sub("_", type(exc).__name__).lower(),
            "hint": exc.hint,
        }
    }
    return JSONResponse(body, status_code=exc.status, headers=headers)


def errors(fn: Handler) -> Handler:
    """SmackError and body faults as error answers; every refusal not counted on the way
    (by whoever answered) is counted here: a log line and, for inference, a usage row."""

    async def wrapper(request: Request) -> Response:
        answer = await _answer(fn, request)
        if answer.status_code >= 400 and not request.state.logged:
            reason = ""
            try:
                reason = json.loads(bytes(answer.body))["error"]["message"]
            except (ValueError, TypeError, KeyError, AttributeError):
                pass
            model = getattr(request.state, "model", None) or request.path_params.get("name")
            rid = request.scope["state"].get("activity_id") or new_request_id()
            services(request).usage.record(
                model, request.url.path, answer.status_code, rid,
                reason=reason or "(no reason)", refused=True,
            )  # fmt: skip
        return answer

    return wrapper


async def _answer(fn: Handler, request: Request) -> Response:
    request.state.logged = False
    try:
        return await fn(request)
    except SmackError as exc:
        request.state.logged = getattr(exc, "logged", False)
        return smack_error(exc)
    except BodyTooLarge:
        return err(
            413,
            f"request body is over the limit of {MAX_BODY} bytes",
            "invalid_request_error",
            "body_too_large",
        )
    except BodyTooSlow as exc:
        return err(
            408,
            f"the request's body did not arrive within {exc.timeout:g}s",
            "invalid_request_error",
            "body_timeout",
        )


def invalid(schema: type[BaseModel], body: dict[str, Any]) -> Response | None:
    """The 400 for a body its route's schema refuses, naming the field; None when it passes."""
    try:
        schema.model_validate(body)
    except ValidationError as exc:
        e = exc.errors()[0]
        field = ".".join(str(p) for p in e["loc"]) or "body"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field; the supervisor refuses fields it does not know"
        return err(
            400,
            f"invalid field `{field}`: {msg}",
            "invalid_request_error",
            "invalid_" + (str(e["loc"][0]) if e["loc"] else "body"),
        )
    return None


def number(request: Request, name: str, default: float) -> float:
    """A query parameter that must be a number within its QUERY_BOUNDS: else a 400 naming it."""
    low, high = QUERY_BOUNDS[name]
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:  # NaN fails too
        raise UsageError(
            f"query parameter `{name}` must be a number from {low:g} to {high:g}, not {raw[:40]}"
        )
    return value


def whole(request: Request, name: str, default: int) -> int:
    low, high = (int(b) for b in QUERY_BOUNDS[name])
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not (raw.strip().isascii() and raw.strip().isdigit()) or not low <= int(raw) <= high:
        raise UsageError(
            f"query parameter `{name}` must be a whole number from {low} to {high}, not {raw[:40]}"
        )
    return int(raw)


async def json_body(request: Request, max_depth: int = 100) -> dict[str, Any]:
    """The body as a JSON object. Nesting past ``max_depth`` is refused here (json.loads
    raises RecursionError near 1,000 levels; below that, a later step that walks the body,
    validation or the forwarded copy's json.dumps, could still meet the recursion limit)."""
    return parse_object(await request.body(), max_depth)


def parse_object(raw: bytes | str, max_depth: int = 100) -> dict[str, Any]:
    """``raw`` as a JSON object (``{}`` if empty), its nesting checked (``json_body``); a
    UsageError that says what is wrong with it."""
    if not raw.strip():
        return {}
    too_deep = UsageError(
        f"request body nests too deeply (more than {max_depth} levels of arrays and objects)",
        "send a flatter JSON object",
    )
    try:
        data = json.loads(raw)
    except RecursionError:
        raise too_deep from None
    except ValueError as exc:
        raise UsageError(
            f"request body is not valid JSON: {exc}",
            "send a JSON object with Content-Type: application/json",
        ) from exc
    if not isinstance(data, dict):
        raise UsageError("request body must be a JSON object", "wrap the fields in {…}")
    below: list[tuple[Any, int]] = [(data, 1)]  # containers only, without recursion
    while below:
        node, depth = below.pop()
        if depth > max_depth:
            raise too_deep
        values = node.values() if isinstance(node, dict) else node
        below += [(v, depth + 1) for v in values if isinstance(v, dict | list)]
    if _SURROGATE.search(raw if isinstance(raw, bytes) else raw.encode(errors="replace")):
        _whole_surrogates(data)
    return data


#: a JSON escape of a UTF-16 surrogate: the only way a lone one gets into a parsed body
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


def _whole_surrogates(data: dict[str, Any]) -> None:
    """A string with a lone surrogate (``"\\udcff"``: JSON allows it, Unicode does not) is
    no text a model can read: llama-server's JSON parser and llama-cpp-python's encoder each
    failed on it with a 500 of their own words. A 400 here, before any runner."""
    try:
        json.dumps(data, ensure_ascii=False).encode()
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end].encode("unicode_escape").decode()
        raise UsageError(
            f"request body holds a lone UTF-16 surrogate ({bad}): not valid Unicode text",
            "send text as UTF-8 (a surrogate escape only as half of a pair)",
        ) from None


def keep_alive_of(value: object, request: Request) -> float | str | None:
    """A request's ``keep_alive`` (Ollama's clients send it in the body) or its header
    ``X-Smackctl-Keep-Alive``: seconds idle before the model is unloaded (None: never), or
    ``KEEP`` when neither says."""
    if value is None:
        value = request.headers.get("x-smackctl-keep-alive")
    if value is None:
        return KEEP
    try:
        return parse_keep_alive(value)
    except ValueError as exc:
        raise UsageError(str(exc), "send keep_alive as seconds, 5m, -1 or 0") from None
