"""A key's limits, and the counters that hold them: requests and tokens per minute, tokens
per day, requests in flight, and budgets of tokens and compute seconds per period.

``Meter`` is the one small interface the door and the request log use (``admit`` before a
request, ``spent`` after it, ``release`` when its answer is over); its counters live in this
process and are rebuilt at start from the request log in the state.db (SQLite: each request's
row carries its key), so they survive a restart with nothing else to keep. A fleet can put
the same interface over a shared store.

Tokens and budgets are checked before a request (the request that crosses the line finishes;
the next one gets 429). The rpm counts the requests a key was let make, not its refusals.
Periods reset at 00:00 UTC (``day``; ``month``: on the 1st).
"""

from __future__ import annotations

import calendar
import math
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

from smackctl.errors import RateLimited, UsageError

__all__ = ["Limits", "Meter", "period_start"]

PERIODS = ("day", "month", "none")
MINUTE = 60.0
DAY = 86400


@dataclass(frozen=True)
class Limits:
    rpm: int | None = None
    tpm: int | None = None
    tokens_per_day: int | None = None
    max_parallel: int | None = None
    budget_tokens: int | None = None
    budget_seconds: float | None = None
    budget_usd: float | None = None
    period: str = "month"

    @classmethod
    def of(cls, raw: dict[str, Any]) -> Limits:
        """From a key's stored or asked-for settings; what is not a limit is refused."""
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(raw) - known):
            raise UsageError(f"unknown limit {unknown[0]!r}", f"limits are: {', '.join(known)}")
        for name, value in raw.items():
            if name == "period":
                if value not in PERIODS:
                    raise UsageError(f"period {value!r} is unknown", "use day, month or none")
            elif value is not None and (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 < value < math.inf  # NaN too
            ):
                raise UsageError(f"limit {name} must be a number above 0", "leave it out for none")
        return cls(**raw)

    def stored(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and v != Limits.period}

    def any(self) -> bool:
        return any(v is not None for k, v in asdict(self).items() if k != "period")


def period_start(period: str, now: float) -> float:
    """When the period that holds ``now`` began (UTC); 0 for ``none``."""
    if period == "none":
        return 0.0
    if period == "day":
        return now // DAY * DAY
    t = time.gmtime(now)
    return float(calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0)))


def _next(period: str, now: float) -> float | None:
    if period == "none":
        return None
    if period == "day":
        return period_start("day", now) + DAY
    t = time.gmtime(now)
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return float(calendar.timegm((year, month, 1, 0, 0, 0)))


#: (unix time, tokens, seconds, cost) of each request of a key the log holds since a time
History = Callable[[str, float], list[tuple[float, int, float, float]]]


