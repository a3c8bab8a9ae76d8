"""One set of limits across a fleet's fronts: where the NATS server has JetStream, the keys'
requests per minute, tokens per minute and tokens per day are counted in a JetStream
key-value bucket (``smackctl_limits``), so every front holds a key to one limit, not one
each. Each front's own ``limits.Meter`` still counts what it let in (and holds the key's
requests at a time and budgets, which stay per front).

- ``rpm``: the times the key's requests were let in over the last minute, one value per key,
  changed by compare-and-set (two fronts that let one in at once: one writes, the other
  reads again): exact, as the Meter's own.
- ``tpm`` and ``tokens_per_day``: the tokens of the current minute and day, added once a
  request is over; the minute's is read as a sliding window (this minute's tokens and the
  part of the last minute's still in the window).

Without JetStream (or while NATS is away) each front enforces its own limits, as alone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from smackctl.daemon.limits import DAY, MINUTE, Limits
from smackctl.errors import RateLimited
from smackctl.units import in_words

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.kv import KeyValue

__all__ = ["BUCKET", "SharedLimits"]

log = logging.getLogger("smackctl.fleet")

BUCKET = "smackctl_limits"
_TRIES = 50


def _key(kind: str, name: str, window: int) -> str:
    return f"{kind}.{name.encode().hex()}.{window}"


class SharedLimits:
    def __init__(self, connected: Callable[[], bool] = lambda: True) -> None:
        self.connected = connected  # NATS away: each front counts alone, at once
        self.kv: KeyValue | None = None
        self.error: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self, nc: Client) -> None:
        """The bucket, made by the first front that needs it; None without JetStream."""
        try:
            js = nc.jetstream(timeout=2)
            try:
                self.kv = await js.key_value(BUCKET)
            except Exception:  # noqa: BLE001 - not there yet: make it
                from nats.js.api import KeyValueConfig

                self.kv = await js.create_key_value(
                    KeyValueConfig(bucket=BUCKET, history=1, ttl=2 * DAY)
                )
            self.error = None
            log.info("fleet: the keys' limits are shared through JetStream (%s)", BUCKET)
        except Exception as exc:  # noqa: BLE001 - no JetStream: each front counts alone
            self.kv = None
            self.error = "the NATS server has no JetStream: each front holds its own limits"
            log.warning("fleet: %s (%s)", self.error, type(exc).__name__)

    async def admit(self, name: str, limits: Limits) -> None:
        """Let a request of the key in across the fleet, or raise RateLimited."""
        if self.kv is None or not (limits.rpm or limits.tpm or limits.tokens_per_day):
            return
        if not self.connected():
            return
        now = time.time()
        try:
            if limits.tpm is not None:
                used = await self._window_tokens(name, now)
                if used >= limits.tpm:
                    _refuse(name, f"{limits.tpm} tokens per minute", MINUTE - now % MINUTE)
            if limits.tokens_per_day is not None:
                today = await self._count(_key("day", name, int(now // DAY)))
                if today >= limits.tokens_per_day:
                    _refuse(name, f"{limits.tokens_per_day} tokens per day", DAY - now % DAY)
            if limits.rpm is not None:
                await self._ask(name, limits.rpm, now)
        except RateLimited:
            raise
        except Exception as exc:  # noqa: BLE001 - NATS away: the front's own limits hold
            log.warning("fleet: the shared limits of key %s could not be read: %s", name, exc)

    async def _ask(self, name: str, rpm: int, now: float) -> None:
        """Add this request to the key's minute, by compare-and-set, unless it is full."""
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        assert self.kv is not None
        key = _key("rpm", name, 0)
        for _ in range(_TRIES):
            try:
                entry = await self.kv.get(key)
                times = [t for t in json.loads(entry.value or b"[]") if t > now - MINUTE]
                revision: int | None = entry.revision
            except KeyNotFoundError:
                times, revision = [], None
            if len(times) >= rpm:
                _refuse(name, f"{rpm} requests per minute", min(times) + MINUTE - now)
            value = json.dumps([*times, now]).encode()
            try:
                if revision is None:
                    await self.kv.create(key, value)
                else:
                    await self.kv.update(key, value, last=revision)
                return
            except KeyWrongLastSequenceError:
                continue  # another front let one in meanwhile: read again
            except Exception as exc:  # noqa: BLE001 - create raced with another create
                if "wrong last sequence" in str(exc).lower():
                    continue
                raise
        raise RateLimited(
            f"key {name}'s requests per minute are busy across the fleet",
            "ask again in a moment", 1.0, {},
        )  # fmt: skip

    def spent(self, name: str, tokens: int, limits: Limits) -> None:
        """Add a request's tokens to the key's minute and day (in the background)."""
        if self.kv is None or tokens <= 0 or not (limits.tpm or limits.tokens_per_day):
            return
        if not self.connected():
            return  # lost to the fleet's count: each front holds its own meanwhile
        now = time.time()
        task = asyncio.get_running_loop().create_task(self._add(name, tokens, now))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _add(self, name: str, tokens: int, now: float) -> None:
        for key in (_key("tpm", name, int(now // MINUTE)), _key("day", name, int(now // DAY))):
            await self._increment(key, tokens)

    async def _increment(self, key: str, n: int) -> None:
        from nats.js.errors import KeyNotFoundError

        assert self.kv is not None
        for _ in range(_TRIES):
            try:
                try:
                    entry = await self.kv.get(key)
                    await self.kv.update(key, str(int(entry.value or b"0") + n).encode(),
                                         last=entry.revision)  # fmt: skip
                except KeyNotFoundError:
                    await self.kv.create(key, str(n).encode())
                return
            except Exception as exc:  # noqa: BLE001 - another front wrote first: again
                if "wrong last sequence" not in str(exc).lower():
                    log.warning("fleet: %d tokens could not be added to %s: %s", n, key, exc)
                    return  # NATS away, a timeout: not tried 50 times
        log.warning("fleet: %d tokens of a key could not be added to %s", n, key)

    async def _count(self, key: str) -> int:
        from nats.js.errors import KeyNotFoundError

        assert self.kv is not None
        try:
            return int((await self.kv.get(key)).value or b"0")
        except KeyNotFoundError:
            return 0

    async def _window_tokens(self, name: str, now: float) -> float:
        minute = int(now // MINUTE)
        this = await self._count(_key("tpm", name, minute))
        last = await self._count(_key("tpm", name, minute - 1))
        return this + last * (1 - (now % MINUTE) / MINUTE)

    def view(self) -> dict[str, Any]:
        return {"shared": self.kv is not None, "error": self.error}


def _refuse(name: str, what: str, wait: float) -> None:
    wait = max(1.0, wait) if not math.isinf(wait) else 86400.0
    raise RateLimited(
        f"key {name} is over its limit of {what} across the fleet; it may ask again in "
        f"{in_words(wait)}",
        f"ask again then, or ask an admin for a higher limit (`smackctl keys show {name}`)",
        wait,
        {},
    )
