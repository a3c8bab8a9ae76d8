"""One OpenAI-compatible server elsewhere (``backend: openai``), through httpx: a pooled
connection, TLS verified by default, the key from the environment variable the profile names.

``send`` answers the upstream's answer, or raises ``Failed`` before its first byte for what
the gateway may try elsewhere: a connection error, a timeout, a 5xx, a 429 (with its
``Retry-After``). A stream comes back as ``Streamed``: passed on chunk by chunk once its first
chunk came; cut after that, it ends with an error event, and its ``cut`` says why.

A server elsewhere may be broken or hostile, so what it sends is bounded:

- in time: ``timeout`` per read, and ``deadline`` for the whole attempt (head to last byte),
  so a server that drips a byte just under ``timeout`` is cut all the same (504);
- in size: a whole answer is read up to ``max_answer_size`` once decoded (502 past it), and a
  compressed body is inflated 64 KiB at a time (``Inflater``), so a gzip bomb costs the cap,
  never its inflated size;
- in encoding: bodies are passed on decoded, without the upstream's ``Content-Encoding``.
  A stream asks for ``identity`` (a compressing hop buffers events into its compressor's
  blocks, and tokens are tiny); a whole answer asks for ``gzip, deflate``, never the
  ``br``/``zstd`` httpx would add when those packages are installed. What comes is decoded
  whatever was asked (a proxy may compress anyway); an encoding it cannot decode is a 502,
  never bytes the client cannot read.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import os
import time
import zlib
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from starlette.responses import Response

from smackctl.config import ModelSpec
from smackctl.wire import sse_error

__all__ = ["Failed", "Inflater", "Remote", "Streamed"]

#: the upstream's headers passed back to the client (never its Content-Encoding or
#: Content-Length: what is passed on is decoded)
_PASSED = ("content-type", "retry-after", "x-request-id")
#: the most a compressed body is inflated by in one step
PIECE = 64 * 1024
#: zlib's window bits per content coding: gzip or zlib headers, told apart by zlib itself
_WBITS = {"gzip": 47, "x-gzip": 47, "deflate": 47}


class Failed(Exception):
    """A deployment failed before its answer's first byte; ``status`` 0: no answer at all.
    ``error``/``answer``: what a local model raised or answered, passed on as it is when it
    was the only deployment to try."""

    def __init__(
        self,
        status: int,
        why: str,
        connection: bool = False,
        retry_after: float | None = None,
        *,
        error: Exception | None = None,
        answer: Response | None = None,
    ) -> None:
        super().__init__(why)
        self.status, self.why, self.connection = status, why, connection
        self.retry_after, self.error, self.answer = retry_after, error, answer
        self.retry = True  # False: another attempt at this deployment would fail the same


class Streamed:
    """A stream from elsewhere: its status and headers, its ``body``; once the body is over,
    ``status`` is how it ended and ``cut`` why it was cut (None: it was not)."""

    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.status, self.headers = status, headers
        self.cut: str | None = None
        self.body: AsyncGenerator[bytes, None]


class Undecodable(Exception):
    """A body whose ``Content-Encoding`` smackctl cannot decode, or that does not decode."""


def retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds of a ``Retry-After`` header: a number, or an HTTP date."""
    if not value:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    with contextlib.suppress(TypeError, ValueError):
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - now())
    return None


class Inflater:
    """A body's bytes as they came, decoded by its ``Content-Encoding`` (identity, gzip,
    deflate) in pieces of at most ``PIECE`` bytes, whatever the ratio: a small body that
    inflates to gigabytes is read a piece at a time, and its reader stops at its cap."""

    def __init__(self, encoding: str) -> None:
        codings = [c.strip().lower() for c in encoding.split(",")]
        codings = [c for c in codings if c and c != "identity"]
        if len(codings) > 1 or (codings and codings[0] not in _WBITS):
            raise Undecodable(f"its answer came in Content-Encoding {encoding!r}")
        self.encoding = encoding
        self._z = zlib.decompressobj(_WBITS[codings[0]]) if codings else None

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self._z is None:
            if data:
                yield data
            return
        while True:
            try:
                out = self._z.decompress(data, PIECE)
            except zlib.error as exc:
                raise Undecodable(f"its {self.encoding} answer does not decode ({exc})") from None
            data = self._z.unconsumed_tail
            if out:
                yield out
            if not data and len(out) < PIECE:  # a full piece may leave output still held
                return


