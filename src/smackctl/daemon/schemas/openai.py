"""OpenAI's Chat Completions, Completions and Embeddings requests."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

__all__ = ["ChatRequest", "CompletionRequest", "EmbeddingRequest"]


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
    # refused with the reason when they ask for what a text model cannot give (shape.py)
    modalities: list[Literal["text", "audio"]] | None = None
    audio: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None


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
