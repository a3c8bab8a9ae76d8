"""The other APIs' requests: Anthropic's Messages and count_tokens, OpenAI's Responses, and
llama-server's own (rerank, infill, tokenize)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AnthropicRequest",
    "CountTokensRequest",
    "InfillRequest",
    "RerankRequest",
    "ResponsesRequest",
    "TokenizeRequest",
]


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
