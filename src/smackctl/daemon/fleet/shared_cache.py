"""The response cache shared by a fleet's members: where the NATS server has JetStream, an
answer a member keeps in its own cache (``gateway/cached.py``) is put in a JetStream
key-value bucket (``smackctl_cache``) too, and a member that misses in its own looks there
before it asks its runner (a hit is then kept in its own). The key is the cache's own: the
request as the runner gets it and the model's identity (its file's sha256 and load
parameters, and the API key unless the cache is ``shared``), so members share an answer
only for the same file loaded the same way.

An entry is a JSON line (``media_type``, ``expires``: the keeping member's ``ttl``) and the
answer's bytes; one past the NATS server's ``max_payload`` stays in its member's cache
alone. The bucket keeps nothing past a day. A lookup that NATS does not answer within
``WAIT`` is a miss; NATS away, each member's cache is its own. ``smackctl cache clear`` on
a member clears the fleet's too (all of it: its entries do not say their model). ``fleet:
{share_cache: false}`` keeps a member's answers to itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from smackctl.daemon.limits import DAY

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.client import JetStreamContext
    from nats.js.kv import KeyValue

__all__ = ["BUCKET", "FleetCache"]

log = logging.getLogger("smackctl.fleet")

BUCKET = "smackctl_cache"
#: seconds a lookup may take before it is a miss (a JetStream get on a LAN: ~1 ms)
WAIT = 0.25


class FleetCache:
    def __init__(self, connected: Callable[[], bool] = lambda: True) -> None:
        self.connected = connected
        self.kv: KeyValue | None = None
        self.largest = 0  # the largest entry the NATS server carries in one message
        self.hits = self.kept = 0  # answers found in the fleet's cache, and put there
        self._tasks: set[asyncio.Task[None]] = set()
        self._js: JetStreamContext | None = None

    async def open(self, nc: Client) -> None:
        """The bucket, made by the first member that needs it; none without JetStream."""
        try:
            js = self._js = nc.jetstream(timeout=2)
            try:
                self.kv = await js.key_value(BUCKET)
            except Exception:  # noqa: BLE001 - not there yet: make it
                from nats.js.api import KeyValueConfig

                self.kv = await js.create_key_value(
                    KeyValueConfig(bucket=BUCKET, history=1, ttl=DAY)
                )
            self.largest = nc.max_payload - 4096
        except Exception as exc:  # noqa: BLE001 - no JetStream: each member's cache alone
            self.kv = None
            log.info("fleet: the response cache is not shared (%s)", type(exc).__name__)

    async def get(self, key: str) -> tuple[bytes, str] | None:
        """The fleet's answer for ``key`` (its bytes and media type), or None."""
        if self.kv is None or not self.connected():
            return None
        try:
            entry = await asyncio.wait_for(self.kv.get(key), WAIT)
            head, _, content = (entry.value or b"").partition(b"\n")
            meta = json.loads(head)
            if float(meta["expires"]) < time.time():
                return None
            self.hits += 1
            return content, str(meta["media_type"])
        except Exception:  # noqa: BLE001 - not there, NATS slow or away, not ours: a miss
            return None

    def put(self, key: str, content: bytes, media_type: str, ttl: float) -> None:
        """Keep an answer for the fleet, in the background."""
        if self.kv is None or not self.connected():
            return
        meta = {"media_type": media_type, "expires": time.time() + ttl}
        value = json.dumps(meta).encode() + b"\n" + content
        if len(value) > self.largest:
            return
        task = asyncio.get_running_loop().create_task(self._put(key, value))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _put(self, key: str, value: bytes) -> None:
        assert self.kv is not None
        try:
            await self.kv.put(key, value)
            self.kept += 1
        except Exception as exc:  # noqa: BLE001 - NATS away, the bucket full: not shared
            log.debug("fleet: an answer was not shared: %s", exc)

    async def clear(self) -> int | None:
        """Every answer the fleet keeps, another member's too (an answer cleared here must
        not come back from the fleet); how many, or None when it is not shared."""
        if self.kv is None or self._js is None or not self.connected():
            return None
        try:
            n = (await self.kv.status()).values
            await self._js.purge_stream(f"KV_{BUCKET}")
            return n
        except Exception as exc:  # noqa: BLE001 - NATS away: said as not cleared
            log.warning("fleet: the fleet's response cache could not be cleared: %s", exc)
            return None
