"""Keys: named credentials beside the operator's token, each with a scope and the models it
may use, so a second person or app gets a key of its own and what it does is theirs.

A key reads ``smk-ID-SECRET``: ID (8 hex digits) finds its row, SECRET (256 random bits) is
checked against the row's sha256 with a constant-time comparison (a slow hash buys nothing
against a secret no one can guess; the comparison is made against a dummy when no row has the
ID, so a miss takes as long as a wrong secret). Only the sha256 is stored, in the state.db.

Scopes: ``inference`` reaches the APIs clients speak (only its models) and its own usage;
``metrics`` reads ``/metrics`` and the status; ``admin`` reaches everything, as the
operator's token does. A revoked or expired key is refused at once, its streams in flight
included (the door checks the key before each piece it lets out).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from contextvars import ContextVar
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from smackctl.errors import UnknownKey, UsageError
from smackctl.units import utc_minute

from .limits import Limits

if TYPE_CHECKING:
    from .store import Store

__all__ = ["CALLER", "OPERATOR", "SCOPES", "Key", "KeyRing", "Operator", "expiry"]

SCOPES = ("inference", "metrics", "admin")
PRIORITIES = ("interactive", "batch")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TOKEN = re.compile(rb"^smk-([0-9a-f]{8})-([A-Za-z0-9_-]{43})$")
_RESERVED = {"operator", "export", "import"}  # the operator's, and routes under /api/keys/
_DUMMY = hashlib.sha256(b"no key has this").hexdigest()
_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass
class Key:
    name: str
    scope: str
    #: the model names (or aliases, or groups) it may use; ``*`` for every one
    models: tuple[str, ...] = ("*",)
    created: float = 0.0
    expires: float | None = None
    revoked: float | None = None
    id: str = ""
    digest: str = field(default="", repr=False)
    #: ``interactive`` or ``batch``: whose queued requests go first
    priority: str = "interactive"
    limits: Limits = field(default_factory=Limits)
    #: ``{"model", "sampling", "contexts": {NAME: {"model", "sampling"}}}`` (``prefs.py``)
    preferences: dict[str, Any] = field(default_factory=dict)

    def may(self, scope: str) -> bool:
        return self.scope == "admin" or self.scope == scope

    def may_use(self, *names: str) -> bool:
        """Whether any of ``names`` (a model's name, an alias, a group) is one of its own."""
        return "*" in self.models or any(n in self.models for n in names)

    def refusal(self, now: float) -> str | None:
        """Why this key is refused now, or None."""
        if self.revoked is not None:
            return f"key {self.name} was revoked at {utc_minute(self.revoked)}"
        if self.expires is not None and now >= self.expires:
            return f"key {self.name} expired at {utc_minute(self.expires)}"
        return None

    def public(self) -> dict[str, Any]:
        """What may be shown of it: never the digest."""
        return {
            "name": self.name,
            "scope": self.scope,
            "models": list(self.models),
            "created": self.created,
            "expires": self.expires,
            "revoked": self.revoked,
            "prefix": f"smk-{self.id}-",
            "priority": self.priority,
            "limits": self.limits.stored(),
            "preferences": self.preferences,
        }


#: the holder of the operator's token (or anyone, with ``--no-auth``)
OPERATOR = Key("operator", "admin")


class Operator:
    """The operator's token, shared by the door and the route that rotates it."""

    def __init__(self, token: str | None) -> None:
        self.token = token.encode() if token else None


#: the key of the request being served (None: the operator's), for the request log and the
#: limits (set at the door)
CALLER: ContextVar[Key | None] = ContextVar("smackctl_caller", default=None)


def expiry(text: str | None, now: float) -> float | None:
    """``30d``, ``12h``, ``90m``, ``2w`` from now; None or ``never`` for no expiry."""
    if text is None or text == "never":
        return None
    m = re.fullmatch(r"(\d{1,6})([mhdw])", text.strip())
    if m is None or int(m.group(1)) == 0:
        raise UsageError(
            f"expiry {text!r} is not a time from now",
            "give a number and a unit: 90m, 12h, 30d, 2w (or `never`)",
        )
    return now + int(m.group(1)) * _UNITS[m.group(2)]


class KeyRing:
    """The keys, held in memory (checked on every request) and written to the state.db."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._by_id: dict[str, Key] = {}
        self._by_name: dict[str, Key] = {}
        for row in store.keys():
            self._hold(Key(**{**row, "limits": Limits(**row["limits"])}))

    def _hold(self, key: Key) -> Key:
        """Hold ``key``; a key of that name already held is updated in place (the door and
        the streams in flight hold that object: a later revocation must reach them)."""
        old = self._by_name.get(key.name)
        if old is None:
            self._by_name[key.name] = old = key
        else:
            self._by_id.pop(old.id, None)
            for f in fields(Key):
                setattr(old, f.name, getattr(key, f.name))
        self._by_id[old.id] = old
        return old

    def check(self, given: bytes) -> Key | None:
        """The key whose token ``given`` is (revoked and expired ones too: the caller says
        why they are refused), or None."""
        m = _TOKEN.match(given)
        if m is None:
            return None
        key = self._by_id.get(m.group(1).decode())
        digest = hashlib.sha256(m.group(2)).hexdigest()
        if hmac.compare_digest(digest, key.digest if key is not None else _DUMMY):
            return key
        return None

    def get(self, name: str) -> Key:
        key = self._by_name.get(name)
        if key is None:
            raise UnknownKey(f"no key named {name!r}", "see `smackctl keys list`")
        return key

    def all(self) -> list[Key]:
        return sorted(self._by_name.values(), key=lambda k: k.created)

    def create(
        self,
        name: str,
        scope: str,
        models: list[str],
        expires: float | None,
        priority: str = "interactive",
        limits: Limits | None = None,
    ) -> tuple[Key, str]:
        """A new key and its token (shown once: only its digest is kept)."""
        if not _NAME.match(name) or name in _RESERVED:
            raise UsageError(
                f"key name {name!r} is not allowed",
                "use letters, digits, '.', '_' or '-' (up to 64; not operator, export, import)",
            )
        if scope not in SCOPES:
            raise UsageError(f"scope {scope!r} is unknown", f"use one of: {', '.join(SCOPES)}")
        if priority not in PRIORITIES:
            raise UsageError(
                f"priority {priority!r} is unknown", f"use one of: {', '.join(PRIORITIES)}"
            )
        old = self._by_name.get(name)
        if old is not None and old.revoked is None:
            raise UsageError(
                f"a key named {name} exists",
                f"pick another name, or `smackctl keys rotate {name}` for a new token",
            )
        wanted = tuple(dict.fromkeys(m.strip() for m in models if m.strip()))
        if not wanted:
            raise UsageError(
                "a key needs the models it may use", "give --models a,b, or --models '*' for all"
            )
        key = Key(name, scope, wanted, time.time(), expires, priority=priority,
                  limits=limits or Limits())  # fmt: skip
        if old is not None:  # revoked: a new key of that name, never the old one brought back
            del self._by_name[name]
            self._by_id.pop(old.id, None)
        return key, self._issue(key)

    def rotate(self, name: str) -> tuple[Key, str]:
        """A new token for the key; the old one is refused from now on."""
        old = self.get(name)
        if old.revoked is not None:
            raise UsageError(
                f"key {name} is revoked", f"create it again: `smackctl keys create {name}`"
            )
        key = replace(old)
        token = self._issue(key)
        return self._by_name[name], token

    def prefer(self, name: str, preferences: dict[str, Any]) -> Key:
        """Set the key's preferences (checked by ``prefs.check`` first)."""
        key = self.get(name)
        self.store.save_key({**_row(key), "preferences": preferences})  # written first
        key.preferences = preferences
        return key

    def exported(self) -> list[dict[str, Any]]:
        """Every key as ``config export`` writes it: its digest, never a token (there is none
        to write: only digests are kept)."""
        return [{**_row(k), "models": list(k.models)} for k in self.all()]

    def plan_import(self, rows: Any) -> list[tuple[str, str, Key]]:
        """(name, ``new`` | ``changed`` | ``same``, the key) for each exported row, checked
        whole before anything is applied; UsageError names the first row that is wrong."""
        if not isinstance(rows, list):
            raise UsageError("`keys` must be a list of keys", "use a file `config export` wrote")
        plan = []
        names: set[str] = set()
        ids: set[str] = set()
        for i, row in enumerate(rows):
            key = _imported(row, f"keys[{i}]")
            owner = self._by_id.get(key.id)
            if key.name in names or key.id in ids or (owner is not None and owner.name != key.name):
                raise UsageError(
                    f"keys[{i}] ({key.name}) has the name or the id of another key",
                    "use a file `config export` wrote, unchanged",
                )
            names.add(key.name)
            ids.add(key.id)
            old = self._by_name.get(key.name)
            what = "new" if old is None else "same" if _row(old) == _row(key) else "changed"
            plan.append((key.name, what, key))
        return plan

    def apply_import(self, plan: list[tuple[str, str, Key]]) -> None:
        """Write the keys that change in one transaction, then hold them."""
        changed = [key for _, what, key in plan if what != "same"]
        self.store.save_keys([_row(k) for k in changed])
        for key in changed:
            self._hold(key)

    def revoke(self, name: str) -> Key:
        """Refuse the key from now on: at once in memory, and in the state.db as soon as it
        takes the write (a file that refuses writes now must not keep a key alive)."""
        key = self.get(name)
        if key.revoked is None:
            key.revoked = time.time()
            self.store.save_key(_row(key), now=False)
        return key

    def _issue(self, key: Key) -> str:
        key.id = secrets.token_hex(4)
        while key.id in self._by_id:
            key.id = secrets.token_hex(4)
        secret = secrets.token_urlsafe(32)
        key.digest = hashlib.sha256(secret.encode()).hexdigest()
        self.store.save_key(_row(key))  # raises StateUnwritable before anything is held
        self._hold(key)
        return f"smk-{key.id}-{secret}"


def _imported(row: Any, where: str) -> Key:
    """A key from an exported row, every field checked."""
    from . import prefs

    fields = ("name", "scope", "models", "created", "expires", "revoked", "id", "digest",
              "priority", "limits", "preferences")  # fmt: skip
    if not isinstance(row, dict) or set(row) != set(fields):
        raise UsageError(f"{where} is not a key as `config export` writes one",
                         f"a key has: {', '.join(fields)}")  # fmt: skip
    bad = None
    if not isinstance(row["name"], str) or not _NAME.match(row["name"]) or row["name"] in _RESERVED:
        bad = "name"
    elif row["scope"] not in SCOPES:
        bad = "scope"
    elif row["priority"] not in PRIORITIES:
        bad = "priority"
    elif not isinstance(row["id"], str) or not re.fullmatch(r"[0-9a-f]{8}", row["id"]):
        bad = "id"
    elif not isinstance(row["digest"], str) or not re.fullmatch(r"[0-9a-f]{64}", row["digest"]):
        bad = "digest"
    elif (
        not isinstance(row["models"], list)
        or not row["models"]
        or not all(isinstance(m, str) for m in row["models"])
    ):
        bad = "models"
    elif not all(_time(row[f]) for f in ("expires", "revoked")) or not _time(row["created"], 0):
        bad = "created, expires or revoked"
    if bad is not None:
        raise UsageError(f"{where}.{bad} is not valid", "use a file `config export` wrote")
    if not isinstance(row["limits"], dict):
        raise UsageError(f"{where}.limits must be an object", "use a file `config export` wrote")
    return Key(
        row["name"], row["scope"], tuple(row["models"]), row["created"],
        row["expires"], row["revoked"], row["id"], row["digest"], row["priority"],
        Limits.of(row["limits"]), prefs.check(row["preferences"]),
    )  # fmt: skip


def _time(value: Any, none: Any = None) -> bool:
    """A unix time (or None where ``none`` is None)."""
    if value is None:
        return none is None
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1e11


def _row(key: Key) -> dict[str, Any]:
    return {
        "name": key.name,
        "scope": key.scope,
        "models": key.models,
        "created": key.created,
        "expires": key.expires,
        "revoked": key.revoked,
        "id": key.id,
        "digest": key.digest,
        "priority": key.priority,
        "limits": key.limits.stored(),
        "preferences": key.preferences,
    }
