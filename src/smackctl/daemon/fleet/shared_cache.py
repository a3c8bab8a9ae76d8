"""The response cache shared by a fleet's members: where the NATS server has JetStream, an
answer a member keeps in its own cache (``gateway/cached.py``) is put in a JetStream
key-value bucket (``smackctl_cache``) too, and a member that misses in its own looks there
before it asks its runner (a hit is then kept in its own). The key is the cache's own: the
request as the runner gets it and the model's identity (its file's sha256 and load
parameters, and the API key unless the cache is ``shared``), so members share an answer
only for the same file loaded the same way.

An entry (key ``v1.<the cache's key>``) is a JSON line (``media_type``, ``expires``: the
keeping member's ``ttl``) and the answer's bytes; one past the NATS server's
``max_payload`` stays in its member's cache alone, and one not as written (another
writer's) is a miss. The bucket keeps nothing past a day nor past ``MAX_BYTES`` (the oldest
go). A lookup that NATS does not answer within ``WAIT`` is a miss; NATS away, each member's
cache is its own. ``smackctl cache clear`` on a member empties the bucket (all of it: its
entries do not say their model) and tells every member that shares
(``protocol.CACHE_CLEAR``) to clear its own cache the same way. ``fleet: {share_cache:
false}`` keeps a member's answers to itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from smackctl.daemon.limits import DAY

from .protocol import CACHE_CLEAR

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext
    from nats.js.kv import KeyValue

__all__ = ["BUCKET", "FleetCache"]

log = logging.getLogger("smackctl.fleet")

BUCKET = "smackctl_cache"
#: the bucket's size: past it the oldest answers go (a stream of its own, ``discard: old``:
#: nats-py's key-value buckets refuse new values once full)
MAX_BYTES = 512 * 2**20
#: seconds a lookup may take before it is a miss (a JetStream get on a LAN: ~1 ms)
WAIT = float(os.environ.get("SMACKCTL_FLEET_CACHE_WAIT") or 0.25)
_MEDIA = ("application/json", "text/event-stream")


class FleetCache:
    def __init__(self, connected: Callable[[], bool] = lambda: True) -> None:
        self.connected = connected
        self.kv: KeyValue | None = None
        self.largest = 0  # the largest entry the NATS server carries in one message
        self.hits = self.kept = 0  # answers found in the fleet's cache, and put there
        #: clears this member's own cache (of a model, or all): a clear said by another
        self.on_clear: Callable[[str | None], object] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._js: JetStreamContext | None = None
        self._nc: Client | None = None

    async def open(self, nc: Client) -> None:
        """The bucket, made by the first member that needs it; none without JetStream."""
        from nats.js.api import DiscardPolicy, StreamConfig

        try:
            js = self._js = nc.jetstream(timeout=2)
            try:
                self.kv = await js.key_value(BUCKET)
            except Exception:  # noqa: BLE001 - not there yet: made as nats-py makes one,
                await js.add_stream(StreamConfig(  # but for its discard policy and size
                    name=f"KV_{BUCKET}", subjects=[f"$KV.{BUCKET}.>"], allow_direct=True,
                    allow_rollup_hdrs=True, deny_delete=True, discard=DiscardPolicy.OLD,
                    duplicate_window=120.0, max_age=DAY, max_bytes=MAX_BYTES,
                    max_msg_size=nc.max_payload, max_msgs_per_subject=1,
                ))  # fmt: skip
                self.kv = await js.key_value(BUCKET)
            self.largest = nc.max_payload - 4096
            self._nc = nc
            await nc.subscribe(CACHE_CLEAR, cb=self._on_clear)
        except Exception as exc:  # noqa: BLE001 - no JetStream: each member's cache alone
            self.kv = None
            log.info("fleet: the response cache is not shared (%s)", type(exc).__name__)

    async def get(self, key: str) -> tuple[bytes, str, float] | None:
        """The fleet's answer for ``key``: its bytes, media type and expiry; or None."""
        if self.kv is None or not self.connected():
            return None
        try:
            entry = await asyncio.wait_for(self.kv.get(f"v1.{key}"), WAIT)
            head, sep, content = (entry.value or b"").partition(b"\n")
            meta = json.loads(head)
            media, expires = meta["media_type"], float(meta["expires"])
        except Exception:  # noqa: BLE001 - not there, NATS slow or away, not ours: a miss
            return None
        if not sep or media not in _MEDIA or not math.isfinite(expires) or expires < time.time():
            return None
        self.hits += 1
        return content, media, expires

    def put(self, key: str, content: bytes, media_type: str, ttl: float) -> None:
        """Keep an answer for the fleet, in the background."""
        if self.kv is None or not self.connected():
            return
        meta = {"media_type": media_type, "expires": time.time() + ttl}
        value = json.dumps(meta).encode() + b"\n" + content
        if len(value) > self.largest:
            return
        task = asyncio.get_running_loop().create_task(self._put(f"v1.{key}", value))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _put(self, key: str, value: bytes) -> None:
        assert self.kv is not None
        try:
            await self.kv.put(key, value)
            self.kept += 1
        except Exception as exc:  # noqa: BLE001 - NATS away: not shared
            log.debug("fleet: an answer was not shared: %s", exc)

    async def clear(self, model: str | None) -> int | str:
        """Empty the bucket and tell every member that shares to clear its own cache (of
        ``model``, or all): the answers the bucket held, or why it could not be cleared."""
        if self._js is None or self._nc is None or self.kv is None:
            return "the fleet's NATS server has no JetStream: nothing is shared"
        if not self.connected():
            return "the fleet's NATS server cannot be reached now: ask again once it can"
        try:
            n = int((await self.kv.status()).values)
            await self._js.purge_stream(f"KV_{BUCKET}")
            await self._nc.publish(CACHE_CLEAR, json.dumps({"model": model}).encode())
            return n
        except Exception as exc:  # noqa: BLE001 - NATS away meanwhile: said
            log.warning("fleet: the fleet's response cache could not be cleared: %s", exc)
            return f"the fleet's response cache could not be cleared ({type(exc).__name__})"

    async def _on_clear(self, msg: Msg) -> None:
        try:
            model = json.loads(msg.data).get("model")
        except (ValueError, AttributeError, RecursionError):
            return  # not one of ours
        if self.on_clear is not None and (model is None or isinstance(model, str)):
            self.on_clear(model)
