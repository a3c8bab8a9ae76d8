"""A circuit breaker per deployment, and the retry delays in front of it.

closed     requests pass; it opens after ``CONSECUTIVE`` connection failures in a row, or when
           more than half of at least ``MIN_REQUESTS`` requests of the last ``WINDOW`` seconds
           failed (a connection error, a timeout, a 5xx or a 429; a 4xx is the request's fault)
open       no request passes for ``open_for`` seconds
half-open  one probe passes (a request, or the health check's probe when none comes); its
           result closes the breaker or opens it again

The clock is injected (``now``), so the tests step it; every change goes to ``on_change``
(a log line, an event and the metrics) with the reason.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Literal

__all__ = ["Breaker", "backoff"]

State = Literal["closed", "open", "half-open"]

CONSECUTIVE = 3
MIN_REQUESTS = 5
WINDOW = 60.0


def backoff(attempt: int, rand: Callable[[], float], base: float = 0.5, cap: float = 8.0) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base·2^attempt)]."""
    return rand() * min(cap, base * 2.0**attempt)


class Breaker:
    def __init__(
        self,
        name: str,
        open_for: float = 30.0,
        now: Callable[[], float] = time.monotonic,
        on_change: Callable[[Breaker, State, str], None] | None = None,
    ) -> None:
        self.name, self.open_for, self.now = name, open_for, now
        self.on_change = on_change
        self.state: State = "closed"
        self.since = time.time()  # wall time, for people
        self.why = ""
        self._opened_at = 0.0
        self._probing = False
        self._in_a_row = 0
        self._recent: deque[tuple[float, bool]] = deque()

    def _become(self, state: State, why: str) -> None:
        old, self.state, self.why, self.since = self.state, state, why, time.time()
        if state == "open":
            self._opened_at = self.now()
        if state != "half-open":
            self._probing = False
        if self.on_change is not None:
            self.on_change(self, old, why)

    def allows(self) -> bool:
        """Whether a request may go now; in half-open, True once (the probe)."""
        if self.state == "open" and self.now() - self._opened_at >= self.open_for:
            self._become("half-open", f"{self.open_for:g}s open: one probe decides")
        if self.state == "half-open":
            if self._probing:
                return False
            self._probing = True
            return True
        return self.state == "closed"

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through."""
        if self.state != "open":
            return 0.0
        return max(0.0, self.open_for - (self.now() - self._opened_at))

    def success(self) -> None:
        self._in_a_row = 0
        self._note(True)
        if self.state == "half-open":
            self._recent.clear()
            self._become("closed", "the probe succeeded")

    def failure(self, why: str, connection: bool) -> None:
        self._in_a_row = self._in_a_row + 1 if connection else 0
        self._note(False)
        if self.state == "half-open":
            self._become("open", f"the probe failed: {why}")
        elif self.state == "closed":
            failed = sum(1 for _, ok in self._recent if not ok)
            if self._in_a_row >= CONSECUTIVE:
                self._become("open", f"{self._in_a_row} connection failures in a row: {why}")
            elif len(self._recent) >= MIN_REQUESTS and failed * 2 > len(self._recent):
                self._become(
                    "open",
                    f"{failed} of the last {len(self._recent)} requests failed in "
                    f"{WINDOW:g}s: {why}",
                )

    def forgo(self) -> None:
        """A probe that was let through but never sent (the request was refused first)."""
        self._probing = False

    def _note(self, ok: bool) -> None:
        t = self.now()
        self._recent.append((t, ok))
        while self._recent and self._recent[0][0] < t - WINDOW:
            self._recent.popleft()

    def view(self) -> dict[str, object]:
        failed = sum(1 for _, ok in self._recent if not ok)
        return {
            "state": self.state,
            "since": self.since,
            "why": self.why,
            "recent_requests": len(self._recent),
            "recent_failures": failed,
            "retry_in": round(self.retry_in(), 3),
        }
