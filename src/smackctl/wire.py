"""What crosses the wire, in one leaf module that imports nothing of smackctl: request ids,
error bodies, and Server-Sent Events, framed and parsed.

Every stream the supervisor writes (a chat's chunks, an error event that ends one, the event
stream, the translated Anthropic and Responses streams) is framed by ``sse``; every stream
it reads (a runner's, a remote server's, the CLI's) is parsed by ``SSEParser`` or ``events``,
which take what the specification allows: ``data:`` with or without its space, several
``data:`` lines in one event, CRLF line ends, comments.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DONE",
    "Event",
    "SSEParser",
    "comment",
    "data_lines",
    "error_body",
    "events",
    "new_request_id",
    "sse",
    "sse_error",
]

#: the end of an OpenAI stream
DONE = b"data: [DONE]\n\n"


def new_request_id() -> str:
    # a UUID4: a llama_cpp.server runner (starlette-context) answers an empty 400 to any other
    # X-Request-Id
    return str(uuid.uuid4())


def error_body(message: str, error_type: str, code: str | None = None) -> bytes:
    """OpenAI's error object: ``{"error": {"message", "type", "code"}}``."""
    return json.dumps({"error": {"message": message, "type": error_type, "code": code}}).encode()


def sse(data: Any, event: str | None = None, id: int | str | None = None) -> bytes:  # noqa: A002
    """One event: ``data`` as JSON (bytes and str as they are), with its ``event:`` name and
    ``id:`` when given."""
    if isinstance(data, bytes):
        payload = data
    elif isinstance(data, str):
        payload = data.encode()
    else:
        payload = json.dumps(data).encode()
    head = b""
    if id is not None:
        head += f"id: {id}\n".encode()
    if event is not None:
        head += f"event: {event}\n".encode()
    return head + b"data: " + payload.replace(b"\n", b"\ndata: ") + b"\n\n"


def sse_error(message: str, error_type: str, code: str | None = None) -> bytes:
    """The error event a stream ends with: an OpenAI error object as its data."""
    return sse(error_body(message, error_type, code))


def data_lines(chunk: bytes) -> int:
    """How many ``data:`` lines ``chunk`` holds: a stream's events, counted without parsing
    (a runner writes one line an event)."""
    return chunk.count(b"data:")


def comment(text: str) -> bytes:
    """A comment line (a keep-alive): readers skip it."""
    return f": {text}\n\n".encode()


@dataclass(frozen=True)
class Event:
    data: bytes
    event: str | None = None
    id: str | None = None

    @property
    def done(self) -> bool:
        return self.data.strip() == b"[DONE]"

    def json(self) -> Any:
        """The data as JSON; None for ``[DONE]`` or data that is not JSON."""
        if self.done:
            return None
        try:
            return json.loads(self.data)
        except ValueError:
            return None


class SSEParser:
    """Events from bytes that come in pieces cut anywhere: ``feed`` returns the events a
    piece completes; what is left waits for the next piece."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, piece: bytes) -> list[Event]:
        self._buf += piece.replace(b"\r\n", b"\n")
        out = []
        while b"\n\n" in self._buf:
            block, self._buf = self._buf.split(b"\n\n", 1)
            if (ev := _event(block.split(b"\n"))) is not None:
                out.append(ev)
        return out

    @property
    def pending(self) -> bytes:
        """What came after the last whole event."""
        return self._buf


def events(chunk: bytes) -> list[Event]:
    """The events of ``chunk``, a piece that holds whole events (a runner writes each event
    in one piece); a last event without its blank line counts too."""
    parser = SSEParser()
    found = parser.feed(chunk)
    if parser.pending.strip() and (ev := _event(parser.pending.split(b"\n"))) is not None:
        found.append(ev)
    return found


def _event(lines: Iterable[bytes]) -> Event | None:
    data: list[bytes] = []
    name = ident = None
    for line in lines:
        if not line or line.startswith(b":"):
            continue
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value.decode(errors="replace")
        elif field == b"id":
            ident = value.decode(errors="replace")
    if not data:
        return None
    return Event(b"\n".join(data), name, ident)


#: the columns of usage's CSV after its bucket and its ``by``, in the CLI's order
USAGE_COLUMNS = ("requests", "tokens_in", "tokens_out", "errors", "avg_ms", "seconds", "cost")


def usage_csv(rows: list[dict[str, Any]], by: str, bucket: str = "day") -> str:
    """``GET /api/usage``'s rows as CSV: what ``smackctl usage --csv`` prints and the page's
    link downloads."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    fields = [bucket, by, *USAGE_COLUMNS]
    writer.writerow(fields)
    writer.writerows([[r.get(f) for f in fields] for r in rows])
    return out.getvalue()