class Meter:
    """The counters of every key with limits (``now``: a clock, for the tests)."""

    def __init__(self, history: History | None = None, now: Callable[[], float] = time.time):
        self.now = now
        #: per key: (time, tokens) of its requests in the last minute
        self._minute: dict[str, deque[list[float]]] = {}
        self._in_flight: Counter[str] = Counter()
        #: per key: tokens since UTC midnight, and (period start, tokens, seconds, cost)
        self._day: dict[str, tuple[float, int]] = {}
        self._spent: dict[str, tuple[float, int, float, float]] = {}
        self._history = history
        self._rebuilt: dict[tuple[str, str], bool] = {}

    def _warm(self, name: str, limits: Limits) -> None:
        """Counters for a key seen first since the start: from the request log."""
        if self._history is None or self._rebuilt.get((name, limits.period)):
            return
        self._rebuilt[(name, limits.period)] = True
        now = self.now()
        since = min(period_start(limits.period, now), now - DAY, period_start("day", now))
        rows = self._history(name, since)
        minute = self._minute.setdefault(name, deque())
        minute.extend([at, tokens] for at, tokens, _, _ in rows if at > now - MINUTE)
        day0, p0 = period_start("day", now), period_start(limits.period, now)
        self._day[name] = (day0, sum(t for at, t, _, _ in rows if at >= day0))
        self._spent[name] = (
            p0,
            sum(t for at, t, _, _ in rows if at >= p0),
            sum(s for at, _, s, _ in rows if at >= p0),
            sum(c for at, _, _, c in rows if at >= p0),
        )

    def admit(self, name: str, limits: Limits) -> None:
        """Let a request of the key in (counted), or raise RateLimited with when to ask again."""
        if not limits.any():
            return
        self._warm(name, limits)
        now = self.now()
        minute = self._minute.setdefault(name, deque())
        while minute and minute[0][0] <= now - MINUTE:
            minute.popleft()
        heads = self.headers(name, limits)
        oldest = minute[0][0] + MINUTE - now if minute else 0.0
        day_tokens = self._tokens_today(name, now)
        start, tokens, seconds, cost = self._period(name, limits, now)
        reset = _next(limits.period, now)
        over = [
            (limits.rpm is not None and len(minute) >= limits.rpm,
             f"{limits.rpm} requests per minute", oldest),
            (limits.tpm is not None and sum(int(t) for _, t in minute) >= limits.tpm,
             f"{limits.tpm} tokens per minute", oldest),
            (limits.max_parallel is not None and self._in_flight[name] >= limits.max_parallel,
             f"{limits.max_parallel} requests at a time", 1.0),
            (limits.tokens_per_day is not None and day_tokens >= limits.tokens_per_day,
             f"{limits.tokens_per_day} tokens per day", period_start("day", now) + DAY - now),
            (limits.budget_tokens is not None and tokens >= limits.budget_tokens,
             f"a budget of {limits.budget_tokens} tokens per {limits.period}",
             (reset - now) if reset else math.inf),
            (limits.budget_seconds is not None and seconds >= limits.budget_seconds,
             f"a budget of {limits.budget_seconds} compute seconds per {limits.period}",
             (reset - now) if reset else math.inf),
            (limits.budget_usd is not None and cost >= limits.budget_usd,
             f"a budget of {limits.budget_usd} USD per {limits.period}",
             (reset - now) if reset else math.inf),
        ]  # fmt: skip
        for hit, what, wait in over:
            if hit:
                when = "never (the budget has no period)" if math.isinf(wait) else f"{wait:.0f}s"
                raise RateLimited(
                    f"key {name} is over its limit of {what}; it may ask again in {when}",
                    "wait for Retry-After, or ask an admin for a higher limit "
                    f"(`smackctl keys show {name}` shows what is used)",
                    max(1.0, wait) if not math.isinf(wait) else 86400.0,
                    heads,
                )
        minute.append([now, 0])
        self._in_flight[name] += 1

    def release(self, name: str) -> None:
        if self._in_flight[name] > 0:
            self._in_flight[name] -= 1

    def spent(
        self, name: str, tokens: int, seconds: float, limits: Limits, cost: float = 0.0
    ) -> None:
        """What a request of the key took, once it is over."""
        if not limits.any():
            return
        self._warm(name, limits)
        now = self.now()
        minute = self._minute.get(name)
        if minute:
            minute[-1][1] += tokens
        day0, day_tokens = self._day.get(name, (period_start("day", now), 0))
        if day0 != period_start("day", now):
            day0, day_tokens = period_start("day", now), 0
        self._day[name] = (day0, day_tokens + tokens)
        start, total, secs, spent = self._period(name, limits, now)
        self._spent[name] = (start, total + tokens, secs + seconds, spent + cost)

    def _tokens_today(self, name: str, now: float) -> int:
        day0, tokens = self._day.get(name, (0.0, 0))
        return tokens if day0 == period_start("day", now) else 0

    def _period(self, name: str, limits: Limits, now: float) -> tuple[float, int, float, float]:
        start = period_start(limits.period, now)
        begun, tokens, seconds, cost = self._spent.get(name, (start, 0, 0.0, 0.0))
        return (start, tokens, seconds, cost) if begun == start else (start, 0, 0.0, 0.0)

    def used(self, name: str, limits: Limits) -> dict[str, Any]:
        """What the key used and has left, and when its period resets (``keys show``)."""
        self._warm(name, limits)
        now = self.now()
        minute = [m for m in self._minute.get(name, ()) if m[0] > now - MINUTE]
        _, tokens, seconds, cost = self._period(name, limits, now)
        return {
            "requests_last_minute": len(minute),
            "tokens_last_minute": int(sum(t for _, t in minute)),
            "tokens_today": self._tokens_today(name, now),
            "in_flight": self._in_flight[name],
            "period": limits.period,
            "period_tokens": tokens,
            "period_seconds": round(seconds, 3),
            "period_usd": round(cost, 6),
            "next_reset": _next(limits.period, now),
        }

    def headers(self, name: str, limits: Limits) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers for the key, as of now."""
        now = self.now()
        minute = [m for m in self._minute.get(name, ()) if m[0] > now - MINUTE]
        reset = f"{max(0.0, minute[0][0] + MINUTE - now):.0f}s" if minute else "0s"
        out = {}
        if limits.rpm is not None:
            out["x-ratelimit-limit-requests"] = str(limits.rpm)
            out["x-ratelimit-remaining-requests"] = str(max(0, limits.rpm - len(minute)))
            out["x-ratelimit-reset-requests"] = reset
        if limits.tpm is not None:
            used = int(sum(t for _, t in minute))
            out["x-ratelimit-limit-tokens"] = str(limits.tpm)
            out["x-ratelimit-remaining-tokens"] = str(max(0, limits.tpm - used))
            out["x-ratelimit-reset-tokens"] = reset
        return out
