"""OpenAI request bodies, validated before they reach a runner.

Known fields are typed and range-checked (a wrong type is a 400 naming the field, never a 500
from deep in a runner). Unknown fields are refused: a field the supervisor does not know could
be one that steers a backend (an upstream URL, a file path), and a typo should be said aloud.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

__all__ = [
    "AnthropicRequest",
    "ChatRequest",
    "CompletionRequest",
    "EmbeddingRequest",
    "REQUEST_SCHEMAS",
    "ResponsesRequest",
    "CountTokensRequest",
    "RerankRequest",
    "InfillRequest",
    "TokenizeRequest",
]


class _Req(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, max_length=256)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    temperature: float | None = Field(None, ge=0, le=5)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    typical_p: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(None, ge=1, le=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repeat_penalty: float | None = Field(None, ge=0)
    logit_bias: (
        dict[
            Annotated[str, StringConstraints(pattern=r"^[0-9]{1,9}$")],
            Annotated[float, Field(ge=-100, le=100)],
        ]
        | None
    ) = None  # token id → bias, as OpenAI
    top_logprobs: int | None = Field(None, ge=0, le=20)
    user: str | None = None
    grammar: str | None = None
    mirostat_mode: int | None = Field(None, ge=0, le=2)
    mirostat_tau: float | None = Field(None, ge=0, le=100)
    mirostat_eta: float | None = Field(None, ge=0, le=1)


# -- chat messages: each role's fields, as the runners need them ---------------------------------
# (llama-cpp-python's server answers a 500 with a dump of pydantic errors for a message it
# cannot take, and llama-server a 500 too: refused here first, a 400 naming the field)


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Text(_Part):
    type: Literal["text"]
    text: str


class _ImageUrl(_Part):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class _Image(_Part):
    type: Literal["image_url"]
    image_url: str | _ImageUrl


class _Function(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    arguments: str


class _ToolCall(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    type: Literal["function"]
    function: _Function


class _Msg(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str | None = None


class _SystemMessage(_Msg):
    role: Literal["system", "developer"]
    content: str | list[_Text]


class _UserMessage(_Msg):
    role: Literal["user"]
    content: str | list[Annotated[_Text | _Image, Field(discriminator="type")]]


class _AssistantMessage(_Msg):
    role: Literal["assistant"]
    content: str | list[_Text] | None = None
    tool_calls: list[_ToolCall] | None = None
    function_call: _Function | None = None
    refusal: str | None = None


class _ToolMessage(_Msg):
    role: Literal["tool"]
    content: str | list[_Text]
    tool_call_id: str


class _FunctionMessage(_Msg):
    role: Literal["function"]
    content: str | None
    name: str


_Message = Annotated[
    _SystemMessage | _UserMessage | _AssistantMessage | _ToolMessage | _FunctionMessage,
    Field(discriminator="role"),
]


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


# -- tools and structured output --------------------------------------------------------------


class _FunctionDef(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class _ToolDef(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function"]
    function: _FunctionDef


class _Named(BaseModel):
    name: str


class _NamedTool(BaseModel):
    type: Literal["function"]
    function: _Named


class _TextFormat(BaseModel):
    type: Literal["text"]


class _JsonObjectFormat(BaseModel):
    type: Literal["json_object"]
    schema_: dict[str, Any] | None = Field(None, alias="schema")  # llama-cpp-python's own


class _JsonSchema(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class _JsonSchemaFormat(BaseModel):
    type: Literal["json_schema"]
    json_schema: _JsonSchema


_ResponseFormat = Annotated[
    _TextFormat | _JsonObjectFormat | _JsonSchemaFormat, Field(discriminator="type")
]


def tools_for_runner(body: dict[str, Any], native_json_schema: bool) -> dict[str, Any]:
    """Tools, functions and the response format as the runner takes them: a function with no
    `parameters` gets an empty object schema (llama-cpp-python requires one), and for a
    runner that does not know OpenAI's `json_schema` format it becomes `json_object` with
    the schema (the same grammar-constrained output)."""
    body = dict(body)
    empty = {"type": "object", "properties": {}}

    def function(f: dict[str, Any]) -> dict[str, Any]:
        return {"parameters": empty, **{k: v for k, v in f.items() if v is not None}}

    if body.get("tools"):
        body["tools"] = [{**t, "function": function(t["function"])} for t in body["tools"]]
    if body.get("functions"):
        body["functions"] = [function(f) for f in body["functions"]]
    fmt = body.get("response_format")
    if not native_json_schema and isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = fmt["json_schema"].get("schema")
        body["response_format"] = {"type": "json_object", **({"schema": schema} if schema else {})}
    return body


class ChatRequest(_Req):
    messages: list[_Message] = Field(min_length=1)
    logprobs: bool | None = None
    response_format: _ResponseFormat | None = None
    tools: list[_ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | _NamedTool | None = None
    functions: list[_FunctionDef] | None = None
    function_call: Literal["none", "auto"] | _Named | None = None
    parallel_tool_calls: bool | None = None
    max_completion_tokens: int | None = Field(None, ge=1, le=1_000_000)
    # in OpenAI's reference, and nothing a local model can use: accepted, not passed on
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    prediction: dict[str, Any] | None = None
    # refused with the reason when they ask for what a text model cannot give (proxy.py)
    modalities: list[Literal["text", "audio"]] | None = None
    audio: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None


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


def chat_for_runner(body: dict[str, Any], parts: bool, native_json_schema: bool) -> dict[str, Any]:
    """A chat request as a runner takes it: the fields it may ignore dropped,
    `max_completion_tokens` (OpenAI's new name) as `max_tokens`, which both runners read, the
    messages as ``for_runner`` makes them and the tools as ``tools_for_runner`` does."""
    body = {k: v for k, v in body.items() if k not in IGNORED}
    if (n := body.pop("max_completion_tokens", None)) is not None:
        body.setdefault("max_tokens", n)
    body["messages"] = for_runner(body["messages"], parts)
    return tools_for_runner(body, native_json_schema)


class CompletionRequest(_Req):
    logprobs: int | None = Field(None, ge=0, le=20)  # here a count, as in OpenAI's legacy API
    prompt: str | list[str] = ""
    suffix: str | None = None
    echo: bool | None = None
    best_of: int | None = Field(None, ge=1, le=1)


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, max_length=256)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    user: str | None = None
    dimensions: int | None = Field(None, ge=1)


# -- the Anthropic Messages API and OpenAI's Responses API (translate.py) -------------------


class _BlockBase(BaseModel):
    model_config = ConfigDict(extra="allow")  # cache_control, citations: accepted, unused


class _TextBlock(_BlockBase):
    type: Literal["text"]
    text: str


class _ToolUseBlock(_BlockBase):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class _ToolResultBlock(_BlockBase):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[_TextBlock] | None = None
    is_error: bool | None = None


_Block = Annotated[_TextBlock | _ToolUseBlock | _ToolResultBlock, Field(discriminator="type")]


class _AnthropicMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "assistant"]
    content: str | list[_Block]


class _AnthropicTool(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    input_schema: dict[str, Any] | None = None


class AnthropicRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, max_length=256)
    max_tokens: int = Field(ge=1, le=1_000_000)
    messages: list[_AnthropicMessage] = Field(min_length=1)
    system: str | list[_TextBlock] | None = None
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    tools: list[_AnthropicTool] | None = None
    tool_choice: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    service_tier: str | None = None
    thinking: dict[str, Any] | None = None


class _InputText(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["input_text", "output_text", "text"]
    text: str


class _MessageItem(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[_InputText]


class _FunctionCallItem(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str


class _FunctionOutputItem(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function_call_output"]
    call_id: str
    output: str


_InputItem = _FunctionCallItem | _FunctionOutputItem | _MessageItem


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, max_length=256)
    input: str | list[_InputItem]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1, le=1_000_000)
    stream: bool = False
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    text: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    previous_response_id: str | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    reasoning: dict[str, Any] | None = None
    truncation: str | None = None
    service_tier: str | None = None
    include: list[str] | None = None


#: the control routes' query parameters: (lowest, highest), as api.py checks them and
#: openapi.py describes them
QUERY_BOUNDS: dict[str, tuple[float, float]] = {
    "limit": (1, 10_000),  # GET /api/bench
    "lines": (1, 100_000),  # GET /api/logs
    "since": (0, 1e11),  # GET /api/usage and /api/events, a unix time
    "after": (0, 2**62),  # GET /api/events, an event id
    "follow": (0, 1),  # GET /api/events: 0, the kept events only
}


class CountTokensRequest(BaseModel):
    """Anthropic's ``/v1/messages/count_tokens``: a Messages request without the answer's
    settings."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, max_length=256)
    messages: list[_AnthropicMessage] = Field(min_length=1)
    system: str | list[_TextBlock] | None = None
    tools: list[_AnthropicTool] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None


class RerankRequest(BaseModel):
    """``/v1/rerank``, as llama-server, Jina and Cohere take it."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, max_length=256)
    query: str
    documents: list[str] = Field(min_length=1, max_length=10_000)
    top_n: int | None = Field(None, ge=1)
    return_documents: bool | None = None


class _ExtraFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    filename: str = ""
    text: str


class InfillRequest(BaseModel):
    """llama-server's ``/infill``, what editors' completion plugins send (llama.vim,
    llama.vscode): the text before and after the cursor, other files as context."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, max_length=256)
    input_prefix: str
    input_suffix: str
    input_extra: list[_ExtraFile] | None = None
    prompt: str | None = None  # the current line's text before the cursor
    stream: bool = False
    n_predict: int | None = Field(None, ge=-1, le=1_000_000)
    n_indent: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0, le=5)
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, ge=0, le=1)
    min_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = None
    stop: list[str] | None = None
    samplers: list[str] | None = None
    cache_prompt: bool | None = None
    t_max_prompt_ms: int | None = None
    t_max_predict_ms: int | None = None
    response_fields: list[str] | None = None


class TokenizeRequest(BaseModel):
    """``/tokenize``, llama-server's shape: a model's token ids for ``content``."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, max_length=256)
    content: str


REQUEST_SCHEMAS: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
    "/v1/messages": AnthropicRequest,
    "/v1/responses": ResponsesRequest,
    "/v1/messages/count_tokens": CountTokensRequest,
    "/v1/rerank": RerankRequest,
    "/infill": InfillRequest,
    "/tokenize": TokenizeRequest,
}
