"""The Anthropic Messages API and OpenAI's Responses API, for runners that speak only Chat
Completions (llama-cpp-python's server): the request becomes a chat request, the answer (a
JSON object, or a chat stream's events) becomes the API's own shape.

llama-server serves ``/v1/messages`` itself: the gateway passes it on unchanged. One module
per API: ``anthropic``, ``responses``; ``common`` what they share.

What is translated: text, system prompts (`system`, `instructions`), content blocks and input
items of text, function tools, tool calls and their results, `tool_choice`, stop sequences,
the token limit, sampling settings, JSON output (`text.format` of Responses), usage, the stop
reason; streams as the APIs' event sequences. What is not (images to a text model, a
`previous_response_id` the supervisor never stored) is refused by the schemas or here with a
400 that says so.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from . import anthropic, responses

__all__ = ["MESSAGES", "RESPONSES", "error_for", "from_chat", "stream_from_chat", "to_chat"]

MESSAGES, RESPONSES = "/v1/messages", "/v1/responses"


def to_chat(path: str, body: dict[str, Any]) -> dict[str, Any]:
    """The chat request an Anthropic (``MESSAGES``) or Responses request stands for."""
    chat = anthropic.to_chat(body) if path == MESSAGES else responses.to_chat(body)
    for key in ("model", "temperature", "top_p", "stream"):
        if body.get(key) is not None:
            chat[key] = body[key]
    if chat.get("stream"):
        chat["stream_options"] = {"include_usage": True}
    return chat


def from_chat(path: str, data: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """A chat answer in the API's own shape."""
    if path == MESSAGES:
        return anthropic.from_chat(data, body)
    return responses.from_chat(data, body)


def stream_from_chat(
    path: str, chunks: AsyncIterator[bytes], body: dict[str, Any]
) -> AsyncIterator[bytes]:
    """A chat stream's events as the API's own event stream."""
    if path == MESSAGES:
        return anthropic.stream(chunks, body)
    return responses.stream(chunks, body)


def error_for(path: str, status: int, content: bytes) -> bytes:
    """An error answer in the API's own shape (Anthropic's differs from OpenAI's)."""
    return anthropic.error_for(status, content) if path == MESSAGES else content
