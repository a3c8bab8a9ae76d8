"""What the front makes of a member's answer: an error frame's status and message, how an
answer that broke on its way ends, a whole answer's tokens."""

from __future__ import annotations

import json

from smackctl.daemon.usage import tokens_of
from smackctl.wire import error_body, sse_error

__all__ = ["COUNTED", "error_of", "failure", "whole_tokens"]

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
