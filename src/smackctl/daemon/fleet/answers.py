"""What the front makes of a member's answer: an error frame's status and message, how an
answer that broke on its way ends, a whole answer's tokens; the responses that count an
answer however its sending ends."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from starlette.responses import Response, StreamingResponse

from smackctl.daemon.usage import tokens_of
from smackctl.wire import error_body, sse_error

if TYPE_CHECKING:
    from .front import _Attempt as Attempt

__all__ = ["COUNTED", "Closing", "Counted", "error_of", "failure", "whole_tokens"]

#: the routes whose streams carry a usage event when asked (OpenAI's; Anthropic's and the
#: Responses API's always do, and refuse ``stream_options``)
COUNTED = ("/v1/chat/completions", "/v1/completions")


def error_of(piece: bytes, member: str) -> tuple[int, str]:
    """An error frame's status and message (one not as documented: a 502 that says so)."""
    try:
        error = json.loads(piece)
        return int(error.get("status", 500)), str(error.get("message"))
    except (ValueError, TypeError, AttributeError, RecursionError):
        return 502, f"member {member} sent an error frame that is not one: see docs/fleet.md"


def failure(streamed: bool, message: str, code: str) -> bytes:
    """How an answer that broke on its member ends: an error event, or an error body."""
    if streamed:
        return sse_error(message, "fleet_error", code)
    return error_body(message, "fleet_error", code)


def whole_tokens(body: bytes) -> tuple[int | None, int | None]:
    try:
        return tokens_of(json.loads(body))
    except (ValueError, RecursionError):
        return None, None


class Counted(Response):
    """A whole answer, counted once it is sent (the log line, metrics, the SQLite row: ~0.2
    ms the client need not wait for), as a local model's is, however the sending ends."""

    def __init__(self, content: bytes, status: int, headers: dict[str, str], a: Attempt):
        super().__init__(content, status, headers, media_type="application/json")
        self.attempt = a

    @staticmethod
    def count_of(a: Attempt) -> None:
        count, a.count = a.count, None
        if count is not None:
            count()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.count_of(self.attempt)


class Closing(StreamingResponse):
    """A relayed stream whose end is seen to however the response ends: a client gone
    before its first piece never starts the generator, whose ``finally`` (the inbox closed,
    the request counted) then never runs: ``unstarted`` does that instead."""

    def __init__(self, stream: Any, status: int, headers: dict[str, str], a: Attempt,
                 unstarted: Any) -> None:  # fmt: skip
        super().__init__(stream, status, headers)
        self.attempt, self.unstarted = a, unstarted

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]
            if not self.attempt.relayed:
                self.unstarted()
