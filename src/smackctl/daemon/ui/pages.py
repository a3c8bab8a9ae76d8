"""The page's HTTP routes: the shell and its static files, the login (a one-time link, or a
key typed into the form), the session, the logout, and the link ``smackctl ui`` asks for.

Every HTML answer carries a Content-Security-Policy that allows scripts, styles and
connections from this supervisor only (no inline script), and may not be framed."""

from __future__ import annotations

import functools
import hmac
import html
import time
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from smackctl.daemon.keys import OPERATOR, Key

from .door import elsewhere, live_session, session_id, stamp_of
from .sessions import COOKIE, SESSION_TTL, Session, Sessions

__all__ = ["CSP", "PAGE_HEADERS", "ROUTES", "STATIC"]

STATIC = Path(str(files("smackctl.daemon.ui") / "static"))
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
#: the login form's placeholder for a message (login.html)
_MESSAGE_SLOT = '<p id="login-error" class="login-error" role="alert"></p>'


def _sessions(request: Request) -> Sessions:
    return request.app.state.services.sessions  # type: ignore[no-any-return]


@functools.cache
def _shipped(name: str) -> str:
    """A page of the package, read once (not from disk on the event loop at every load)."""
    return (STATIC / name).read_text()


def _page(name: str, status: int = 200, message: str | None = None) -> Response:
    text = _shipped(name)
    if message is not None:
        filled = _MESSAGE_SLOT.replace("></p>", f">{html.escape(message)}</p>")
        text = text.replace(_MESSAGE_SLOT, filled)
    return Response(text, status, headers=PAGE_HEADERS, media_type="text/html")


def _no_auth(request: Request) -> bool:
    return request.app.state.services.operator.token is None


def _live_session(request: Request) -> Session | None:
    sid = session_id({b"cookie": request.headers.get("cookie", "").encode("latin-1")})
    operator = request.app.state.services.operator
    return live_session(_sessions(request), operator, sid) if sid else None


async def root(request: Request) -> Response:
    return RedirectResponse("/ui/", 303)


async def shell(request: Request) -> Response:
    """The page, to a browser with a session; the login form's way, to one without."""
    if request.url.path == "/ui":
        return RedirectResponse("/ui/", 303)
    if not _no_auth(request) and _live_session(request) is None:
        return RedirectResponse("/ui/login", 303)
    return _page("index.html")


def _logged_in(request: Request, key: Key) -> Response:
    services = request.app.state.services
    sid, _ = _sessions(request).open(key, stamp_of(key, services.operator))
    return _with_cookie(RedirectResponse("/ui/", 303), request, sid)


def _with_cookie(answer: Response, request: Request, sid: str) -> Response:
    answer.set_cookie(
        COOKIE, sid, max_age=int(SESSION_TTL), path="/", httponly=True, samesite="strict",
        secure=request.url.scheme == "https",
    )  # fmt: skip
    return answer


async def login(request: Request) -> Response:
    """``GET /ui/login?code=…``: a one-time link's use; without a code, the form."""
    code = request.query_params.get("code")
    if code is None:
        return _page("login.html")
    site = request.headers.get("sec-fetch-site", "").lower()
    if site in ("cross-site", "same-site"):  # another site sent this browser here
        return _page("login.html", 403, "A login link works only when opened by itself "
                     "(pasted into the address bar, or opened by `smackctl ui`), not from "
                     "another site's page. Run `smackctl ui` for a new one.")  # fmt: skip
    redeemed = _sessions(request).redeem(code[:200])
    if redeemed is None:
        return _page("login.html", 400, "This login link has been used or has expired (a link "
                     "works once, within 5 minutes). Run `smackctl ui` for a new one.")  # fmt: skip
    sid, _ = redeemed
    return _with_cookie(RedirectResponse("/ui/", 303), request, sid)


async def login_form(request: Request) -> Response:
    """``POST /ui/login``: a key (or the operator's token) typed into the form."""
    host = request.headers.get("host", "")
    raw = {k.encode("latin-1"): v.encode("latin-1") for k, v in request.headers.items()}
    if elsewhere(raw, lambda origin: origin.split("://", 1)[-1] == host) is not None:
        return _page("login.html", 403, "This form may only be sent from this supervisor's page.")
    body = await request.body()
    given = (parse_qs(body[:8192].decode("utf-8", "replace")).get("key") or [""])[0].strip()
    services = request.app.state.services
    token = services.operator.token
    if token is not None and hmac.compare_digest(given.encode(), token):
        return _logged_in(request, OPERATOR)
    key = services.keys.check(given.encode())
    why = key.refusal(time.time()) if key is not None else None
    if key is None or why is not None:
        return _page("login.html", 401, f"{why}." if why else
                     "That is not a key of this supervisor (`smackctl keys create NAME` makes "
                     "one; `smackctl ui` gives the operator a login link).")  # fmt: skip
    return _logged_in(request, key)


async def session(request: Request) -> Response:
    key: Key = getattr(request.state, "key", OPERATOR)
    found = _live_session(request)
    view: dict[str, Any] = {
        "name": key.name,
        "admin": key.may("admin"),
        "scope": key.scope,
        "models": list(key.models),
        "csrf": found.csrf if found is not None else None,
        "expires": found.expires if found is not None else None,
    }
    return JSONResponse(view, headers={"Cache-Control": "no-store"})


async def logout(request: Request) -> Response:
    sid = session_id({b"cookie": request.headers.get("cookie", "").encode("latin-1")})
    if sid:
        _sessions(request).close(sid)
    answer = Response(status_code=204)
    answer.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict",
                         secure=request.url.scheme == "https")  # fmt: skip
    return answer


async def link(request: Request) -> Response:
    """``POST /api/ui/link``: a one-time login link for whoever asks (``smackctl ui``)."""
    key: Key = getattr(request.state, "key", OPERATOR)
    services = request.app.state.services
    code, expires = _sessions(request).link(key, stamp_of(key, services.operator))
    return JSONResponse({"path": f"/ui/login?code={code}", "expires": expires, "name": key.name})


class _Static(StaticFiles):
    """The page's files, with the page's headers (a copy of index.html served from here
    must not run without its Content-Security-Policy, or inside another site's frame)."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        answer = super().file_response(*args, **kwargs)
        answer.headers.update({k: v for k, v in PAGE_HEADERS.items() if k != "Cache-Control"})
        return answer


ROUTES: list[BaseRoute] = [
    Route("/", root, methods=["GET"]),
    Route("/ui", shell, methods=["GET"]),
    Route("/ui/", shell, methods=["GET"]),
    Route("/ui/login", login, methods=["GET"]),
    Route("/ui/login", login_form, methods=["POST"]),
    Route("/ui/session", session, methods=["GET"]),
    Route("/ui/logout", logout, methods=["POST"]),
    Route("/api/ui/link", link, methods=["POST"]),
    Mount("/ui/static", _Static(directory=STATIC, check_dir=False), name="static"),
]
