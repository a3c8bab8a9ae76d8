"""The Anthropic Messages API and OpenAI's Responses API, for runners that speak only Chat
Completions (llama-cpp-python's server): the request becomes a chat request, the answer (a
JSON object, or a chat stream's events) becomes the API's own shape.

llama-server serves both routes itself; the proxy passes them on to it unchanged.

What is translated: text, system prompts (`system`, `instructions`), content blocks and input
items of text, function tools, tool calls and their results, `tool_choice`, stop sequences,
the token limit, sampling settings, JSON output (`text.format` of Responses), usage, the stop
reason; streams as the APIs' event sequences. What is not (images to a text model, a
`previous_response_id` the supervisor never stored) is refused by the schemas or here with a
400 that says so.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from smackctl.errors import UsageError

__all__ = ["to_chat", "from_chat", "stream_from_chat", "error_for"]

MESSAGES, RESPONSES = "/v1/messages", "/v1/responses"


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content or [] if isinstance(b, dict) and "text" in b)


# -- requests ------------------------------------------------------------------------------


def to_chat(path: str, body: dict[str, Any]) -> dict[str, Any]:
    chat = _anthropic_to_chat(body) if path == MESSAGES else _responses_to_chat(body)
    for key in ("model", "temperature", "top_p", "stream"):
        if body.get(key) is not None:
            chat[key] = body[key]
    if chat.get("stream"):
        chat["stream_options"] = {"include_usage": True}
    return chat


def _anthropic_to_chat(body: dict[str, Any]) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if body.get("system"):
        messages.append({"role": "system", "content": _text(body["system"])})
    for msg in body["messages"]:
        content = msg["content"]
        if isinstance(content, str):
            messages.append({"role": msg["role"], "content": content})
            continue
        text = _text([b for b in content if b.get("type") == "text"])
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
                        "content": _text(b.get("content")),
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


def _responses_to_chat(body: dict[str, Any]) -> dict[str, Any]:
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
            messages.append({"role": role, "content": _text(item["content"])})
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


# -- answers -------------------------------------------------------------------------------

_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def from_chat(path: str, data: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    choice = data["choices"][0]
    msg = choice.get("message") or {}
    usage = data.get("usage") or {}
    tokens_in, tokens_out = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    calls = msg.get("tool_calls") or []
    if path == MESSAGES:
        content: list[dict[str, Any]] = []
        if msg.get("content"):
            content.append({"type": "text", "text": msg["content"]})
        for c in calls:
            try:
                args = json.loads(c["function"]["arguments"] or "{}")
            except ValueError:
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
            "usage": {"input_tokens": tokens_in, "output_tokens": tokens_out},
        }
    output: list[dict[str, Any]] = []
    if msg.get("content") or not calls:
        output.append(_message_item("msg_" + uuid.uuid4().hex, msg.get("content") or ""))
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
    return _response(
        data.get("model", body.get("model")),
        body,
        output,
        tokens_in,
        tokens_out,
        choice.get("finish_reason"),
    )


def _message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
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
    tokens_in: int,
    tokens_out: int,
    finish: str | None,
    rid: str | None = None,
    status: str | None = None,
) -> dict[str, Any]:
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


def error_for(path: str, status: int, content: bytes) -> bytes:
    """An error answer in the API's own shape (Anthropic's differs from OpenAI's)."""
    if path != MESSAGES:
        return content
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


# -- streams -------------------------------------------------------------------------------


def _sse(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


async def _chat_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any]]:
    buf = b""
    async for chunk in chunks:
        buf += chunk
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if line.startswith(b"data:") and line[5:].strip() != b"[DONE]":
                    try:
                        yield json.loads(line[5:])
                    except ValueError:
                        continue


