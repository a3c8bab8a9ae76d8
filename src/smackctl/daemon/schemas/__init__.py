"""Request bodies of every API the supervisor serves, validated before they reach a runner.

Known fields are typed and range-checked (a wrong type is a 400 naming the field, never a 500
from deep in a runner). Unknown fields are refused: a field the supervisor does not know could
be one that steers a backend (an upstream URL, a file path), and a typo should be said aloud.
"""

from __future__ import annotations

from pydantic import BaseModel

from .openai import ChatRequest, CompletionRequest, EmbeddingRequest
from .others import (
    AnthropicRequest,
    CountTokensRequest,
    InfillRequest,
    RerankRequest,
    ResponsesRequest,
    TokenizeRequest,
)

__all__ = [
    "QUERY_BOUNDS",
    "REQUEST_SCHEMAS",
    "AnthropicRequest",
    "ChatRequest",
    "CompletionRequest",
    "CountTokensRequest",
    "EmbeddingRequest",
    "InfillRequest",
    "RerankRequest",
    "ResponsesRequest",
    "TokenizeRequest",
]

QUERY_BOUNDS: dict[str, tuple[float, float]] = {
    "limit": (1, 10_000),  # GET /api/bench
    "lines": (1, 100_000),  # GET /api/logs
    "since": (0, 1e11),  # GET /api/usage and /api/events, a unix time
    "after": (0, 2**62),  # GET /api/events, an event id
    "follow": (0, 1),  # GET /api/events: 0, the kept events only
}


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
