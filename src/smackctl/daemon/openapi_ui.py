"""The page's routes (and the fleet's) in the OpenAPI description (``openapi.py``): its
shell, login, session and static files, the routes it reads and edits through, and the
WebSocket, which OpenAPI cannot describe as a path: it is told in the description's words
(``WEBSOCKET``)."""

from __future__ import annotations

from typing import Any

__all__ = ["WEBSOCKET", "page_paths"]

WEBSOCKET = (
    " `GET /api/ws` is a WebSocket (the page's live updates and its playground, for any "
    'client): JSON frames; send `{"op": "subscribe", "topics": ["overview", "activity", '
    '"events", "logs"]}` for live `overview`, `request`, `event` and `log` frames, `{"op": '
    '"chat", "id": ID, "body": CHAT_REQUEST}` for a streamed answer as `start`, `chunk`… and '
    '`done` (or `error`) frames, `{"op": "cancel", "id": ID}` to stop it; the first frame is '
    '`{"type": "hello", "v": 1}`. docs/ui.md has the protocol.'
)

_ERROR_REF = {"$ref": "#/components/schemas/Error"}


def _answer(status: str, kind: str | None, summary: str, **extra: Any) -> dict[str, Any]:
    content = {kind: {"schema": {"type": "string"}}} if kind else None
    ok: dict[str, Any] = {"description": "success"}
    if content:
        ok["content"] = content
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            status: ok,
            "default": {"description": "an error", "content": {"application/json": {
                "schema": _ERROR_REF}, "text/html": {"schema": {"type": "string"}}}},
        },
    }  # fmt: skip
    op.update(extra)
    return op


def _json_op(summary: str, body: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    op = _answer("200", "application/json", summary, **extra)
    op["responses"]["200"]["content"] = {"application/json": {"schema": {"type": "object"}}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


_TEXT = {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}


def page_paths() -> dict[str, Any]:
    redirect = _answer("303", None, "To the page (/ui/)")
    return {
        "/": {"get": redirect},
        "/ui": {"get": redirect},
        "/ui/": {
            "get": _answer(
                "200", "text/html", "The page (a session cookie; else to the login form)"
            )
        },  # fmt: skip
        "/ui/login": {
            "get": _answer(
                "303",
                "text/html",
                "A one-time login link's use (code), or the form",
                parameters=[_query("code", {"type": "string"})],
            ),  # fmt: skip
            "post": _answer(
                "303",
                "text/html",
                "Log in with a key or the token (a form)",
                requestBody={
                    "required": True,
                    "content": {
                        "application/x-www-form-urlencoded": {
                            "schema": {"type": "object", "properties": {"key": {"type": "string"}}}
                        }
                    },
                },
            ),  # fmt: skip
        },
        "/ui/static/{path}": {
            "get": _answer(
                "200",
                "text/javascript",
                "The page's scripts, styles and charts",
                parameters=[
                    {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
            ),  # fmt: skip
        },
        "/ui/session": {"get": _json_op("Who the page's session is, and its CSRF token")},
        "/ui/logout": {"post": _answer("204", None, "End the page's session")},
        "/api/ui/link": {"post": _json_op("A one-time login link for the caller (`smackctl ui`)")},
        "/api/activity": {
            "get": _json_op(
                "Requests in flight and the last ones (a key: its own)",
                parameters=[_query("limit", {"type": "integer", "minimum": 1, "maximum": 100000})],
            ),  # fmt: skip
        },
        "/api/profiles/check": {
            "post": _json_op(
                "What validation says of a profile's text, its diff against the "
                "file, and the switch's plan",
                _TEXT,
            ),  # fmt: skip
        },
        "/api/profiles/active": {
            "put": _json_op("Write the active profile's file and apply it (as a reload)", _TEXT),
        },
        "/api/fleet": {"get": _json_op("This fleet member, its NATS connection, the members")},
    }
