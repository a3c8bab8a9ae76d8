"""The page's logins: one-time links and the sessions their cookies stand for.

A link's code is made for whoever asked (``smackctl ui``: the operator, or a key), works once
and within ``LINK_TTL``; its use makes a session, a random id in an ``HttpOnly``,
``SameSite=Strict`` cookie, with its own CSRF token that the page sends back as a header on
every change. Only digests of codes and session ids are held, so nothing in memory is a
credential that could be replayed from a dump. Sessions live in the supervisor's memory: a
restart logs everyone out (a new ``smackctl ui`` link logs in again).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from smackctl.daemon.keys import Key

__all__ = ["COOKIE", "LINK_TTL", "SESSION_TTL", "Session", "Sessions"]

COOKIE = "smackctl_session"
#: a login link works once, within this many seconds
LINK_TTL = 300.0
#: a session lasts this long from its login
SESSION_TTL = 12 * 3600.0
#: at most this many sessions and unused links are held (the oldest go first)
_MOST = 1000
#: sessions (and unused links) one key may hold: its own oldest go first, never another's
PER_KEY = 20


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass
class Session:
    """A logged-in browser: who it stands for, its CSRF token and when it ends."""

    key: Key
    #: the credential it logged in with (``door.stamp_of``): changed, the session ends
    stamp: str
    csrf: str
    expires: float
    created: float = field(default_factory=time.time)

    def csrf_ok(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.csrf.encode())


class Sessions:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._links: dict[str, tuple[Key, str, float]] = {}
        self._sessions: dict[str, Session] = {}
        self._now = clock

    def link(self, key: Key, stamp: str) -> tuple[str, float]:
        """A new one-time code for ``key``, and when it stops working."""
        self._sweep()
        _cap(self._links, key.name)
        code = secrets.token_urlsafe(32)
        expires = self._now() + LINK_TTL
        self._links[_digest(code)] = (key, stamp, expires)
        return code, expires

    def redeem(self, code: str) -> tuple[str, Session] | None:
        """The code's new session (its id for the cookie), once; None if it is unknown, used
        or expired."""
        found = self._links.pop(_digest(code), None)
        if found is None or found[2] < self._now():
            return None
        return self.open(found[0], found[1])

    def open(self, key: Key, stamp: str) -> tuple[str, Session]:
        """A session for ``key`` (a login with a key or the token on the form)."""
        self._sweep()
        _cap(self._sessions, key.name)
        sid = secrets.token_urlsafe(32)
        session = Session(key, stamp, secrets.token_urlsafe(24), self._now() + SESSION_TTL)
        self._sessions[_digest(sid)] = session
        return sid, session

    def get(self, sid: str) -> Session | None:
        """The live session of a cookie's id, or None."""
        session = self._sessions.get(_digest(sid))
        if session is None:
            return None
        if session.expires < self._now():
            self._sessions.pop(_digest(sid), None)
            return None
        return session

    def close(self, sid: str) -> None:
        self._sessions.pop(_digest(sid), None)

    def __len__(self) -> int:
        return len(self._sessions)

    def _sweep(self) -> None:
        now = self._now()
        for table in (self._links, self._sessions):
            if len(table) < _MOST // 2:
                continue
            for d in [d for d, v in table.items() if _ends(v) < now]:
                del table[d]
            while len(table) >= _MOST:  # the oldest first (dicts keep their order)
                del table[next(iter(table))]


def _cap(table: dict[str, Any], name: str) -> None:
    """Make room for one more of ``name``'s: its oldest go once it holds ``PER_KEY``."""
    mine = [d for d, v in table.items() if _key_of(v).name == name]
    for d in mine[: max(0, len(mine) - PER_KEY + 1)]:
        del table[d]


def _key_of(value: tuple[Key, str, float] | Session) -> Key:
    return value.key if isinstance(value, Session) else value[0]


def _ends(value: tuple[Key, str, float] | Session) -> float:
    return value.expires if isinstance(value, Session) else value[2]
