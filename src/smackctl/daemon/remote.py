"""One OpenAI-compatible server elsewhere (``backend: openai``), through httpx: a pooled
connection, TLS verified by default, the key from the environment variable the profile names.

``send`` answers the upstream's answer, or raises ``Failed`` before its first byte for what
the gateway may try elsewhere: a connection error, a timeout, a 5xx, a 429 (with its
``Retry-After``). A stream is passed on chunk by chunk once its first chunk came; cut after
that, it ends with an error event, and ``ended`` says so to the breaker.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from starlette.responses import Response, StreamingResponse

from smackctl.config import ModelSpec

from .answers import error_body

__all__ = ["Failed", "Remote"]

#: the upstream's headers passed back to the client
_PASSED = ("content-type", "retry-after", "x-request-id")


class Failed(Exception):
    """A deployment failed before its answer's first byte; ``status`` 0: no answer at all."""

    def __init__(
        self, status: int, why: str, connection: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(why)
        self.status, self.why, self.connection, self.retry_after = (
            status,
            why,
            connection,
            retry_after,
        )


def retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds of a ``Retry-After`` header: a number, or an HTTP date."""
    if not value:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    with contextlib.suppress(TypeError, ValueError):
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - now())
    return None


def _shown(url: str) -> str:
    """The URL without credentials in it (``https://user:pass@host`` → ``https://host``)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class Remote:
    def __init__(self, name: str, spec: ModelSpec) -> None:
        assert spec.url is not None
        self.name, self.spec = name, spec
        self.base = spec.url.rstrip("/")
        self.shown_url = _shown(self.base)
        self.http = httpx.AsyncClient(
            verify=spec.verify_tls,
            timeout=httpx.Timeout(spec.timeout, connect=spec.connect_timeout),
            limits=httpx.Limits(max_keepalive_connections=32, keepalive_expiry=30),
            follow_redirects=False,  # a redirect could send the key to another host
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    def _key(self) -> str | None:
        return os.environ.get(self.spec.api_key_env) if self.spec.api_key_env else None

    def _headers(self, request_id: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "X-Request-Id": request_id}
        if key := self._key():
            headers["Authorization"] = f"Bearer {key}"
            headers["x-api-key"] = key  # Anthropic-shaped servers read this one
        return headers

    def _clean(self, text: str) -> str:
        """An upstream's or httpx's words, without the key should they quote it."""
        key = self._key()
        return text.replace(key, "[key]") if key else text

    async def healthy(self) -> tuple[bool, str]:
        try:
            r = await self.http.get(self.base + self.spec.health_path, headers=self._headers(""))
        except httpx.HTTPError as exc:
            return False, self._clean(f"{type(exc).__name__}: {exc}".rstrip(": "))
        if r.status_code >= 500:
            return False, f"{self.spec.health_path} answered {r.status_code}"
        return True, ""

    async def send(
        self,
        path: str,
        body: dict[str, Any],
        request_id: str,
        ended: Callable[[int, str | None], None],
    ) -> Response:
        asked = {**body, "model": self.spec.upstream_model or self.name}
        request = self.http.build_request(
            "POST",
            self.base + path.removeprefix("/v1"),
            content=json.dumps(asked).encode(),
            headers=self._headers(request_id),
        )
        try:
            upstream = await self.http.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise Failed(0, f"timed out ({type(exc).__name__})", connection=True) from exc
        except httpx.HTTPError as exc:
            why = self._clean(f"{type(exc).__name__}: {exc}".rstrip(": "))
            raise Failed(0, f"cannot connect ({why})", connection=True) from exc
        headers = {k: v for k, v in upstream.headers.items() if k.lower() in _PASSED}
        stream = upstream.headers.get("content-type", "").startswith("text/event-stream")
        if upstream.status_code >= 400 or not stream:
            try:
                content = await upstream.aread()
            except httpx.HTTPError as exc:
                raise Failed(0, f"its answer broke ({type(exc).__name__})", True) from exc
            finally:
                await upstream.aclose()
            if upstream.status_code >= 500 or upstream.status_code == 429:
                said = self._clean(content[:200].decode(errors="replace"))
                raise Failed(
                    upstream.status_code,
                    f"answered {upstream.status_code}: {said}",
                    retry_after=retry_after(upstream.headers.get("retry-after")),
                )
            return Response(content, status_code=upstream.status_code, headers=headers)
        chunks = upstream.aiter_raw()
        try:
            first = await anext(chunks, b"")
        except httpx.HTTPError as exc:
            await upstream.aclose()
            raise Failed(0, f"its stream broke before a byte ({type(exc).__name__})", True) from exc
        return StreamingResponse(
            self._relay(upstream, first, chunks, ended),
            status_code=upstream.status_code,
            headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _relay(
        self,
        upstream: httpx.Response,
        first: bytes,
        chunks: AsyncIterator[bytes],
        ended: Callable[[int, str | None], None],
    ) -> AsyncIterator[bytes]:
        cut: str | None = None
        sent = len(first)
        try:
            yield first
            async for chunk in chunks:
                sent += len(chunk)
                yield chunk
        except httpx.HTTPError as exc:
            cut = f"{type(exc).__name__} after {sent} bytes"
            msg = (
                f"the stream from {self.name} ({self.shown_url}) was cut after {sent} bytes "
                f"({type(exc).__name__}); the answer is incomplete. Fix: send the request "
                "again (another deployment answers if this one stays down)"
            )
            yield b"data: " + error_body(msg, "upstream_error", "stream_cut") + b"\n\n"
        finally:
            await upstream.aclose()
            ended(502 if cut else upstream.status_code, cut)
