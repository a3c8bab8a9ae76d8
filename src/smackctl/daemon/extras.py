"""The routes beside chat: token counting, reranking, fill-in-the-middle, tokenizing.

Each goes to the runner as it is where the backend serves it (llama-server has them all);
where the backend has the same thing under another shape it is asked in that shape
(llama-cpp-python's tokenizer, ``/smackctl/count`` of the runner program); where it has none
the request is refused with the fix, before any load. ``/v1/completions`` with a ``suffix``
becomes the model's own fill-in-the-middle prompt on both backends: llama-cpp-python builds
it from token id 0 (``llama.py``'s "TODO: Fix"), and llama-server ignores ``suffix``.
"""

from __future__ import annotations

from typing import Any

from smackctl.errors import UsageError
from smackctl.gguf import GGUFInfo

from .backends.base import Backend
from .shape import chat_for_runner
from .translate import MESSAGES, to_chat

__all__ = [
    "COUNT",
    "EXTRAS",
    "INFILL",
    "RERANK",
    "TOKENIZE",
    "fim_prompt",
    "for_runner",
    "is_extra",
]

COUNT = "/v1/messages/count_tokens"
RERANK = "/v1/rerank"
INFILL = "/infill"
TOKENIZE = "/tokenize"
COMPLETIONS = "/v1/completions"
EXTRAS = frozenset({COUNT, RERANK, INFILL, TOKENIZE})

_FIM_MODELS = "Qwen2.5-Coder, StarCoder2, CodeLlama, DeepSeek-Coder"


def is_extra(path: str, body: dict[str, Any]) -> bool:
    return path in EXTRAS or (path == COMPLETIONS and body.get("suffix") is not None)


def fim_prompt(fim: tuple[str, str, str], prefix: str, suffix: str) -> str:
    """The prefix-suffix-middle prompt, as llama-server's ``/infill`` builds it: both runners
    read the FIM tokens' text as the special tokens (parsed as special in a prompt)."""
    pre, suf, mid = fim
    return f"{pre}{prefix}{suf}{suffix}{mid}"


def for_runner(
    name: str,
    args: dict[str, Any],
    backend: Backend,
    info: GGUFInfo | None,
    path: str,
    body: dict[str, Any],
) -> tuple[str, dict[str, Any]]:
    """(the runner's path, its body) for an extra route's request to model ``name`` whose
    profile ``args`` are these; a UsageError naming the fix where the model cannot serve it."""
    native = path in backend.native_apis
    if path == COUNT:
        if native:
            return path, body
        chat = to_chat(MESSAGES, {**body, "max_tokens": 1})
        return "/smackctl/count", chat_for_runner(
            chat,
            backend.content_parts,
            backend.json_schema_format,  # a count reads no choice
        )
    if path == TOKENIZE:  # the tokens of `content` as a prompt: special tokens read, BOS first
        if native:
            return path, {**body, "add_special": True, "parse_special": True}
        return "/extras/tokenize", {"input": body["content"]}
    if path == RERANK:
        if not native:
            raise UsageError(
                f"{name} runs on {backend.name}, whose server cannot rerank",
                "serve a reranker model (Qwen3-Reranker, bge-reranker) with "
                "`backend: llama-server` and `args: {reranking: true}` in the profile",
            )
        if not args.get("reranking"):
            raise UsageError(
                f"{name} is not loaded to rerank",
                f"set `args: {{reranking: true}}` for {name} in the profile (a reranker "
                "model: Qwen3-Reranker, bge-reranker), or send the request to one that has it",
            )
        return path, body
    fim = info.fim if info is not None else None
    if fim is None:
        raise UsageError(
            f"{name} cannot fill in the middle: its vocabulary has no fill-in-the-middle "
            "tokens (such as <fim_prefix>), so it was not trained for it",
            f"send the request to a code model trained for it ({_FIM_MODELS})",
        )
    if path == INFILL:
        if native:
            return path, body
        raise UsageError(
            f"{name} runs on {backend.name}, which has no /infill",
            f"send `POST /v1/completions` with `prompt` and `suffix`, or set "
            f"`backend: llama-server` for {name} in the profile",
        )
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise UsageError(
                "`suffix` takes one prompt, not a list of them",
                "send each prompt in a request of its own",
            )
        prompt = prompt[0]
    completion = {k: v for k, v in body.items() if k != "suffix"}
    completion["prompt"] = fim_prompt(fim, str(prompt), str(body["suffix"]))
    return COMPLETIONS, completion
