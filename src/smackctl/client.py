"""The CLI's client of the supervisor API. Connection refused → SupervisorNotRunning.

Built on the standard library's ``http.client``: every command that talks to the supervisor
pays for its client's import, and httpx's is ~60 ms on this machine (its ``__init__`` pulls
in its whole API, httpcore, anyio, sniffio, the CA bundle's module) against ~15 ms here.
The CLI sends a handful of requests to one server, which http.client does well: one kept-
alive connection, chunked answers, TLS for an ``https://`` supervisor URL.

This is the one seam where transport errors become smackctl errors.
"""

from __future__ import annotations

import http.client
import json
import os
import select
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode, urlsplit

from smackctl import procnet
from smackctl.errors import ApiError, NotTheSupervisor, SupervisorNotRunning
from smackctl.paths import DEFAULT_HOST, DEFAULT_PORT, Paths, get_paths, pid_status
from smackctl.wire import Event, SSEParser

__all__ = ["Client", "Reply", "default_url", "get_health", "read_token"]


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


class Reply:
    """A whole answer: status, reason, body."""

    def __init__(self, status_code: int, reason: str, content: bytes) -> None:
        self.status_code, self.reason_phrase, self.content = status_code, reason, content

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


def _raise_for(r: Reply) -> None:
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


def _timed_out(url: str) -> ApiError:
    return ApiError(f"the supervisor at {url} did not answer in time", 504, "timeout")


#: the connection broke after the request went out: the answer is lost
_BROKEN = (http.client.HTTPException, ConnectionResetError, BrokenPipeError)
#: how a kept-alive connection that the server closed while it was idle fails the next
#: request; uvicorn closes only idle connections, so the request was never read: resend it
_CLOSED_WHILE_IDLE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
#: the answer is lost: the connection broke, or the supervisor took too long
_LOST = (TimeoutError, *_BROKEN)


