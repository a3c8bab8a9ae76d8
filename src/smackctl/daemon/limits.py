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
import logging
import math
import sqlite3
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

from smackctl.errors import RateLimited, UsageError
from smackctl.units import in_words

__all__ = ["Limits", "Meter", "period_start"]

log = logging.getLogger("smackctl.keys")

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
        #: per key: when its requests of the last minute were let in, and (when, tokens) of
        #: those that ended in it (a request's tokens count when it is over)
        self._asked: dict[str, deque[float]] = {}
        self._tokens: dict[str, deque[tuple[float, int]]] = {}
        self._in_flight: Counter[str] = Counter()
        #: per key: tokens since UTC midnight, and (period start, tokens, seconds, cost)
        self._day: dict[str, tuple[float, int]] = {}
        self._spent: dict[str, tuple[float, int, float, float]] = {}
        self._history = history
        self._rebuilt: set[str] = set()

    def _warm(self, name: str, limits: Limits, born: float = 0.0) -> None:
        """Counters for a key seen first since the start: from the request log (this month's
        rows, or all of them for a budget with no period; a log that cannot be read counts
        nothing, and says so)."""
        if self._history is None or name in self._rebuilt:
            return
        self._rebuilt.add(name)
        now = self.now()
        since = 0.0 if limits.period == "none" else min(period_start("month", now), now - DAY)
        try:
            rows = self._history(name, max(since, born))  # a name made anew: its own rows
        except sqlite3.Error as exc:
            log.warning("the counters of key %s start from nothing: %s", name, exc)
            return
        self._asked[name] = deque(at for at, _, _, _ in rows if at > now - MINUTE)
        self._tokens[name] = deque((at, t) for at, t, _, _ in rows if at > now - MINUTE)
        day0, p0 = period_start("day", now), period_start(limits.period, now)
        self._day[name] = (day0, sum(t for at, t, _, _ in rows if at >= day0))
        self._spent[name] = (
            p0,
            sum(t for at, t, _, _ in rows if at >= p0),
            sum(s for at, _, s, _ in rows if at >= p0),
            sum(c for at, _, _, c in rows if at >= p0),
        )

    def admit(self, name: str, limits: Limits, born: float = 0.0) -> None:
        """Let a request of the key in (counted), or raise RateLimited with when to ask again;
        ``born``: when the key was made (the log's rows of an older key of that name are not
        its own)."""
        if not limits.any():
            return
        self._warm(name, limits, born)
        now = self.now()
        asked, tokens_ = self._window(name, now)
        heads = self.headers(name, limits)
        oldest = asked[0] + MINUTE - now if asked else 0.0
        first_tokens = tokens_[0][0] + MINUTE - now if tokens_ else 0.0
        day_tokens = self._tokens_today(name, now)
        start, tokens, seconds, cost = self._period(name, limits, now)
        reset = _next(limits.period, now)
        over = [
            (limits.rpm is not None and len(asked) >= limits.rpm,
             f"{limits.rpm} requests per minute", oldest),
            (limits.tpm is not None and sum(t for _, t in tokens_) >= limits.tpm,
             f"{limits.tpm} tokens per minute", first_tokens),
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
                when = "never (the budget has no period)" if math.isinf(wait) else in_words(wait)
                raise RateLimited(
                    f"key {name} is over its limit of {what}; it may ask again in {when}",
                    "ask again then, or ask an admin for a higher limit "
                    f"(`smackctl keys show {name}` shows what is used)",
                    max(1.0, wait) if not math.isinf(wait) else 86400.0,
                    heads,
                )
        asked.append(now)
        self._in_flight[name] += 1

    def _window(self, name: str, now: float) -> tuple[deque[float], deque[tuple[float, int]]]:
        """The key's requests let in and tokens spent in the last minute (older ones gone)."""
        asked = self._asked.setdefault(name, deque())
        while asked and asked[0] <= now - MINUTE:
            asked.popleft()
        spent = self._tokens.setdefault(name, deque())
        while spent and spent[0][0] <= now - MINUTE:
            spent.popleft()
        return asked, spent

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
        self._window(name, now)[1].append((now, tokens))
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

    def used(self, name: str, limits: Limits, born: float = 0.0) -> dict[str, Any]:
        """What the key used and has left, and when its period resets (``keys show``)."""
        self._warm(name, limits, born)
        now = self.now()
        asked, spent = self._window(name, now)
        _, tokens, seconds, cost = self._period(name, limits, now)
        return {
            "requests_last_minute": len(asked),
            "tokens_last_minute": sum(t for _, t in spent),
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
        asked, spent = self._window(name, now)
        out = {}
        if limits.rpm is not None:
            out["x-ratelimit-limit-requests"] = str(limits.rpm)
            out["x-ratelimit-remaining-requests"] = str(max(0, limits.rpm - len(asked)))
            out["x-ratelimit-reset-requests"] = _reset(asked[0] if asked else None, now)
        if limits.tpm is not None:
            used = sum(t for _, t in spent)
            out["x-ratelimit-limit-tokens"] = str(limits.tpm)
            out["x-ratelimit-remaining-tokens"] = str(max(0, limits.tpm - used))
            out["x-ratelimit-reset-tokens"] = _reset(spent[0][0] if spent else None, now)
        return out


def _reset(first: float | None, now: float) -> str:
    """When the oldest of the minute leaves it, as OpenAI writes it (``12s``)."""
    return "0s" if first is None else f"{max(0.0, first + MINUTE - now):.0f}s"
