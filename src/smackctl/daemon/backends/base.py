"""The backend of a model (``backend_for``) and what every backend answers (``Backend``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from smackctl.config import ModelSpec
from smackctl.estimate import Estimate
from smackctl.gguf import GGUFInfo
from smackctl.hardware import physical_cores

from .llama_cpp_python.backend import RUNNER_PROGRAM, LlamaCppPython, llama_cpp_server_argv
from .llama_server import LlamaServer, find_llama_server

__all__ = [
    "RUNNER_PROGRAM",
    "Backend",
    "backend_for",
    "find_llama_server",
    "llama_cpp_server_argv",
    "runner_threads",
]


class Backend(Protocol):
    name: str
    #: the route that answers 200 once the model is loaded
    ready_path: str
    #: the route that says how far the runner's work has gone, answered while it computes
    #: (the hang rule: ``progress_of`` its answer must move while a request is in flight)
    progress_path: str
    #: the environment variable the runner reads its API key from: never a flag, which any
    #: local user reads in ``ps``
    key_env: str
    #: the runner can load another model in its process (``POST /smackctl/load``)
    swaps: bool
    #: its answers to logprobs need no setting (llama_cpp.server needs logits_all)
    logprobs: bool
    #: the `args:` key that makes its runner serve /v1/embeddings
    embeddings_arg: str
    #: it takes OpenAI's `response_format: {type: json_schema}` as it is
    json_schema_format: bool
    #: it passes a user message's content parts to the chat template as they are
    content_parts: bool
    #: the routes besides the OpenAI ones it serves itself (/v1/messages, /v1/responses);
    #: the proxy translates the others to chat requests
    native_apis: frozenset[str]

    def argv(self, spec: ModelSpec, model_path: Path, port: int, name: str) -> list[str]: ...

    def estimate(self, info: GGUFInfo, spec: ModelSpec) -> Estimate: ...

    def handles_tools(self, spec: ModelSpec, info: GGUFInfo | None) -> bool:
        """Its runner offers `tools` to the model and returns the calls as `tool_calls`."""
        ...

    def count_request(self, text: str) -> tuple[str, dict[str, Any]]:
        """(path, body) of the runner's request that counts ``text``'s tokens."""
        ...

    def count_of(self, answer: dict[str, Any]) -> int: ...

    def progress_of(self, answer: Any) -> int:
        """A number that changes whenever the runner gets further with its work, from the
        JSON answer of ``progress_path``."""
        ...


def runner_threads(spec: ModelSpec) -> int:
    """The threads a model's runner computes with: ``threads``, else the physical cores."""
    return spec.threads or physical_cores()


def backend_for(spec: ModelSpec, llama_server: str | None = None) -> Backend:
    """The backend of a model; ``llama_server``: the profile's binary, if it names one."""
    if spec.backend == "llama-server":
        return LlamaServer(llama_server)
    return LlamaCppPython()
