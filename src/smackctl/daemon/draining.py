"""A stop's drain, for the scheduler: no new request admitted, those in flight and queued
waited for, and when the time runs out, every answer still going cut cleanly (a mixin of
``Scheduler``: the state it reads is the scheduler's own)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from smackctl.errors import ShuttingDown

if TYPE_CHECKING:
    from .registry import Managed

__all__ = ["Draining"]


class Draining:
    accepting: bool
    #: set once a stop cut what was still running (the relay then says so)
    cut: asyncio.Event
    #: the cut was `stop --force`'s, not a drain's that ran out of time (the errors say so)
    forced: bool = False
    _idle: asyncio.Event

    if TYPE_CHECKING:

        @property
        def models(self) -> dict[str, Managed]: ...

    async def drain(self, timeout: float) -> bool:
        """Stop admitting; wait until no request is in flight or queued. True if drained."""
        self.accepting = False
        return await self.drain_models(None, timeout)

    def busy(self) -> tuple[int, int]:
        """(requests in flight, requests queued for a slot)."""
        running = sum(m.in_flight for m in self.models.values())
        queued = sum(m.runner.slots.queued for m in self.models.values() if m.runner)
        return running, queued

    def cut_now(self, forced: bool = False) -> tuple[int, int]:
        """The drain ran out of time, or there is none (``forced``: `stop --force`): queued
        requests get ShuttingDown, and the runners are killed, so that every answer still
        being read ends at once; the proxy then sends each client an error (a stream: an
        error event and the end of its body), never a torn connection. Returns (answers
        cut, queued requests refused)."""
        self.forced = forced
        self.cut.set()
        running, _ = self.busy()
        refused = 0
        why = ("was stopped at once (`smackctl stop --force`, or a second stop signal)" if forced
               else "is stopping and its drain ran out of time")  # fmt: skip
        for m in self.models.values():
            if m.runner is not None:
                stopping = ShuttingDown(
                    f"the supervisor {why} before this request's turn came",
                    "send it again once the supervisor is back (`smackctl start`)",
                )
                refused += m.runner.slots.fail_waiters(stopping)
                if m.in_flight:
                    m.runner.kill()
        return running, refused

    async def drain_models(self, names: Iterable[str] | None, timeout: float = 300.0) -> bool:
        """Wait until the named models (None: all) have nothing in flight or queued; False
        when ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        wanted = set(self.models) if names is None else set(names)
        while any(
            (m := self.models.get(n)) is not None
            and (m.in_flight or (m.runner is not None and m.runner.slots.queued))
            for n in wanted
        ):
            if time.monotonic() > deadline:
                return False
            await self._wait_idle_change()
        return True

    async def _wait_idle_change(self) -> None:
        self._idle.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), 1.0)