async def stream_from_chat(
    path: str, chunks: AsyncIterator[bytes], body: dict[str, Any]
) -> AsyncIterator[bytes]:
    """A chat stream's events as the API's own event stream."""
    model = body.get("model")
    text: list[str] = []
    finish: str | None = None
    usage: dict[str, int] = {}
    calls: dict[int, dict[str, str]] = {}  # the tool calls' deltas, gathered by index
    seq = 0
    rid, item = "resp_" + uuid.uuid4().hex, "msg_" + uuid.uuid4().hex

    def r_event(name: str, **data: Any) -> bytes:
        nonlocal seq
        seq += 1
        return _sse(name, {"type": name, "sequence_number": seq, **data})

    if path == MESSAGES:
        yield _sse(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": item,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 0, "output_tokens": 0},
                },
            },
        )
        yield _sse(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
    else:
        shell = _response(model, body, [], 0, 0, None, rid, "in_progress")
        yield r_event("response.created", response=shell)
        yield r_event("response.in_progress", response=shell)
        yield r_event(
            "response.output_item.added",
            output_index=0,
            item={**_message_item(item, "", "in_progress"), "content": []},
        )
        yield r_event(
            "response.content_part.added",
            item_id=item,
            output_index=0,
            content_index=0,
            part={"type": "output_text", "text": "", "annotations": []},
        )
    async for ev in _chat_events(chunks):
        if "error" in ev:
            err = ev["error"]
            if path == MESSAGES:
                yield _sse(
                    "error",
                    {
                        "type": "error",
                        "error": {"type": "api_error", "message": err.get("message", "")},
                    },
                )
            else:
                yield r_event(
                    "error", code=err.get("code"), message=err.get("message", ""), param=None
                )
            return
        if ev.get("usage"):
            usage = ev["usage"]
        for choice in ev.get("choices") or []:
            delta = (choice.get("delta") or {}).get("content")
            if delta:
                text.append(delta)
                if path == MESSAGES:
                    yield _sse(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": 0,
                            "delta": {"type": "text_delta", "text": delta},
                        },
                    )
                else:
                    yield r_event(
                        "response.output_text.delta",
                        item_id=item,
                        output_index=0,
                        content_index=0,
                        delta=delta,
                        logprobs=[],
                    )
            for tc in (choice.get("delta") or {}).get("tool_calls") or []:
                call = calls.setdefault(tc.get("index", 0), {"id": "", "name": "", "args": ""})
                fn = tc.get("function") or {}
                call["id"] = tc.get("id") or call["id"]
                call["name"] = fn.get("name") or call["name"]
                call["args"] += fn.get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    tokens_in, tokens_out = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    # a tool call is sent whole once the stream ends (its arguments in one delta): the
    # events the APIs define, in the order they define them
    if path == MESSAGES:
        yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        for i, call in enumerate(calls.values(), start=1):
            block = {
                "type": "tool_use",
                "id": call["id"] or f"toolu_{uuid.uuid4().hex}",
                "name": call["name"],
                "input": {},
            }
            yield _sse(
                "content_block_start",
                {"type": "content_block_start", "index": i, "content_block": block},
            )
            delta = {"type": "input_json_delta", "partial_json": call["args"] or "{}"}
            yield _sse(
                "content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta}
            )
            yield _sse("content_block_stop", {"type": "content_block_stop", "index": i})
        yield _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": _STOP.get(finish or "stop", "end_turn"),
                    "stop_sequence": None,
                },
                "usage": {"output_tokens": tokens_out},
            },
        )
        yield _sse("message_stop", {"type": "message_stop"})
        return
    full = "".join(text)
    yield r_event(
        "response.output_text.done",
        item_id=item,
        output_index=0,
        content_index=0,
        text=full,
        logprobs=[],
    )
    part = {"type": "output_text", "text": full, "annotations": []}
    yield r_event(
        "response.content_part.done", item_id=item, output_index=0, content_index=0, part=part
    )
    done_item = _message_item(item, full)
    yield r_event("response.output_item.done", output_index=0, item=done_item)
    output = [done_item]
    for i, call in enumerate(calls.values(), start=1):
        fc = {
            "type": "function_call",
            "id": f"fc_{uuid.uuid4().hex}",
            "call_id": call["id"] or f"call_{uuid.uuid4().hex}",
            "name": call["name"],
            "arguments": "",
            "status": "in_progress",
        }
        yield r_event("response.output_item.added", output_index=i, item=fc)
        yield r_event(
            "response.function_call_arguments.delta",
            item_id=fc["id"],
            output_index=i,
            delta=call["args"],
        )
        yield r_event(
            "response.function_call_arguments.done",
            item_id=fc["id"],
            output_index=i,
            arguments=call["args"],
        )
        fc = {**fc, "arguments": call["args"], "status": "completed"}
        yield r_event("response.output_item.done", output_index=i, item=fc)
        output.append(fc)
    final = _response(model, body, output, tokens_in, tokens_out, finish, rid)
    # `response.completed` also when the token limit cut it (its status says "incomplete"):
    # the official client's stream helper ends only on that event
    yield r_event("response.completed", response=final)
