"""What a model can do, from its GGUF metadata and its profile entry: shown by `models list`
and `models show`, and read by the proxy to refuse a request a model cannot serve, naming
one that can (before any load)."""

from __future__ import annotations

from typing import Any

from smackctl.config import ModelSpec
from smackctl.gguf import GGUFInfo

from .backends.base import backend_for

__all__ = ["capabilities"]

#: llama.cpp's pooling types (llama.h)
POOLING = {0: None, 1: "mean", 2: "cls", 3: "last", 4: "rank"}


def capabilities(spec: ModelSpec, info: GGUFInfo | None) -> dict[str, Any]:
    """``info`` None: the file is not on disk yet (what the profile says is all we know)."""
    backend = backend_for(spec)
    template = spec.chat is not False and (
        spec.chat_format is not None or (info is not None and info.has_chat_template)
    )
    pooling = POOLING.get(info.pooling_type or 0) if info is not None else None
    embeds = bool(spec.args.get(backend.embeddings_arg)) or bool(spec.args.get("embeddings"))
    return {
        # the file was read (not: it is not on disk yet, so what it can do is not known)
        "read": info is not None,
        # chat messages: a chat template in the file, or a chat format the profile names
        "chat": template,
        # the template handles `tools` and the runner parses the calls
        "tools": template and backend.handles_tools(spec, info),
        # served now (`args: {embedding: true}`), and trained for it (a pooling type)
        "embeddings": embeds,
        "embedding_model": pooling in ("mean", "cls", "last"),
        "rerank": backend.name == "llama-server" and bool(spec.args.get("reranking")),
        "fill_in_the_middle": info is not None and info.fim is not None,
        "vision": bool(spec.args.get("mmproj")),  # a multimodal projector file
        "pooling": pooling,
        "context": spec.n_ctx,
        "context_trained": info.context_length if info is not None else None,
        "architecture": info.architecture if info is not None else None,
        "parameters": info.parameter_count if info is not None else None,
        "quantization": info.quantization if info is not None else None,
    }
