"""The one place a request is counted once it is over, whoever answered it (a runner, a
server elsewhere) or refused it: its log line, the metrics, the usage log's row, and the
tokens its model produced. And the one reading of token counts from an answer.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from smackctl.wire import events, sse

from .activity import Activity
from .keys import CALLER, Key

if TYPE_CHECKING:
    from smackctl.config import Price

    from .limits import Limits, Meter
    from .metrics import Metrics
    from .store import Store

__all__ = ["Usage", "counted", "tokens_in_stream", "tokens_of", "without_usage_event"]

log = logging.getLogger("smackctl.requests")

#: a token count above this is no count (SQLite's INTEGER and any real answer are far below)
_MAX_COUNT = 2**53


def counted(value: Any) -> int | None:
    """A token count as an answer gave it: a whole number ≥ 0, else unknown (a server
    elsewhere may send a negative one, or a string)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _MAX_COUNT:
        return value
    return None


def tokens_of(data: Any) -> tuple[int | None, int | None]:
    """Tokens in and out of an answer or an event: OpenAI's ``usage`` (prompt/completion
    tokens), or Anthropic's and the Responses API's (input/output tokens, maybe under
    ``message`` or ``response``); what is not a count is unknown."""
    holders = (data, data.get("message"), data.get("response")) if isinstance(data, dict) else ()
    for holder in holders:
        usage = holder.get("usage") if isinstance(holder, dict) else None
        if isinstance(usage, dict):
            return (
                counted(usage.get("prompt_tokens", usage.get("input_tokens"))),
                counted(usage.get("completion_tokens", usage.get("output_tokens"))),
            )
    return None, None


def tokens_in_stream(chunk: bytes) -> tuple[int | None, int | None] | None:
    """The counts the events of ``chunk`` (whole events) carry, a later event's count over
    an earlier one's (Anthropic's come in two events: the tokens in, then out), or None when
    none carries a usage."""
    found: tuple[int | None, int | None] | None = None
    if b'"usage"' in chunk:
        for ev in events(chunk):
            got_in, got_out = tokens_of(ev.json())
            if (got_in, got_out) != (None, None):
                was_in, was_out = found or (None, None)
                found = (was_in if got_in is None else got_in,
                         was_out if got_out is None else got_out)  # fmt: skip
    return found


def without_usage_event(chunk: bytes) -> bytes:
    """``chunk`` (whole events) without OpenAI's closing usage event (``choices: []``): for
    a client that did not ask for it."""
    kept = [ev for ev in events(chunk) if not _usage_only(ev.json())]
    return b"".join(sse(ev.data, ev.event, ev.id) for ev in kept)


def _usage_only(data: Any) -> bool:
    return isinstance(data, dict) and data.get("choices") == [] and "usage" in data


class Usage:
    """``record`` a request that is over. ``add_tokens(model, n)``: the scheduler's count of
    a model's tokens (it owns its models' state)."""

    def __init__(
        self,
        store: Store,
        metrics: Metrics | None = None,
        add_tokens: Callable[[str, int], None] | None = None,
        meter: Meter | None = None,
        price_of: Callable[[str], Price | None] = lambda name: None,
        activity: Activity | None = None,
    ) -> None:
        self.store, self.metrics, self.add_tokens = store, metrics, add_tokens
        #: the keys' counters: what a request took, once it is over
        self.meter = meter
        #: a deployment's price, for the cost of what it answered
        self.price_of = price_of
        #: the page's live view of requests
        self.activity = activity or Activity()
        #: a fleet's shared counters: what a key's request took (``fleet/shared.py``)
        self.shared_spent: Callable[[str, int, Limits], None] | None = None

    def record(
        self,
        who: str | None,
        route: str,
        status: int,
        request_id: str,
        *,
        tokens_in: int | None = None,
        tokens_out: int | None = None,
        seconds: float = 0.0,
        ttft: float | None = None,
        reason: str | None = None,
        refused: bool = False,
        by: Key | None = None,
        busy: float | None = None,
    ) -> None:
        """One line in the log (``refused``: turned away before any model was asked), the
        metrics, a row of the usage log (inference routes), the model's token count; the
        key that asked is ``by``, else the one the door let in (``keys.CALLER``); ``busy``:
        the seconds a runner spent on it (its slot held; else ``seconds``), a key's compute."""
        busy = seconds if busy is None else busy
        who = who or "-"
        caller = by or CALLER.get()
        key = caller.name if caller is not None else None
        why = f" reason={' '.join(reason.split())[:300]}" if reason else ""
        if refused:
            log.info(
                "refused id=%s key=%s model=%s route=%s status=%d%s",
                request_id, key or "-", who, route, status, why,
            )  # fmt: skip
        else:
            log.info(
                "request id=%s key=%s model=%s route=%s status=%d tokens_in=%s tokens_out=%s "
                "ms=%.1f%s",
                request_id, key or "-", who, route, status, tokens_in, tokens_out,
                seconds * 1000, why,
            )  # fmt: skip
        price = None if refused else self.price_of(who)
        cost = price.of(tokens_in, tokens_out) if price is not None else None
        if caller is not None and self.meter is not None and not refused:
            tokens = (tokens_in or 0) + (tokens_out or 0)
            self.meter.spent(caller.name, tokens, busy, caller.limits, cost or 0.0)
            if self.shared_spent is not None:
                self.shared_spent(caller.name, tokens, caller.limits)
        if tokens_out and self.add_tokens is not None:
            self.add_tokens(who, tokens_out)
        if self.metrics is not None and not refused:
            self.metrics.request(who, route, status, tokens_in, tokens_out, seconds, ttft)
        if refused and not route.startswith(("/v1/", "/infill", "/tokenize")):
            return  # only inference is counted in the usage log
        self.activity.end(
            request_id, who=None if who == "-" else who, route=route, status=status, key=key,
            tokens_in=tokens_in, tokens_out=tokens_out, seconds=seconds, ttft=ttft, reason=reason,
        )  # fmt: skip
        with contextlib.suppress(Exception):  # the usage log must never fail a request
            self.store.log_request(
                who,
                route,
                status,
                tokens_in,
                tokens_out,
                seconds * 1000,
                request_id,
                key,
                cost,
                None if refused else busy * 1000,
            )
