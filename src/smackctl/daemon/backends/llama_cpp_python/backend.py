"""llama-cpp-python's ``llama_cpp.server``, run as its runner program (``RUNNER_PROGRAM``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from smackctl.config import ModelSpec
from smackctl.estimate import Estimate, estimate_for
from smackctl.gguf import GGUFInfo
from smackctl.hardware import physical_cores

from .words import KEY_ENV

__all__ = ["RUNNER_PROGRAM", "LlamaCppPython", "llama_cpp_server_argv"]

#: the runner program: llama_cpp.server's app and flags, plus a route that lets the process
#: take the next model (``runner``)
RUNNER_PROGRAM = [sys.executable, "-m", "smackctl.daemon.backends.llama_cpp_python.runner"]


def _flag(value: str | int | float | bool) -> str:
    return str(value) if not isinstance(value, bool) else ("True" if value else "False")


def llama_cpp_server_argv(
    spec: ModelSpec, model_path: Path, port: int, api_key: str | None = None
) -> list[str]:
    """llama_cpp.server's flags with safe defaults, for ``RUNNER_PROGRAM``.

    - ``--interrupt_requests False``: its default lets a second request silently truncate
      the first stream; the supervisor queues instead.
    - 127.0.0.1, and a per-runner random key in the environment (``words.KEY_ENV``): with no
      key it accepts any Host and reflects any Origin, so any web page could drive it; on
      the command line any local user would read it in ``ps``. ``api_key``: a key flag for
      llama_cpp.server started by hand (the benchmarks' baseline), never the supervisor's.
    - ``--n_threads`` defaults to the physical cores (its own default is 1).
    - ``--logits_all False``: its default keeps a float32 logits row for every context
      position (n_ctx × vocab × 4 bytes: 1.5 GiB for SmolLM2 at n_ctx 8192, 8 GiB for a
      262k-vocabulary model), needed only for prompt logprobs. ``args: {logits_all: true}``
      in the profile turns it back on for a model that must return logprobs.
    """
    threads = spec.threads or physical_cores()
    flags: dict[str, str] = {
        "model": str(model_path),
        "host": "127.0.0.1",
        "port": str(port),
        **({"api_key": api_key} if api_key is not None else {}),
        "interrupt_requests": "False",
        "n_ctx": str(spec.n_ctx),
        "n_threads": str(threads),
        "n_threads_batch": str(threads),
        "n_gpu_layers": str(spec.n_gpu_layers),
        "logits_all": "False",
    }
    if spec.chat_format:
        flags["chat_format"] = spec.chat_format
    for key, value in sorted(spec.args.items()):
        flags[key] = _flag(value)
    # --flag=value: a value that starts with '-' can never be read as another flag
    return [*RUNNER_PROGRAM, *(f"--{k}={v}" for k, v in flags.items())]


#: llama-cpp-python's chat formats that take `tools` and answer `tool_calls`
TOOL_FORMATS = frozenset(
    {"chatml-function-calling", "functionary", "functionary-v1", "functionary-v2"}
)


class LlamaCppPython:
    name = "llama-cpp-python"
    ready_path = "/v1/models"  # llama_cpp.server has no /health
    # the runner program's: answered on its event loop, while a request computes in a thread
    progress_path = "/smackctl/alive"
    key_env = KEY_ENV
    swaps = True
    logprobs = False
    embeddings_arg = "embedding"
    json_schema_format = False
    content_parts = False
    native_apis: frozenset[str] = frozenset()

    def argv(self, spec: ModelSpec, model_path: Path, port: int, name: str) -> list[str]:
        del name  # the proxy puts the model's name in every request, which answers echo
        return llama_cpp_server_argv(spec, model_path, port)

    def handles_tools(self, spec: ModelSpec, info: GGUFInfo | None) -> bool:
        # its Jinja formatter renders the GGUF's template without `tools` and never parses a
        # call: only its function-calling chat formats do both
        return spec.chat_format in TOOL_FORMATS

    def estimate(self, info: GGUFInfo, spec: ModelSpec) -> Estimate:
        return estimate_for(info, spec)

    def count_request(self, text: str) -> tuple[str, dict[str, Any]]:
        return "/extras/tokenize/count", {"input": text}

    def count_of(self, answer: dict[str, Any]) -> int:
        return int(answer["count"])

    def progress_of(self, answer: Any) -> int:
        # bumped by every decode, and by every graph node of a prompt's batch (patches.py)
        return int(answer["progress"])
