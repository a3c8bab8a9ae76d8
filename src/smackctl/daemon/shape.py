"""A chat request as a runner takes it (the schemas, ``schemas.py``, say what a client may
send; this says what reaches a runner): messages and tools in the shape both runners accept,
the fields a server may ignore left out, and what a text model cannot honour named."""

from __future__ import annotations

from typing import Any

from smackctl.errors import UsageError

__all__ = ["IGNORED", "chat_for_runner", "for_runner", "tools_for_runner", "unusable"]


def _no_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _no_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_no_nulls(v) for v in value]
    return value


def for_runner(messages: list[dict[str, Any]], parts: bool = True) -> list[dict[str, Any]]:
    """Messages as both runners take them: a `developer` message is a `system` one; text
    parts outside a user message are joined into one string (in a user message too when the
    runner does not take ``parts``: chat templates that add strings fail on a list); an
    assistant message without content has "" (llama-cpp-python refuses `content: null`, and
    templates such as chatml-function-calling's read `content` beside the tool calls)."""
    out = []
    for msg in messages:
        # a field sent as null is a field not sent (llama-cpp-python refuses `tool_calls: null`)
        msg = {k: _no_nulls(v) for k, v in msg.items() if v is not None or k == "content"}
        if msg.get("role") == "developer":
            msg["role"] = "system"
        content = msg.get("content")
        if isinstance(content, list) and (msg.get("role") != "user" or not parts):
            msg["content"] = "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
        if msg.get("role") == "assistant" and msg.get("content") is None:
            msg["content"] = ""  # templates read it even beside tool calls
        out.append(msg)
    return out


def tools_for_runner(
    body: dict[str, Any], native_json_schema: bool, any_tool: bool = True
) -> dict[str, Any]:
    """Tools, functions and the response format as the runner takes them: a function with no
    `parameters` gets an empty object schema (llama-cpp-python requires one), and for a
    runner that does not know OpenAI's `json_schema` format it becomes `json_object` with
    the schema (the same grammar-constrained output).

    `tool_choice` left out with tools offered is `auto`, OpenAI's default (llama-cpp-python's
    tool formats put no tool in the prompt without it: the model answered in text, and
    OpenAI's, Anthropic's and the Responses SDKs all leave it out). ``any_tool`` False (a
    format that cannot be made to call one of several tools: chatml-function-calling):
    `required` with one tool is that tool by name, and with several a 400 that says so (its
    assertion failed with an empty 500)."""
    body = dict(body)
    empty = {"type": "object", "properties": {}}

    def function(f: dict[str, Any]) -> dict[str, Any]:
        return {"parameters": empty, **{k: v for k, v in f.items() if v is not None}}

    if body.get("tools"):
        body["tools"] = [{**t, "function": function(t["function"])} for t in body["tools"]]
        if body.get("tool_choice") is None:
            body["tool_choice"] = "auto"
        elif body["tool_choice"] == "required" and not any_tool:
            if len(body["tools"]) > 1:
                raise UsageError(
                    "tool_choice `required` with several tools: this model's chat format "
                    "(chatml-function-calling) can be made to call one named tool, not any "
                    "of several",
                    "name the function in tool_choice, send `auto`, or serve the model with "
                    "`backend: llama-server`",
                )
            name = body["tools"][0]["function"]["name"]
            body["tool_choice"] = {"type": "function", "function": {"name": name}}
    if body.get("functions"):
        body["functions"] = [function(f) for f in body["functions"]]
    fmt = body.get("response_format")
    if not native_json_schema and isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = fmt["json_schema"].get("schema")
        body["response_format"] = {"type": "json_object", **({"schema": schema} if schema else {})}
    return body


#: fields the API lets a server ignore; not sent to a runner
IGNORED = (
    "store", "metadata", "service_tier", "prompt_cache_key", "safety_identifier",
    "reasoning_effort", "verbosity", "prediction", "user",
)  # fmt: skip


def unusable(body: dict[str, Any], multimodal: bool) -> str | None:
    """What in a chat request a text model cannot honour, said as the reason; None if all
    of it can be."""
    if body.get("audio") or "audio" in (body.get("modalities") or []):
        return "`audio` / `modalities: [audio]`: the model answers in text only"
    if body.get("web_search_options") is not None:
        return "`web_search_options`: a local model cannot search the web"
    if not multimodal:
        for i, msg in enumerate(body.get("messages") or []):
            content = msg.get("content")
            if isinstance(content, list) and any(
                isinstance(p, dict) and p.get("type") == "image_url" for p in content
            ):
                return f"`messages.{i}.content`: an image part, and the model reads text only"
    return None


def chat_for_runner(
    body: dict[str, Any], parts: bool, native_json_schema: bool, any_tool: bool = True
) -> dict[str, Any]:
    """A chat request as a runner takes it: the fields it may ignore dropped,
    `max_completion_tokens` (OpenAI's new name) as `max_tokens`, which both runners read, the
    messages as ``for_runner`` makes them and the tools as ``tools_for_runner`` does."""
    body = {k: v for k, v in body.items() if k not in IGNORED}
    if (n := body.pop("max_completion_tokens", None)) is not None:
        body.setdefault("max_tokens", n)
    body["messages"] = for_runner(body["messages"], parts)
    return tools_for_runner(body, native_json_schema, any_tool)
