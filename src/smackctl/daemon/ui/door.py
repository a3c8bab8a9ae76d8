"""The page's part of the door (``api/guard.py``): the paths anyone may fetch (the login form,
the page's own scripts and styles), the session cookie as a credential, its CSRF and Origin
rules, and the WebSocket's handshake.

A cookie is a credential a browser sends by itself, so it is taken only with rules a header
token needs none of: ``SameSite=Strict`` keeps other sites' requests from carrying it, a
change (any method but GET and HEAD) must carry the session's CSRF token in ``X-CSRF-Token``,
and an ``Origin`` that is not this supervisor is refused. A WebSocket's handshake is a GET a
page of any origin can start, so one that carries the cookie must say it comes from here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from starlette.requests import cookie_parser
from starlette.responses import Response

from smackctl.daemon.keys import OPERATOR, Key, Operator
from smackctl.wire import error_body

from .sessions import COOKIE, Session, Sessions

__all__ = ["elsewhere", "from_cookie", "is_public", "live_session", "stamp_of"]

_PUBLIC = frozenset({"/", "/ui", "/ui/", "/ui/login", "/favicon.ico"})
_READS = frozenset({"GET", "HEAD"})


def is_public(path: str) -> bool:
    """Paths served to anyone: the page's shell (it sends a visitor with no session to the
    login form), the form itself, and the static files (no secret is in them)."""
    return path in _PUBLIC or path.startswith("/ui/static/")


def stamp_of(key: Key, operator: Operator) -> str:
    """What a session checks is still the credential it logged in with: a key's id (a
    rotation gives it a new one), or the operator's token's digest (rotated: a new one)."""
    if key is OPERATOR:
        return hashlib.sha256(operator.token or b"").hexdigest()
    return key.id


def session_id(headers: dict[bytes, bytes]) -> str | None:
    raw = headers.get(b"cookie")
    if not raw:
        return None
    return cookie_parser(raw.decode("latin-1")).get(COOKIE) or None


def live_session(sessions: Sessions, operator: Operator, sid: str) -> Session | None:
    """The session of a cookie's id while the credential it logged in with holds (a key
    rotated, the token rotated: it ends, and is forgotten)."""
    session = sessions.get(sid)
    if session is not None and session.stamp != stamp_of(session.key, operator):
        sessions.close(sid)
        return None
    return session


def from_cookie(
    sessions: Sessions,
    operator: Operator,
    method: str,
    headers: dict[bytes, bytes],
    same_origin: Callable[[str], bool],
    websocket: bool = False,
) -> Key | Response | None:
    """The key a request's session cookie stands for, the refusal, or None: no cookie."""
    sid = session_id(headers)
    if sid is None:
        return None
    session = live_session(sessions, operator, sid)
    if session is None:
        return _ended()
    if (foreign := elsewhere(headers, same_origin, websocket)) is not None:
        return err(
            403,
            f"a request from another origin ({foreign}) may not use the page's session",
            "forbidden",
            "cross_origin",
        )
    if method not in _READS and not websocket and not _csrf_ok(session, headers):
        return err(
            403,
            "a change from the page must carry its X-CSRF-Token header (GET /ui/session "
            "gives it); reload the page",
            "forbidden",
            "csrf",
        )
    return session.key


def elsewhere(
    headers: dict[bytes, bytes], same_origin: Callable[[str], bool], websocket: bool = False
) -> str | None:
    """Where a browser's request comes from when that is not this supervisor's page, or None.
    ``Sec-Fetch-Site`` says it where the browser sends it; ``Origin`` otherwise (a page with
    ``Referrer-Policy: no-referrer`` sends ``Origin: null`` on its own POSTs, so ``null``
    alone proves nothing either way). A WebSocket's handshake always carries a real one."""
    site = headers.get(b"sec-fetch-site", b"").decode("latin-1").lower()
    origin = headers.get(b"origin", b"").decode("latin-1")
    if site in ("cross-site", "same-site"):
        return origin or f"Sec-Fetch-Site: {site}"
    if websocket:
        return None if origin and same_origin(origin) else origin or "no Origin header"
    if origin == "null":
        return None if site in ("same-origin", "none") else "Origin: null"
    if origin and not same_origin(origin):
        return origin
    return None


def _csrf_ok(session: Session, headers: dict[bytes, bytes]) -> bool:
    given = headers.get(b"x-csrf-token", b"").decode("latin-1")
    return bool(given) and session.csrf_ok(given)


def err(status: int, message: str, error_type: str, code: str) -> Response:
    return Response(error_body(message, error_type, code), status, media_type="application/json")


def _ended() -> Response:
    return err(
        401,
        "the page's session has ended (logged out, expired, or the supervisor restarted): "
        "run `smackctl ui` for a new login link",
        "authentication_error",
        "session_ended",
    )
