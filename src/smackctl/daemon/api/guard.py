"""The door of the supervisor's API: one ASGI middleware with one job, cheap on the hot path.

A ``Host`` header that is not a name the supervisor answers to is refused (DNS rebinding),
every route but ``/health`` needs the bearer token, bodies are capped in size and in time, and
no CORS header is ever sent, so a web page in a browser cannot read answers from the
supervisor even if it guesses the port. A refusal at the door is counted (``on_reject``).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Callable
from typing import Any

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .common import MAX_BODY, BodyTooLarge, BodyTooSlow, err

__all__ = ["BODY_TIMEOUT", "Guard"]

#: seconds a request's whole body may take to arrive (a client that sends a byte now and then
#: would hold the request, its memory and its connection for good)
BODY_TIMEOUT = 60.0
_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}


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
    ) -> None:
        """``extra_hosts``: Host names admitted besides loopback ones (a LAN bind's own, the
        ``--allowed-host`` ones); ``profile_hosts``: the active profile's ``allowed_hosts``."""
        self.app = app
        self.token = token.encode() if token else None
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
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        refusal = self._refusal(scope, headers)
        if refusal is None:
            await self.app(scope, _capped(receive, self.max_body, self.body_timeout), send)
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
        if self.token is None:
            if (cross := self._cross_site(scope["method"], headers, host)) is not None:
                return cross
        elif scope["path"] != "/health":
            auth = headers.get(b"authorization", b"")
            # Anthropic's clients send the key as `x-api-key`
            given = auth[7:] if auth[:7].lower() == b"bearer " else headers.get(b"x-api-key", b"")
            if not hmac.compare_digest(given, self.token):
                return err(
                    401,
                    "missing or wrong API token: send `Authorization: Bearer TOKEN` (or "
                    "`x-api-key: TOKEN`); `smackctl env` prints it",
                    "authentication_error",
                    "invalid_api_key",
                    {"WWW-Authenticate": "Bearer"},
                )
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return err(
                413,
                f"request body of {int(length)} bytes is over the limit of {self.max_body} bytes",
                "invalid_request_error",
                "body_too_large",
            )
        return None

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
        """``Origin`` names this supervisor: an allowed host name and the port asked."""
        from urllib.parse import urlsplit

        try:
            o = urlsplit(origin)
            port = o.port
        except ValueError:
            return False
        asked = host.rsplit(":", 1)[1] if ":" in host and not host.endswith("]") else None
        return (o.hostname or "").lower() in self.hosts and str(port) == str(asked)


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