def _shown(url: str) -> str:
    """The URL without credentials in it (``https://user:pass@host`` → ``https://host``)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _mib(size: int) -> str:
    return f"{size / 1024**2:g} MiB"


def _streamed(upstream: httpx.Response) -> bool:
    return upstream.status_code < 400 and upstream.headers.get("content-type", "").startswith(
        "text/event-stream"
    )


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

    def _headers(self, request_id: str, stream: bool = False) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "X-Request-Id": request_id,
            "Accept-Encoding": "identity" if stream else "gzip, deflate",
        }
        if key := self._key():
            headers["Authorization"] = f"Bearer {key}"
            headers["x-api-key"] = key  # Anthropic-shaped servers read this one
        return headers

    def _clean(self, text: str) -> str:
        """An upstream's or httpx's words, without the key should they quote it."""
        key = self._key()
        return text.replace(key, "[key]") if key else text

    def _refused(self, status: int, content: bytes) -> str:
        """Why the server refused the key this deployment sends it: the variable it is read
        from, and whether the supervisor has it (a server's 401 passed on read as the
        client's own key being wrong)."""
        said = self._clean(content[:200].decode(errors="replace"))
        env = self.spec.api_key_env
        if env is None:
            fix = f"it was sent no key: give {self.name} `api_key_env: VARIABLE` in the profile"
        else:
            fix = self.key_unset() or f"check the key in ${env}"
        return f"{self.shown_url} refused the key it was sent ({status}: {said}); {fix}"

    def key_unset(self) -> str | None:
        """Why it is asked without a key: the variable its key is read from, not set in the
        supervisor's environment (None: none is named, or it is set)."""
        env = self.spec.api_key_env
        if env is None or os.environ.get(env):
            return None
        return (f"its key's variable {env} is not set in the supervisor's environment, so "
                f"it is asked without a key: restart the supervisor with it set ({env}=… "
                "smackctl restart)")  # fmt: skip

    def _late(self) -> str:
        """Why an attempt past its ``deadline`` was cut, and the setting that allows more."""
        return (
            f"took longer than its deadline of {self.spec.deadline:g}s; raise `deadline` for "
            f"{self.name} in the profile if its answers take that long"
        )

    async def healthy(self) -> tuple[bool, str]:
        """Its health check: the status of ``health_path``, its body never read (it could be
        a bomb), within ``timeout`` in all (a head dripped a byte at a time too)."""
        url, limit = self.base + self.spec.health_path, min(self.spec.timeout, self.spec.deadline)
        try:
            async with asyncio.timeout(limit):
                async with self.http.stream("GET", url, headers=self._headers("")) as r:
                    status = r.status_code
        except TimeoutError:
            return False, f"{self.spec.health_path} did not answer in {limit:g}s"
        except httpx.HTTPError as exc:
            return False, self._clean(f"{type(exc).__name__}: {exc}".rstrip(": "))
        if status >= 500:
            return False, f"{self.spec.health_path} answered {status}"
        return True, ""

    async def send(self, path: str, body: dict[str, Any], request_id: str) -> Response | Streamed:
        asked = {**body, "model": self.spec.upstream_model or self.name}
        request = self.http.build_request(
            "POST",
            self.base + path.removeprefix("/v1"),
            content=json.dumps(asked).encode(),
            headers=self._headers(request_id, stream=bool(body.get("stream"))),
        )
        ends = asyncio.get_running_loop().time() + self.spec.deadline
        upstream: httpx.Response | None = None
        chunks: AsyncGenerator[bytes, None] | None = None
        try:
            async with asyncio.timeout_at(ends):
                upstream = await self._head(request)
                inflater = Inflater(upstream.headers.get("content-encoding", ""))
                if not _streamed(upstream):
                    content = await self._whole(upstream, inflater)
                    await upstream.aclose()
                else:
                    chunks = self._decoded(upstream, inflater)
                    first = await anext(chunks, b"")
        except BaseException as exc:
            if chunks is not None:
                await chunks.aclose()
            if upstream is not None:
                await upstream.aclose()
            if isinstance(exc, TimeoutError):
                raise Failed(504, self._late(), connection=True) from None
            if isinstance(exc, Undecodable):
                raise Failed(502, str(exc)) from None
            if isinstance(exc, httpx.HTTPError):
                why = f"its answer broke ({type(exc).__name__})"
                raise Failed(0, why, connection=True) from exc
            raise
        headers = {k: v for k, v in upstream.headers.items() if k.lower() in _PASSED}
        if chunks is None:
            if upstream.status_code >= 500 or upstream.status_code == 429:
                said = self._clean(content[:200].decode(errors="replace"))
                raise Failed(
                    upstream.status_code,
                    f"answered {upstream.status_code}: {said}",
                    retry_after=retry_after(upstream.headers.get("retry-after")),
                )
            if upstream.status_code == 401:  # our key, not the client's: never passed on as
                refused = Failed(502, self._refused(401, content))  # theirs; asking again
                refused.retry = False  # with the same key changes nothing (a 403 can be a
                raise refused  # policy's answer to this request: passed on as it is)
            return Response(content, status_code=upstream.status_code, headers=headers)
        streamed = Streamed(
            upstream.status_code,
            {**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        streamed.body = self._relay(upstream, first, chunks, streamed, ends)
        return streamed

    async def _head(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self.http.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise Failed(0, f"timed out ({type(exc).__name__})", connection=True) from exc
        except httpx.HTTPError as exc:
            why = self._clean(f"{type(exc).__name__}: {exc}".rstrip(": "))
            raise Failed(0, f"cannot connect ({why})", connection=True) from exc

    async def _whole(self, upstream: httpx.Response, inflater: Inflater) -> bytes:
        """A whole answer, decoded, up to ``max_answer_size``."""
        cap = self.spec.max_answer_size
        got = bytearray()
        async for raw in upstream.aiter_raw():
            for piece in inflater.feed(raw):
                got += piece
                if len(got) > cap:
                    raise Failed(
                        502,
                        f"its answer is larger than {_mib(cap)} once decoded (the "
                        f"`max_answer_size` of {self.name}; a compressed answer that inflates "
                        "without end?); raise `max_answer_size` for "
                        f"{self.name} in the profile if its answers are that large",
                    )
        return bytes(got)

    async def _decoded(
        self, upstream: httpx.Response, inflater: Inflater
    ) -> AsyncGenerator[bytes, None]:
        async for raw in upstream.aiter_raw():
            for piece in inflater.feed(raw):
                yield piece

    async def _relay(
        self,
        upstream: httpx.Response,
        first: bytes,
        chunks: AsyncGenerator[bytes, None],
        streamed: Streamed,
        ends: float,
    ) -> AsyncGenerator[bytes, None]:
        cut: str | None = None
        status = upstream.status_code
        sent, tail = len(first), first[-2:]
        try:
            yield first
            while True:
                try:
                    # the deadline around the read only: a timeout around a yield would
                    # cancel whatever the reader of this stream awaits meanwhile
                    async with asyncio.timeout_at(ends):
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                sent, tail = sent + len(chunk), (tail + chunk)[-2:]
                yield chunk
        except (httpx.HTTPError, Undecodable, TimeoutError) as exc:
            status = 504 if isinstance(exc, TimeoutError) else 502
            cut = f"{type(exc).__name__} after {sent} bytes"
            # cut inside an event: end it first, so the error event is read on its own
            yield (b"" if tail == b"\n\n" else b"\n\n") + self._cut_event(sent, exc)
        finally:
            await chunks.aclose()
            await upstream.aclose()
            streamed.status, streamed.cut = status, cut

    def _cut_event(self, sent: int, exc: Exception) -> bytes:
        """The error event that ends a stream cut after its first byte."""
        if isinstance(exc, TimeoutError):
            why = f"it took longer than its deadline of {self.spec.deadline:g}s"
            fix = f"raise `deadline` for {self.name} in the profile if its answers take that long"
        else:
            why = str(exc) if isinstance(exc, Undecodable) else type(exc).__name__
            fix = "send the request again (another deployment answers if this one stays down)"
        msg = (
            f"the stream from {self.name} ({self.shown_url}) was cut after {sent} bytes "
            f"({why}); the answer is incomplete. Fix: {fix}"
        )
        return sse_error(msg, "upstream_error", "stream_cut")