class Client:
    """``explicit``: the user chose the URL (``--url``, ``SMACKCTL_URL``), so whatever answers
    there is theirs to trust; otherwise the token goes only to the supervisor of this state
    dir: the process that holds the pid lock, under our user, holding the listening socket
    (``_verify``)."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        timeout: float = 30.0,
        *,
        explicit: bool = False,
        cafile: str | None = None,
    ):
        self.paths = get_paths()
        self.url = (url or default_url(self.paths)).rstrip("/")
        self.token = token or read_token(self.paths)
        self.timeout = timeout
        parts = urlsplit(self.url)
        self._tls = parts.scheme == "https"
        self._netloc = parts.netloc
        self._port = parts.port or (443 if self._tls else 80)
        self._prefix = parts.path.rstrip("/")
        self._headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._conn: http.client.HTTPConnection | None = None
        self._verified = explicit or bool(os.environ.get("SMACKCTL_URL")) or not procnet.LINUX
        #: an HTTPS supervisor's own certificate, trusted for its URL (``endpoint-cert``)
        self._cafile = cafile or (None if explicit else _endpoint_cert(self.paths, self.url))

    def _verify(self) -> None:
        """Send nothing secret to a port a local program took while the supervisor was down
        (or before it bound it): the listener must be the pid-lock holder's own socket."""
        if self._verified:
            return
        pid, held = pid_status(self.paths)
        owner = procnet.holds_listener(pid, self._port) if held and pid else None
        if owner is None and not procnet.listening_inodes(self._port):
            raise SupervisorNotRunning(self.url)
        if not owner:
            raise NotTheSupervisor(self.url, pid if held else None)
        self._verified = True

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        conn = self._conn
        if conn is not None and conn.sock is not None and _readable(conn.sock):
            conn.close()  # an idle connection the supervisor closed (keep-alive timeout)
        if conn is None:
            if self._tls:
                conn = http.client.HTTPSConnection(
                    self._netloc, timeout=timeout, context=_tls_context(self._cafile)
                )
            else:
                conn = http.client.HTTPConnection(self._netloc, timeout=timeout)
            self._conn = conn
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def _send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        params: dict[str, Any] | None,
        timeout: float | None,
    ) -> http.client.HTTPResponse:
        """Send a request and read the answer's head; connection errors become ours."""
        target = self._prefix + path + (f"?{urlencode(params)}" if params else "")
        if path == "/health":
            headers = {}  # asked before anything is verified: it needs no token
        else:
            self._verify()
            headers = dict(self._headers)
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            conn = self._connection(timeout)
            reused = conn.sock is not None
            try:
                conn.request(method, target, payload, headers)
                return conn.getresponse()
            except _LOST as exc:
                if reused and attempt == 1 and isinstance(exc, _CLOSED_WHILE_IDLE):
                    self.close()
                    continue  # the supervisor closed this idle connection as we sent on it
                raise self._lost(exc) from exc
            except OSError as exc:  # refused, no route, no such host: nothing is listening
                self.close()
                raise SupervisorNotRunning(self.url) from exc
        raise AssertionError("unreachable")

    def _lost(self, exc: BaseException) -> ApiError:
        """The error for an answer lost to a timeout or a broken connection (which cannot be
        used again, so it is closed)."""
        self.close()
        return _timed_out(self.url) if isinstance(exc, TimeoutError) else _broken(self.url)

    def _read(self, resp: http.client.HTTPResponse) -> Reply:
        try:
            content = resp.read()
        except _LOST as exc:
            raise self._lost(exc) from exc
        if resp.will_close:
            self.close()
        return Reply(resp.status, resp.reason, content)

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Reply:
        resp = self._send(method, path, body, params, timeout or self.timeout)
        r = self._read(resp)
        _raise_for(r)
        return r

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return self.request("GET", path, params=params).json()

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.request("POST", path, body or {}).json()

    def health(self, timeout: float = 2.0) -> dict[str, Any] | None:
        """The supervisor's ``/health`` answer, or None when nothing healthy answers."""
        try:
            r = self._read(self._send("GET", "/health", None, None, timeout))
            return r.json() if r.status_code == 200 else None
        except (ApiError, SupervisorNotRunning, ValueError):
            return None

    def stream_lines(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Iterator[str]:
        """Lines of a streamed answer (NDJSON progress or SSE), as they arrive. ``timeout``
        is the longest wait for the next line (None: no limit)."""
        resp = self._send(method, path, body or {}, None, self.timeout)
        if resp.status >= 400:
            _raise_for(self._read(resp))
        if self._conn is not None and self._conn.sock is not None:
            self._conn.sock.settimeout(timeout)
        done = False
        pending = b""
        try:
            # read1, not readline: http.client's readline takes a chunked answer cut short
            # for its end, read1 raises IncompleteRead
            while data := resp.read1(65536):
                *lines, pending = (pending + data).split(b"\n")
                for line in lines:
                    yield line.decode().rstrip("\r")
            if resp.length:  # a Content-Length answer that stopped short
                raise http.client.IncompleteRead(pending)
            if pending:
                yield pending.decode().rstrip("\r")
            done = True
        except _LOST as exc:
            raise self._lost(exc) from exc
        finally:
            if not done or resp.will_close:  # a stream left half-read cannot be reused
                self.close()

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

    def events(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Iterator[Event]:
        """The Server-Sent Events of a streamed answer, as they arrive (``wire.SSEParser``)."""
        parser = SSEParser()
        for line in self.stream_lines(method, path, body, timeout):
            yield from parser.feed(line.encode() + b"\n")
        yield from parser.feed(b"\n")  # a last event the stream did not close

    def chat_stream(
        self, body: dict[str, Any], timeout: float | None = None
    ) -> Iterator[dict[str, Any]]:
        """Chunks of a streamed chat completion; an SSE error event raises ApiError."""
        for ev in self.events("POST", "/v1/chat/completions", {**body, "stream": True}, timeout):
            if ev.done:
                return
            chunk = ev.json()
            if not isinstance(chunk, dict):
                continue
            if "error" in chunk:
                err = chunk["error"]
                raise ApiError(
                    err.get("message", "stream error"),
                    502,
                    err.get("type", "error"),
                    err.get("code"),
                )
            yield chunk


def get_health(url: str, timeout: float = 2.0, cafile: str | None = None) -> dict[str, Any] | None:
    """The ``/health`` answer at ``url``, or None when nothing healthy answers there;
    ``cafile``: the certificate an HTTPS supervisor presents."""
    with Client(url, timeout=timeout, cafile=cafile) as c:
        return c.health(timeout)


def _endpoint_cert(paths: Paths, url: str) -> str | None:
    """The certificate of the running supervisor, when ``url`` is the one it wrote."""
    try:
        if paths.endpoint_path.read_text().strip().rstrip("/") != url:
            return None
        return paths.endpoint_cert_path.read_text().strip() or None
    except OSError:
        return None


def _tls_context(cafile: str | None) -> Any:
    """A client context: the system's CAs, or one certificate pinned (the supervisor's own,
    often self-signed and named for a LAN address: its host name is not checked then)."""
    import ssl

    if cafile is None:
        return ssl.create_default_context()
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = False
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # a CA-issued one is trusted by itself
    return ctx


def _readable(sock: Any) -> bool:
    """An idle keep-alive socket with something to read has been closed by the server."""
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True
