"""The CLI's client of the supervisor API (httpx). Connection refused → SupervisorNotRunning.

This is the one seam where httpx errors become smackctl errors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import httpx

from smackctl.errors import ApiError, SupervisorNotRunning
from smackctl.paths import DEFAULT_HOST, DEFAULT_PORT, Paths, get_paths

__all__ = ["Client", "default_url", "needs_tls", "read_token"]


def default_url(paths: Paths | None = None) -> str:
    env = os.environ.get("SMACKCTL_URL")
    if env:
        return env.rstrip("/")
    paths = paths or get_paths()
    try:
        text = paths.endpoint_path.read_text().strip()
        if text:
            return text
    except OSError:
        pass
    host = os.environ.get("SMACKCTL_HOST", DEFAULT_HOST)
    port = os.environ.get("SMACKCTL_PORT", str(DEFAULT_PORT))
    return f"http://{host}:{port}"


def read_token(paths: Paths | None = None) -> str | None:
    env = os.environ.get("SMACKCTL_TOKEN")
    if env:
        return env
    try:
        return (paths or get_paths()).token_path.read_text().strip() or None
    except OSError:
        return None


def _raise_for(r: httpx.Response) -> None:
    if r.status_code < 400:
        return
    hint = None
    try:
        err = r.json()["error"]
        message, etype, code = err["message"], err.get("type", "error"), err.get("code")
        hint = err.get("hint")
        if hint:
            message = message.removesuffix(f" (fix: {hint})")
    except (ValueError, KeyError, TypeError):
        message, etype, code = r.text[:500] or r.reason_phrase, "error", None
    exc = ApiError(message, r.status_code, etype, code)
    exc.hint = hint
    raise exc


def _broken(url: str) -> ApiError:
    return ApiError(
        f"the supervisor at {url} closed the connection in the middle of an answer; "
        "see `smackctl logs`",
        502,
        "connection_broken",
    )


def needs_tls(url: str) -> bool:
    """Whether a URL is https. httpx loads the whole CA bundle when a client is made (~40 ms
    per client here) unless told not to verify; a plain-http URL never uses it."""
    return url.lower().startswith("https:")


class Client:
    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.paths = get_paths()
        self.url = (url or default_url(self.paths)).rstrip("/")
        self.token = token or read_token(self.paths)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=timeout,
            transport=transport,
            verify=needs_tls(self.url),
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.ConnectError as exc:
            raise SupervisorNotRunning(self.url) from exc
        except httpx.RemoteProtocolError as exc:
            raise _broken(self.url) from exc
        except httpx.TimeoutException as exc:
            raise ApiError(
                f"the supervisor at {self.url} did not answer in time", 504, "timeout"
            ) from exc
        _raise_for(r)
        return r

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw).json()

    def post(self, path: str, body: dict[str, Any] | None = None, **kw: Any) -> Any:
        return self.request("POST", path, json=body or {}, **kw).json()

    def health(self) -> dict[str, Any] | None:
        try:
            r = self.http.get("/health", timeout=2.0)
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None

    def stream_lines(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Iterator[str]:
        """Lines of a streamed answer (NDJSON progress or SSE), as they arrive."""
        try:
            with self.http.stream(
                method, path, json=body or {}, timeout=httpx.Timeout(30.0, read=timeout)
            ) as r:
                if r.status_code >= 400:
                    r.read()
                    _raise_for(r)
                yield from r.iter_lines()
        except httpx.ConnectError as exc:
            raise SupervisorNotRunning(self.url) from exc
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise _broken(self.url) from exc

    def ndjson(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Iterator[dict[str, Any]]:
        for line in self.stream_lines(method, path, body, timeout):
            if line.strip():
                yield json.loads(line)

    def chat_stream(
        self, body: dict[str, Any], timeout: float | None = None
    ) -> Iterator[dict[str, Any]]:
        """Chunks of a streamed chat completion; an SSE error event raises ApiError."""
        for line in self.stream_lines(
            "POST", "/v1/chat/completions", {**body, "stream": True}, timeout
        ):
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            chunk = json.loads(data)
            if "error" in chunk:
                err = chunk["error"]
                raise ApiError(
                    err.get("message", "stream error"),
                    502,
                    err.get("type", "error"),
                    err.get("code"),
                )
            yield chunk
