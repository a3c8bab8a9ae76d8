"""The door of the supervisor's API: one ASGI middleware with one job, cheap on the hot path.

A ``Host`` header that is not a name the supervisor answers to is refused (DNS rebinding),
every route but ``/health`` needs the operator's token or a key (``keys.py``) whose scope
reaches it, bodies are capped in size and in time, and no CORS header is ever sent, so a web
page in a browser cannot read answers from the supervisor even if it guesses the port. A
refusal at the door is counted (``on_reject``); what an admin changes is audited
(``on_audit``). The key let in is ``request.state.key``, and ``keys.CALLER`` while it is served.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from smackctl.daemon.keys import CALLER, OPERATOR, Key, KeyRing, Operator
from smackctl.daemon.translate import MESSAGES
from smackctl.daemon.ui.door import from_cookie, is_public, session_id, stamp_of
from smackctl.daemon.ui.sessions import Sessions
from smackctl.wire import sse, sse_error

from .common import MAX_BODY, BodyTooLarge, BodyTooSlow, err
from .inference import INFERENCE_PATHS

__all__ = ["BODY_TIMEOUT", "Guard", "scope_needed"]

#: seconds a request's whole body may take to arrive (a client that sends a byte now and then
#: would hold the request, its memory and its connection for good)
BODY_TIMEOUT = 60.0
_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}
_INFERENCE = frozenset(("POST", p) for p in INFERENCE_PATHS) | {
    ("GET", "/v1/models"), ("GET", "/api/usage"),  # its own usage only
}  # fmt: skip
#: what a dashboard reads: the metrics, the status, the event stream (the page's overview)
_METRICS = frozenset({
    ("GET", "/metrics"), ("GET", "/api/status"), ("GET", "/api/events"), ("GET", "/api/fleet"),
})  # fmt: skip
#: what any key reaches, whatever its scope: the page's session and login link, and the
#: activity (a key sees its own requests)
_ANY_KEY = frozenset({
    ("GET", "/ui/session"), ("POST", "/ui/logout"), ("POST", "/api/ui/link"),
    ("GET", "/api/activity"),
})  # fmt: skip
_READS = frozenset({"GET", "HEAD"})


def scope_needed(method: str, path: str) -> str:
    """The scope a key needs for a route: ``inference``, ``metrics`` or ``admin``."""
    if (method, path) in _INFERENCE:
        return "inference"
    if method in ("GET", "PUT") and path.startswith("/api/keys/") and path.endswith("/preferences"):
        return "inference"  # a key's own (the route checks whose)
    return "metrics" if (method, path) in _METRICS else "admin"


class _Revoked(Exception):
    """Raised out of ``send`` to end a response whose key was revoked while it was served."""


class Guard:
    """ASGI middleware: Host check, bearer token, body size cap. Cheap on the hot path.

    Without a token (``--no-auth``) a web page could still make a browser send "simple"
    requests (a POST of ``text/plain``, no preflight) to the supervisor: such a request that
    says it comes from another origin (``Origin``, ``Sec-Fetch-Site: cross-site``) is
    refused, and a POST must be ``application/json``, which no page can send without a
    preflight, and preflights are refused."""

    def __init__(
        self,
        app: ASGIApp,
        token: str | None,
        extra_hosts: set[str],
        max_body: int = MAX_BODY,
        body_timeout: float = BODY_TIMEOUT,
        profile_hosts: Callable[[], tuple[str, ...]] = tuple,
        on_reject: Callable[[str, int, str], None] | None = None,
        keys: KeyRing | None = None,
        on_audit: Callable[[Key, str, str, int], None] | None = None,
        operator: Operator | None = None,
        sessions: Sessions | None = None,
    ) -> None:
        """``extra_hosts``: Host names admitted besides loopback ones (a LAN bind's own, the
        ``--allowed-host`` ones); ``profile_hosts``: the active profile's ``allowed_hosts``;
        ``keys``: the keys admitted besides the token; ``on_audit(key, method, path,
        status)``: an admin's change, once answered; ``operator``: the token, held where
        it can be rotated (else made from ``token``)."""
        self.app = app
        self.keys = keys
        #: the page's logins (``ui/sessions.py``): a session cookie is a credential too
        self.sessions = sessions
        self._audit = on_audit
        #: the operator's token (None: ``--no-auth``); rotated in place (``keys.Operator``)
        self.operator = operator if operator is not None else Operator(token)
        self.hosts = _LOOPBACK_HOSTS | {h.lower() for h in extra_hosts}
        self.max_body = max_body
        self.body_timeout = body_timeout
        self._profile_hosts = profile_hosts
        self._reject = on_reject
        self._from_profile: tuple[tuple[str, ...], frozenset[str]] = ((), frozenset())

    def _allowed(self, hostname: str) -> bool:
        if hostname in self.hosts:
            return True
        names = self._profile_hosts()
        if names is not self._from_profile[0]:  # a new profile: its names, once
            self._from_profile = (names, frozenset(n.lower() for n in names))
        return hostname in self._from_profile[1]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        refusal = self._refusal(scope, headers)
        if refusal is None:
            key = self._caller(scope, headers)
            refusal = key if isinstance(key, Response) else self._too_big(headers)
            if refusal is None:
                assert isinstance(key, Key)
                capped = _capped(receive, self.max_body, self.body_timeout)
                await self.serve_as(key, scope, capped, send)
                return
        if self._reject is not None:
            message = json.loads(bytes(refusal.body))["error"]["message"]
            self._reject(scope["path"], refusal.status_code, message)
        await refusal(scope, receive, send)

    def _refusal(self, scope: Scope, headers: dict[bytes, bytes]) -> Response | None:
        """The answer to a request refused at the door, or None to let it in."""
        host = headers.get(b"host", b"").decode("latin-1")
        hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if not self._allowed(hostname.lower()):
            return err(
                403,
                f"Host '{host}' is not a name this supervisor answers to (DNS rebinding "
                "guard); to allow it: `smackctl start --allowed-host NAME`, "
                "SMACKCTL_ALLOWED_HOSTS, or `allowed_hosts:` in the profile",
                "forbidden",
                "bad_host",
            )
        if scope["method"] == "OPTIONS":  # CORS preflight: never allow a foreign origin
            return err(403, "cross-origin requests are not allowed", "forbidden", "cors")
        if self.operator.token is None:
            if (cross := self._cross_site(scope["method"], headers, host)) is not None:
                return cross
        return None

    def _too_big(self, headers: dict[bytes, bytes]) -> Response | None:
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return err(
                413,
                f"request body of {int(length)} bytes is over the limit of {self.max_body} bytes",
                "invalid_request_error",
                "body_too_large",
            )
        return None

    def _caller(
        self, scope: Scope, headers: dict[bytes, bytes], websocket: bool = False
    ) -> Key | Response:
        """Who asks (the operator, or a key whose scope reaches the route), or the refusal:
        by a token in a header, or by the page's session cookie (``ui/door.py``)."""
        if self.operator.token is None or scope["path"] == "/health" or is_public(scope["path"]):
            return OPERATOR
        auth = headers.get(b"authorization", b"")
        # Anthropic's clients send the key as `x-api-key`
        given = auth[7:] if auth[:7].lower() == b"bearer " else headers.get(b"x-api-key", b"")
        key: Key | None = None
        if not given and self.sessions is not None:
            host = headers.get(b"host", b"").decode("latin-1")
            found = from_cookie(
                self.sessions, self.operator, scope.get("method", "GET"), headers,
                lambda origin: self._same_origin(origin, host), websocket,
            )  # fmt: skip
            if found is OPERATOR or isinstance(found, Response):
                return found
            key = found
        elif hmac.compare_digest(given, self.operator.token):
            return OPERATOR
        if key is None and self.keys is not None:
            key = self.keys.check(given)
        why = key.refusal(time.time()) if key is not None else None
        if key is None or why is not None:
            return err(
                401,
                f"{why}: ask its admin for a new one (`smackctl keys create`)"
                if why
                else "missing or wrong API token or key: send `Authorization: Bearer TOKEN` "
                "(or `x-api-key: TOKEN`); `smackctl env` prints the operator's token, "
                "`smackctl keys create NAME` makes a key",
                "authentication_error",
                "invalid_api_key",
                {"WWW-Authenticate": "Bearer"},
            )
        # the WebSocket's ops check their own scope (ui/live.py)
        method = scope.get("method", "GET")
        anyone = websocket or (method, scope["path"]) in _ANY_KEY
        needed = key.scope if anyone else scope_needed(method, scope["path"])
        if not key.may(needed):
            return err(
                403,
                f"key {key.name} has scope {key.scope}; {method} {scope['path']} needs "
                f"scope {needed}: use a key of that scope (`smackctl keys create NAME --scope "
                f"{needed}`) or the operator's token",
                "permission_error",
                "scope",
            )
        return key

    async def serve_as(self, key: Key, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request as ``key``: a key's answer is cut off if the key is revoked
        while it is served; an admin's change is audited once answered."""
        if key is not OPERATOR and (why := key.refusal(time.time())) is not None:
            await _cut_off({"type": "http.response.start"}, why, scope["path"], send)
            return  # revoked before it began (a WebSocket's chat): nothing of it runs
        scope.setdefault("state", {})["key"] = key
        token = CALLER.set(None if key is OPERATOR else key)
        status = [0]
        audited = (
            self._audit is not None
            and (scope["method"] not in _READS or scope["path"] == "/api/keys/export")
            and (scope["method"], scope["path"]) not in _INFERENCE
            and not is_public(scope["path"])  # anyone's: the login form, a 404 (not an admin)
        )

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            if key is not OPERATOR and (why := key.refusal(time.time())) is not None:
                await _cut_off(message, why, scope["path"], send)
                raise _Revoked
            await send(message)

        try:
            await self.app(scope, receive, sending if key is not OPERATOR or audited else send)
        except _Revoked:
            pass
        finally:
            CALLER.reset(token)
            if (release := scope["state"].get("release")) is not None:
                release()  # the key's request in flight is over (limits.py)
            if (abandon := scope["state"].get("abandon")) is not None:
                abandon(status[0])  # an answer that ended uncounted leaves the activity
            if audited and self._audit is not None:
                self._audit(key, scope["method"], scope["path"], status[0])

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket's handshake: the Host rule, then its caller, as for HTTP; a browser's
        must come from this supervisor's own page (``Origin``). A refusal is an HTTP answer
        with the error's JSON where the server can send one, else a close."""
        headers = dict(scope["headers"])
        refusal = self._refusal({**scope, "method": "GET"}, headers)
        key: Key | Response = refusal if refusal is not None else self._caller(scope, headers, True)
        if isinstance(key, Response):
            await _refuse_websocket(scope, send, key)
            return
        state = scope.setdefault("state", {})
        state["key"], state["still_valid"] = key, self._still_valid(key, headers)
        token = CALLER.set(None if key is OPERATOR else key)
        try:
            await self.app(scope, receive, send)
        finally:
            CALLER.reset(token)

    def _still_valid(self, key: Key, headers: dict[bytes, bytes]) -> Callable[[], str | None]:
        """For a connection that lasts: why its credential no longer holds (a key revoked or
        expired, a session ended, the token rotated), or None. A WebSocket asks before each
        op and now and then (``ui/live.py``)."""
        operator, stamp = self.operator, stamp_of(key, self.operator)
        by_header = headers.get(b"authorization") or headers.get(b"x-api-key")
        sid = session_id(headers) if self.sessions is not None and not by_header else None
        sessions = self.sessions

        def check() -> str | None:
            if operator.token is None:
                return None
            if key is not OPERATOR and (why := key.refusal(time.time())) is not None:
                return why
            if stamp_of(key, operator) != stamp:
                return "the credential this connection opened with was rotated"
            if sid is not None and sessions is not None and sessions.get(sid) is None:
                return "the page's session has ended"
            return None

        return check

    def _cross_site(self, method: str, headers: dict[bytes, bytes], host: str) -> Response | None:
        """The refusal of a request a web page of another origin made a browser send."""
        origin = headers.get(b"origin", b"").decode("latin-1")
        site = headers.get(b"sec-fetch-site", b"").lower()
        if site == b"cross-site" or (origin and not self._same_origin(origin, host)):
            return err(
                403,
                f"a request from another origin ({origin or 'a cross-site page'}) is not "
                "allowed: without a token the supervisor answers its own clients only",
                "forbidden",
                "cross_origin",
            )
        kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if method == "POST" and kind != b"application/json":
            return err(
                415,
                "a POST to the supervisor must be sent as `Content-Type: application/json`",
                "invalid_request_error",
                "unsupported_media_type",
            )
        return None

    def _same_origin(self, origin: str, host: str) -> bool:
        """``Origin`` is the address this request was sent to (its ``Host``, a name this
        supervisor answers to): another name or port of this machine is another origin."""
        from urllib.parse import urlsplit

        try:
            o = urlsplit(origin)
            o.port  # noqa: B018 - a port that is not a number raises here
        except ValueError:
            return False
        same = o.netloc.lower() == host.lower() and o.scheme in ("http", "https")
        return same and self._allowed((o.hostname or "").lower())


async def _cut_off(message: Any, why: str, path: str, send: Send) -> None:
    """End an answer whose key was refused mid-way: a 401 if nothing was sent yet, else an
    error event, the stream's last piece (OpenAI's shape; Anthropic's on its route)."""
    text = f"{why} while this request was served"
    if message["type"] == "http.response.start":
        await err(401, text, "authentication_error", "key_revoked")(
            {"type": "http"}, _nothing, send
        )
        return
    if path == MESSAGES:
        error = {"type": "authentication_error", "message": text}
        last = sse({"type": "error", "error": error}, event="error")
    else:
        last = sse_error(text, "authentication_error", "key_revoked")
    await send({"type": "http.response.body", "body": last, "more_body": False})


async def _refuse_websocket(scope: Scope, send: Send, refusal: Response) -> None:
    if "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", "status": refusal.status_code,
                    "headers": refusal.raw_headers})  # fmt: skip
        await send({"type": "websocket.http.response.body", "body": bytes(refusal.body)})
    else:
        await send({"type": "websocket.close", "code": 1008})


async def _nothing() -> Any:
    return {"type": "http.disconnect"}


def _capped(receive: Receive, limit: int, timeout: float = BODY_TIMEOUT) -> Receive:
    seen = 0
    deadline: float | None = None
    done = False

    async def wrapped() -> Any:
        nonlocal seen, deadline, done
        if done:  # the body is in; a stream's wait for the client's disconnect has no limit
            return await receive()
        loop = asyncio.get_running_loop()
        deadline = deadline or loop.time() + timeout
        try:
            msg = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            raise BodyTooSlow(timeout) from None
        if msg["type"] == "http.request":
            seen += len(msg.get("body", b""))
            if seen > limit:
                raise BodyTooLarge()
            done = not msg.get("more_body", False)
        else:
            done = True
        return msg

    return wrapped
