"""A runner's ``parallel`` slots and the queue of requests waiting for one.

The queue is bounded by memory, not by a small count: every waiting request holds its body
and its connection, so the supervisor's whole queue may hold ``memory.queue`` bytes (the
profile's; 256 MiB by default: 4,096 small requests at 64 KiB each), whatever the model. A
model's ``max_queue`` adds a count of its own where one is wanted. A request that cannot
queue gets 503 with a ``Retry-After`` from the model's measured service time: when a slot
is expected to be free for it.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable

from smackctl.errors import QueueFull

__all__ = ["QUEUED_OVERHEAD", "QueueBudget", "Slots"]

#: what a waiting request costs besides its body: the coroutine, its buffers, its socket
QUEUED_OVERHEAD = 64 * 1024


class QueueBudget:
    """The memory the supervisor's waiting requests may hold together (``limit()`` bytes)."""

    def __init__(self, limit: Callable[[], int]) -> None:
        self.limit = limit
        self.held = 0
        self.waiting = 0

    def take(self, size: int) -> bool:
        cost = size + QUEUED_OVERHEAD
        if self.held + cost > self.limit():
            return False
        self.held += cost
        self.waiting += 1
        return True

    def give(self, size: int) -> None:
        self.held -= size + QUEUED_OVERHEAD
        self.waiting -= 1


class Slots:
    """``parallel`` slots with a FIFO queue in front of them.

    A waiter that is cancelled (its client went away) leaves the queue and never holds a
    slot. ``served(seconds)`` keeps a moving average of how long a slot is held, for the
    ``Retry-After`` of a refusal.
    """

    def __init__(
        self, parallel: int, max_queue: int | None = None, budget: QueueBudget | None = None
    ) -> None:
        self.parallel = parallel
        self.max_queue = max_queue
        self.budget = budget
        self.busy = 0
        #: seconds a slot is held, on average (a moving average; 1 s until measured)
        self.service = 1.0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def expected_wait(self, ahead: int | None = None) -> float:
        """Seconds until a slot is free for a request with ``ahead`` requests before it."""
        ahead = self.queued if ahead is None else ahead
        return math.ceil((ahead + 1) / self.parallel) * self.service

    def served(self, seconds: float) -> None:
        self.service += 0.2 * (seconds - self.service)

    async def acquire(self, size: int = 0) -> None:
        """A slot, once one is free; ``size``: the bytes the request holds while it waits."""
        if self.busy < self.parallel and not self._waiters:
            self.busy += 1
            return
        if self.max_queue is not None and len(self._waiters) >= self.max_queue:
            raise self._full(
                f"the queue is full ({self.max_queue} waiting, {self.busy} running)",
                "retry after the time in `Retry-After`, or raise `max_queue`/`parallel` for "
                "this model",
            )
        if self.budget is not None and not self.budget.take(size):
            raise self._full(
                f"the supervisor's queue memory is full ({self.budget.waiting} requests "
                f"waiting, {self.budget.held / 2**20:.0f} MiB)",
                "retry after the time in `Retry-After`, or raise `memory.queue` in the profile",
            )
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut in self._waiters:
                self._waiters.remove(fut)
            elif fut.done() and not fut.cancelled():
                self._release_one()  # the slot was handed to us as we were cancelled
            raise
        finally:
            if self.budget is not None:
                self.budget.give(size)

    def _full(self, message: str, hint: str) -> QueueFull:
        exc = QueueFull(message, hint)
        exc.retry_after = self.expected_wait()
        return exc

    def release(self) -> None:
        self._release_one()

    def fail_waiters(self, exc: BaseException) -> int:
        """Every request still waiting for a slot gets ``exc`` instead (a stop whose drain ran
        out of time); returns how many there were."""
        failed = 0
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(exc)
                failed += 1
        return failed

    def _release_one(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot passes straight to the next waiter
                return
        self.busy -= 1
