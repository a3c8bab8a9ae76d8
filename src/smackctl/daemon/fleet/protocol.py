"""The fleet's wire: NATS subjects and the JSON messages on them, version 2 (docs/fleet.md;
version 2 numbered the frames). Pure: no NATS, no supervisor.

- ``smackctl.v2.members``: each member's heartbeat (``heartbeat``), every ≤ 2 s, and at once
  when asked on ``smackctl.v2.who`` (a front that starts asks); ``"leaving": true`` once as it
  stops.
- ``smackctl.v2.loaded.<model>`` (queue group ``workers``): a request for a model, to one of
  the members that have it loaded: NATS spreads them.
- ``smackctl.v2.work.<member>``: a request for one member (placed on it: it can load the model).
- A request is a NATS message with a reply subject: its first line a JSON object of what
  it is (``v``, ``request_id``, ``route``, ``model``, ``key``: the key's name, ``priority``,
  ``deadline``: seconds left), the rest the API request's JSON (``request``). The
  answer comes back on the reply subject as frames, one message each, whose first byte says
  what it is and the next 4 its number (big-endian, from 0: a frame lost on the way, in a
  reconnect or to a slow consumer, is seen; no headers: a token's frame costs as little as
  it can): ``w`` wait (still
  working: a load, a queue, a long prompt; the member's name), ``s`` start (JSON: status,
  headers, member), ``c`` chunk (bytes of the body as the client would get them), ``e`` end
  (the body's last bytes, if any), ``a`` a whole answer (the start's JSON, a newline, the
  body: a start and an end in one message), ``x`` error (JSON: status, message, member).
- ``smackctl.v2.cancel.<member>``: the front's client went away before the answer ended; the
  message is the request's reply subject, and the member stops that request's runner.
- ``smackctl.v2.cache.clear``: ``{"model": NAME or null}``: a member cleared its response
  cache, and every member that shares it (``shared_cache.py``) clears its own the same way.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ACK_WITHIN",
    "ANY_MEMBERS",
    "CACHE_CLEAR",
    "CHUNK",
    "END",
    "ERROR",
    "MEMBERS",
    "PREFIX",
    "QUEUE",
    "SILENT_FOR",
    "START",
    "WAIT",
    "WHOLE",
    "VERSION",
    "WHO",
    "Heartbeat",
    "cancel_subject",
    "VersionMismatch",
    "loaded_subject",
    "request",
    "split_request",
    "token",
    "work_subject",
]

VERSION = 2
PREFIX = f"smackctl.v{VERSION}"
MEMBERS = f"{PREFIX}.members"
#: the members subject of every version (``smackctl.v3.members``…): to refuse in words
ANY_MEMBERS = "smackctl.*.members"
WHO = f"{PREFIX}.who"
CACHE_CLEAR = f"{PREFIX}.cache.clear"
QUEUE = "workers"
WAIT, START, CHUNK, END, ERROR = b"w", b"s", b"c", b"e", b"x"
#: a whole answer in one frame: the start's JSON, a newline, the body (one message, not two)
WHOLE = b"a"
#: a worker's first frame comes within this many seconds, or it is taken as gone
ACK_WITHIN = 2.0
#: a worker answering a request sends a frame at least this often (``wait`` while it loads
#: or queues); silent for ``SILENT_FOR``, it is taken as gone
WAIT_EVERY = 1.0
SILENT_FOR = 4.0
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def token(name: str) -> str:
    """``name`` as one token of a subject: NATS splits subjects at dots and gives ``*``,
    ``>`` and spaces meanings, so every character but letters, digits, ``_`` and ``-`` is
    written ``~XX`` (its UTF-8 bytes in hex)."""
    return _UNSAFE.sub(lambda m: "".join(f"~{b:02x}" for b in m.group().encode()), name)


def loaded_subject(model: str) -> str:
    return f"{PREFIX}.loaded.{token(model)}"


def work_subject(member: str) -> str:
    return f"{PREFIX}.work.{token(member)}"


def cancel_subject(member: str) -> str:
    return f"{PREFIX}.cancel.{token(member)}"


class VersionMismatch(ValueError):
    """A message of another version of the protocol (``name``: who sent it)."""

    def __init__(self, message: str, name: str = "") -> None:
        super().__init__(message)
        self.name = name


def request(meta: dict[str, Any], body: bytes) -> bytes:
    """A request's message: its metadata's line, then the API request's JSON (no NATS
    headers: they cost a parse on every message)."""
    return json.dumps({"v": VERSION, **meta}).encode() + b"\n" + body


def split_request(data: bytes) -> tuple[dict[str, Any], bytes]:
    """A request's metadata and body; VersionMismatch (naming both) or ValueError."""
    line, sep, body = data.partition(b"\n")
    meta = json.loads(line) if sep else None
    if not isinstance(meta, dict):
        raise ValueError("not a smackctl request")
    if meta.get("v") != VERSION:
        raise VersionMismatch(
            f"the request speaks smackctl.v{meta.get('v')}, this member smackctl.v{VERSION}: "
            "run the same smackctl version on both"
        )
    return meta, body


@dataclass
class Heartbeat:
    """What a member says of itself: its models (name → ``{"state", "loaded", "fits",
    "in_flight", "queued"}``; ``fits``: its own pre-flight estimate says it can load it
    now), its memory, its load, whether it drains."""

    name: str
    instance: str
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    memory: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    queued: int = 0
    draining: bool = False
    leaving: bool = False
    at: float = field(default_factory=time.time)
    v: int = VERSION

    def encode(self) -> bytes:
        return json.dumps({"kind": "heartbeat", **self.__dict__}).encode()

    @classmethod
    def decode(cls, data: bytes) -> Heartbeat:
        """Raises VersionMismatch (naming both versions) or ValueError."""
        raw = json.loads(data)
        if not isinstance(raw, dict) or raw.get("kind") != "heartbeat":
            raise ValueError("not a heartbeat")
        if raw.get("v") != VERSION:
            name = str(raw.get("name"))[:63]
            raise VersionMismatch(
                f"member {name!r} speaks smackctl.v{raw.get('v')}, this "
                f"supervisor smackctl.v{VERSION}: run the same smackctl version on both",
                name,
            )
        fields = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        if not isinstance(fields.get("name"), str) or not isinstance(fields.get("models"), dict):
            raise ValueError("a heartbeat needs a name and its models")
        return cls(**fields)

    @property
    def load(self) -> int:
        return self.in_flight + self.queued
