"""OpenAI's Responses API over a runner that speaks only Chat Completions: the request as a
chat request, the answer and its stream as a response and its events."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from smackctl.errors import UsageError
from smackctl.wire import sse

from .common import Gathered, chat_events, text_of

__all__ = ["from_chat", "message_item", "stream", "to_chat"]


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    if body.get("previous_response_id"):
        raise UsageError(
            "`previous_response_id`: the supervisor keeps no responses (`store` is not kept)",
            "send the conversation so far in `input`",
        )
    messages: list[dict[str, Any]] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": body["instructions"]})
    items = body["input"]
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            role = {"developer": "system"}.get(item["role"], item["role"])
            messages.append({"role": role, "content": text_of(item["content"])})
        elif kind == "function_call":
            messages.append(
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": item["call_id"],
                            "type": "function",
                            "function": {"name": item["name"], "arguments": item["arguments"]},
                        }
                    ],
                }
            )
        elif kind == "function_call_output":
            messages.append(
                {"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]}
            )
    chat: dict[str, Any] = {"messages": messages}
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    fmt = (body.get("text") or {}).get("format") or {}
    if fmt.get("type") == "json_schema":
        chat["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": fmt.get("name", "output"), "schema": fmt.get("schema") or {}},
        }
    elif fmt.get("type") == "json_object":
        chat["response_format"] = {"type": "json_object"}
    tools = [t for t in body.get("tools") or [] if t.get("type") == "function"]
    if tools:
        chat["tools"] = [
            {
                "type": "function",
                "function": {
                    k: t[k] for k in ("name", "description", "parameters") if t.get(k) is not None
                },
            }
            for t in tools
        ]
    choice = body.get("tool_choice")
    if isinstance(choice, str):
        chat["tool_choice"] = choice
    elif isinstance(choice, dict) and choice.get("type") == "function":
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    return chat


def from_chat(data: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    choice = data["choices"][0]
    msg = choice.get("message") or {}
    usage = data.get("usage") or {}
    calls = msg.get("tool_calls") or []
    output: list[dict[str, Any]] = []
    if msg.get("content") or not calls:
        output.append(message_item("msg_" + uuid.uuid4().hex, msg.get("content") or ""))
    for c in calls:
        output.append(
            {
                "type": "function_call",
                "id": "fc_" + uuid.uuid4().hex,
                "call_id": c["id"],
                "name": c["function"]["name"],
                "arguments": c["function"]["arguments"],
                "status": "completed",
            }
        )
    tokens = (usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
    return _response(
        data.get("model", body.get("model")), body, output, tokens, choice.get("finish_reason")
    )


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def _response(
    model: Any,
    body: dict[str, Any],
    output: list[dict[str, Any]],
    tokens: tuple[int, int],
    finish: str | None,
    rid: str | None = None,
    status: str | None = None,
) -> dict[str, Any]:
    tokens_in, tokens_out = tokens
    incomplete = finish == "length"
    return {
        "id": rid or "resp_" + uuid.uuid4().hex,
        "object": "response",
        "created_at": int(time.time()),
        "status": status or ("incomplete" if incomplete else "completed"),
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "error": None,
        "model": model,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "tools": body.get("tools") or [],
        "tool_choice": body.get("tool_choice") or "auto",
        "parallel_tool_calls": bool(body.get("parallel_tool_calls", True)),
        "text": body.get("text") or {"format": {"type": "text"}},
        "output": output,
        "usage": {
            "input_tokens": tokens_in,
            "output_tokens": tokens_out,
            "total_tokens": tokens_in + tokens_out,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    }


class _Events:
    """The Responses API's events, numbered in order."""

    def __init__(self) -> None:
        self.seq = 0

    def __call__(self, name: str, **data: Any) -> bytes:
        self.seq += 1
        return sse({"type": name, "sequence_number": self.seq, **data}, event=name)


async def stream(chunks: AsyncIterator[bytes], body: dict[str, Any]) -> AsyncIterator[bytes]:
    """A chat stream's events as the Responses API's: the response, its message's text
    deltas, then each function call whole once the stream ends, then ``response.completed``
    (also when the token limit cut it: its status says "incomplete"; the official client's
    stream helper ends only on that event)."""
    got, event = Gathered(), _Events()
    model = body.get("model")
    rid, item = "resp_" + uuid.uuid4().hex, "msg_" + uuid.uuid4().hex
    shell = _response(model, body, [], (0, 0), None, rid, "in_progress")
    yield event("response.created", response=shell)
    yield event("response.in_progress", response=shell)
    added = {**message_item(item, "", "in_progress"), "content": []}
    yield event("response.output_item.added", output_index=0, item=added)
    part = {"type": "output_text", "text": "", "annotations": []}
    where = {"item_id": item, "output_index": 0, "content_index": 0}
    yield event("response.content_part.added", **where, part=part)
    async for ev in chat_events(chunks):
        if "error" in ev:
            err = ev["error"] or {}
            yield event("error", code=err.get("code"), message=err.get("message", ""), param=None)
            return
        for piece in got.take(ev):
            yield event("response.output_text.delta", **where, delta=piece, logprobs=[])
    full = "".join(got.text)
    yield event("response.output_text.done", **where, text=full, logprobs=[])
    done_part = {"type": "output_text", "text": full, "annotations": []}
    yield event("response.content_part.done", **where, part=done_part)
    output = [message_item(item, full)]
    yield event("response.output_item.done", output_index=0, item=output[0])
    for i, call in enumerate(got.calls.values(), start=1):
        fc = {"type": "function_call", "id": f"fc_{uuid.uuid4().hex}",
              "call_id": call["id"] or f"call_{uuid.uuid4().hex}", "name": call["name"],
              "arguments": "", "status": "in_progress"}  # fmt: skip
        yield event("response.output_item.added", output_index=i, item=fc)
        args = call["args"]
        yield event("response.function_call_arguments.delta", item_id=fc["id"], output_index=i,
                    delta=args)  # fmt: skip
        yield event("response.function_call_arguments.done", item_id=fc["id"], output_index=i,
                    arguments=args)  # fmt: skip
        fc = {**fc, "arguments": args, "status": "completed"}
        yield event("response.output_item.done", output_index=i, item=fc)
        output.append(fc)
    final = _response(model, body, output, got.tokens, got.finish, rid)
    yield event("response.completed", response=final)
