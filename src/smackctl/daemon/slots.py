"""A runner's ``parallel`` slots and the queue of requests waiting for one.

The queue is bounded by memory, not by a small count: every waiting request holds its body
and its connection, so the supervisor's whole queue may hold ``memory.queue`` bytes (the
profile's; 256 MiB by default: 4,096 small requests at 64 KiB each), whatever the model. A
model's ``max_queue`` adds a count of its own where one is wanted. A request that cannot
queue gets 503 with a ``Retry-After`` from the model's measured service time: when a slot
is expected to be free for it.

Waiting requests are served by priority (``interactive`` before ``batch``, the key's or the
request's: ``PRIORITY``) with ageing, so batch work is never starved (``pick``); a request
with a deadline (``DEADLINE``) leaves the queue when it passes, with a 504.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar

from smackctl.errors import DeadlineExceeded, QueueFull

__all__ = ["DEADLINE", "PRIORITY", "QUEUED_OVERHEAD", "QueueBudget", "Slots", "pick"]

#: what a waiting request costs besides its body: the coroutine, its buffers, its socket
QUEUED_OVERHEAD = 64 * 1024
#: the priority of the request being served: ``interactive`` or ``batch`` (set by its route)
PRIORITY: ContextVar[str] = ContextVar("smackctl_priority", default="interactive")
#: the loop time past which the request being served is given up (None: no deadline)
DEADLINE: ContextVar[float | None] = ContextVar("smackctl_deadline", default=None)
#: a batch request first in its queue goes before interactive ones once it has waited this
#: many of the model's service times (and at least ``AGE_MIN`` seconds)
AGE_SERVICES = 8
AGE_MIN = 5.0


def pick(interactive_since: float | None, batch_since: float | None, now: float,
         service: float) -> str | None:  # fmt: skip
    """Which queue the next free slot goes to, from when the first request of each began to
    wait (None: that queue is empty): ``interactive``, unless the first batch request has
    waited past its age limit (``AGE_SERVICES`` service times), so batch is never starved.
    ``Slots`` gives as ``batch_since`` the later of that and the last time an aged batch
    request went first: one aged batch request per age limit, never a run of them."""
    if batch_since is None:
        return None if interactive_since is None else "interactive"
    if interactive_since is None:
        return "batch"
    aged = now - batch_since >= max(AGE_MIN, AGE_SERVICES * service)
    return "batch" if aged else "interactive"


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
    """``parallel`` slots with two FIFO queues in front of them (interactive, batch).

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
        #: per priority: (loop time it began to wait, its future)
        self._queues: dict[str, deque[tuple[float, asyncio.Future[None]]]] = {
            "interactive": deque(),
            "batch": deque(),
        }
        #: when an aged batch request last went before interactive ones (its age restarts)
        self._aged_at = -math.inf

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def queued_by_priority(self) -> dict[str, int]:
        return {p: len(q) for p, q in self._queues.items()}

    def place(self) -> dict[str, object]:
        """Where a request of this task's priority would wait now: its place in the line,
        its priority, and the expected wait (the events say it while it waits)."""
        priority = "batch" if PRIORITY.get() == "batch" else "interactive"
        ahead = len(self._queues["interactive"]) + (
            len(self._queues["batch"]) if priority == "batch" else 0
        )
        return {"position": ahead + 1, "priority": priority,
                "expected_wait": round(self.expected_wait(ahead), 3)}  # fmt: skip

    def expected_wait(self, ahead: int | None = None) -> float:
        """Seconds until a slot is free for a request with ``ahead`` requests before it."""
        ahead = self.queued if ahead is None else ahead
        return math.ceil((ahead + 1) / self.parallel) * self.service

    def served(self, seconds: float) -> None:
        self.service += 0.2 * (seconds - self.service)

    async def acquire(
        self, size: int = 0, on_wait: Callable[[dict[str, object]], None] | None = None
    ) -> None:
        """A slot, once one is free; ``size``: the bytes the request holds while it waits;
        ``on_wait(place)``: told where it waits, once it is in the queue."""
        if self.busy < self.parallel and not self.queued:
            self.busy += 1
            return
        if self.max_queue is not None and self.queued >= self.max_queue:
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
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        entry = (loop.time(), fut)
        place = self.place() if on_wait is not None else None
        queue = self._queues["batch" if PRIORITY.get() == "batch" else "interactive"]
        queue.append(entry)
        if on_wait is not None and place is not None:
            on_wait(place)
        deadline = DEADLINE.get()
        try:
            if deadline is None:
                await fut
            else:
                await asyncio.wait_for(asyncio.shield(fut), max(0.0, deadline - loop.time()))
        except (asyncio.CancelledError, TimeoutError) as exc:
            if entry in queue:
                queue.remove(entry)
                fut.cancel()
            elif fut.done() and not fut.cancelled() and fut.exception() is None:
                self._release_one()  # the slot was handed to us as we gave up
            if isinstance(exc, TimeoutError):
                raise DeadlineExceeded(
                    f"the request's deadline passed while it waited for a slot "
                    f"({self.queued} still waiting, {self.busy} running)",
                    "give it a longer X-Smackctl-Deadline, or send it when the model is less busy",
                ) from None
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
        for queue in self._queues.values():
            while queue:
                _, fut = queue.popleft()
                if not fut.done():
                    fut.set_exception(exc)
                    failed += 1
        return failed

    def _release_one(self) -> None:
        now = asyncio.get_running_loop().time()
        while True:
            first, batch = (q[0][0] if q else None for q in self._queues.values())
            if batch is not None:
                batch = max(batch, self._aged_at)
            which = pick(first, batch, now, self.service)
            if which is None:
                break
            if which == "batch" and first is not None:
                self._aged_at = now  # aged past interactive ones: the next waits its turn
            _, fut = self._queues[which].popleft()
            if not fut.done():
                fut.set_result(None)  # the slot passes straight to the next waiter
                return
        self.busy -= 1
