"""Anthropic's Messages API over a runner that speaks only Chat Completions: the request as
a chat request, the answer and its stream in Anthropic's shape, an error in Anthropic's."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from smackctl.wire import sse

from .common import Gathered, chat_events, text_of

__all__ = ["error_for", "from_chat", "stream", "to_chat"]

#: chat's finish reasons as Anthropic's stop reasons
_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if body.get("system"):
        messages.append({"role": "system", "content": text_of(body["system"])})
    for msg in body["messages"]:
        content = msg["content"]
        if isinstance(content, str):
            messages.append({"role": msg["role"], "content": content})
            continue
        text = text_of([b for b in content if b.get("type") == "text"])
        calls = [
            {
                "id": b["id"],
                "type": "function",
                "function": {"name": b["name"], "arguments": json.dumps(b.get("input") or {})},
            }
            for b in content
            if b.get("type") == "tool_use"
        ]
        for b in content:
            if b.get("type") == "tool_result":
                messages.append(
                    {
                        "role": "tool",
                        "tool_call_id": b["tool_use_id"],
                        "content": text_of(b.get("content")),
                    }
                )
        if msg["role"] == "assistant":
            out: dict[str, Any] = {"role": "assistant", "content": text or None}
            if calls:
                out["tool_calls"] = calls
            messages.append(out)
        elif text or not any(b.get("type") == "tool_result" for b in content):
            messages.append({"role": "user", "content": text})
    chat: dict[str, Any] = {"messages": messages, "max_tokens": body["max_tokens"]}
    if body.get("top_k") is not None:
        chat["top_k"] = body["top_k"]
    if body.get("stop_sequences"):
        chat["stop"] = body["stop_sequences"]
    if body.get("tools"):
        chat["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t["name"],
                    "description": t.get("description") or "",
                    "parameters": t.get("input_schema") or {"type": "object", "properties": {}},
                },
            }
            for t in body["tools"]
        ]
    choice = body.get("tool_choice") or {}
    kind = choice.get("type")
    if kind in ("auto", "none"):
        chat["tool_choice"] = kind
    elif kind == "any":
        chat["tool_choice"] = "required"
    elif kind == "tool":
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    return chat


def from_chat(data: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    choice = data["choices"][0]
    msg = choice.get("message") or {}
    usage = data.get("usage") or {}
    content: list[dict[str, Any]] = []
    if msg.get("content"):
        content.append({"type": "text", "text": msg["content"]})
    for c in msg.get("tool_calls") or []:
        try:
            args = json.loads(c["function"]["arguments"] or "{}")
        except (ValueError, RecursionError):
            args = {"arguments": c["function"]["arguments"]}
        content.append(
            {"type": "tool_use", "id": c["id"], "name": c["function"]["name"], "input": args}
        )
    return {
        "id": "msg_" + uuid.uuid4().hex,
        "type": "message",
        "role": "assistant",
        "model": data.get("model", body.get("model")),
        "content": content,
        "stop_reason": _STOP.get(choice.get("finish_reason") or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": {
            "input_tokens": usage.get("prompt_tokens", 0),
            "output_tokens": usage.get("completion_tokens", 0),
        },
    }


def error_for(status: int, content: bytes) -> bytes:
    """An OpenAI error answer in Anthropic's shape."""
    try:
        err = json.loads(content)["error"]
    except (ValueError, KeyError, TypeError):
        err = {"message": content.decode(errors="replace")}
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        503: "overloaded_error",
    }
    return json.dumps(
        {
            "type": "error",
            "error": {"type": kind.get(status, "api_error"), "message": err.get("message", "")},
        }
    ).encode()


def _event(name: str, **data: Any) -> bytes:
    return sse({"type": name, **data}, event=name)


async def stream(chunks: AsyncIterator[bytes], body: dict[str, Any]) -> AsyncIterator[bytes]:
    """A chat stream's events as Anthropic's: the message, its text block's deltas, then each
    tool call whole (its arguments in one delta) once the stream ends, in the order the API
    defines."""
    got = Gathered()
    message: dict[str, Any] = {
        "id": "msg_" + uuid.uuid4().hex, "type": "message", "role": "assistant",
        "model": body.get("model"), "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }  # fmt: skip
    yield _event("message_start", message=message)
    yield _event("content_block_start", index=0, content_block={"type": "text", "text": ""})
    async for ev in chat_events(chunks):
        if "error" in ev:
            message_text = (ev["error"] or {}).get("message", "")
            yield _event("error", error={"type": "api_error", "message": message_text})
            return
        for piece in got.take(ev):
            yield _event(
                "content_block_delta", index=0, delta={"type": "text_delta", "text": piece}
            )
    yield _event("content_block_stop", index=0)
    for i, call in enumerate(got.calls.values(), start=1):
        block = {"type": "tool_use", "id": call["id"] or f"toolu_{uuid.uuid4().hex}",
                 "name": call["name"], "input": {}}  # fmt: skip
        yield _event("content_block_start", index=i, content_block=block)
        delta = {"type": "input_json_delta", "partial_json": call["args"] or "{}"}
        yield _event("content_block_delta", index=i, delta=delta)
        yield _event("content_block_stop", index=i)
    stop = {"stop_reason": _STOP.get(got.finish or "stop", "end_turn"), "stop_sequence": None}
    yield _event("message_delta", delta=stop, usage={"output_tokens": got.tokens[1]})
    yield _event("message_stop")
