"""llama.cpp's native ``llama-server``: ``parallel`` slots with continuous batching.

Flags, each for a reason:
- ``--host 127.0.0.1``, a random port, a per-runner key in ``LLAMA_API_KEY`` (the
  environment, not the command line, which any user on the machine can read in ``ps``);
- ``--no-webui``: the runner answers the supervisor only;
- ``-np parallel`` and ``-c n_ctx × parallel``: each slot gets the model's whole ``n_ctx``
  (the KV cache is split between slots); the supervisor lets ``parallel`` requests in at once
  and queues the rest;
- ``--cache-ram``: the model's ``cache_ram`` (0 unless set): llama-server's default keeps
  up to 8 GiB of prompt caches in RAM, memory the budget would not see; set, the whole of it
  is in the model's estimate;
- ``--fit off``: its default loads the model a first time to fit unset settings to the
  device's memory; the supervisor sets them all and plans memory itself, and the trial
  load nearly doubled Gemma 3's start here (1.5 s against 0.8 s);
- ``--no-warmup``: readiness is ``/health``, and the first request does the warm-up's work
  anyway; a start to the first token was ~0.05 s sooner without it (Gemma 3, SmolLM2);
- ``--batch-size 512`` (its default 2048): a prompt is decoded in batches of this many
  tokens, and its progress (``/slots``) moves once per batch: the hang rule sees a long
  prompt move 4 times as often (512 is the micro-batch, the unit of work on a CPU anyway);
- ``--flash-attn off`` on the CPU (``estimate.flash_attention``: a token generated over a
  long context ~2× faster without it here; ``auto`` once layers are offloaded);
- ``--jinja``: the model's own chat template, tools included; ``--metrics`` for ``/metrics``;
- ``--alias NAME``: answers name the model, not its file;
- ``--slot-save-path``: its slots' KV caches saved as the model goes and restored when a
  conversation comes back (slot_states.py).
Ready means ``GET /health`` answers 200 (503 while the model loads).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smackctl.config import ModelSpec
from smackctl.errors import ModelLoadError
from smackctl.estimate import Estimate, estimate_for, flash_attention
from smackctl.gguf import GGUFInfo
from smackctl.hardware import physical_cores
from smackctl.paths import find_llama_server

__all__ = ["LlamaServer", "find_llama_server", "slot_folder"]  # find_… lives in paths.py


def slot_folder() -> Path:
    """Where llama-server saves its slots' KV caches (``--slot-save-path``): the state
    dir's ``kv/slots``, readable by this user only (slot_states.py)."""
    from smackctl.paths import get_paths

    folder = get_paths().state_dir / "kv" / "slots"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


class LlamaServer:
    name = "llama-server"
    ready_path = "/health"
    # answered during a decode too (its task queue's worker reads the slots while the main
    # thread computes); the counts move once per batch (``--batch-size``)
    progress_path = "/slots"
    key_env = "LLAMA_API_KEY"
    swaps = False
    logprobs = True
    embeddings_arg = "embeddings"
    json_schema_format = True
    content_parts = True
    # its /v1/responses stream lacks `content_index` in text deltas (the official client's
    # stream helper fails on it): translated like llama-cpp-python's
    native_apis: frozenset[str] = frozenset(
        {"/v1/messages", "/v1/messages/count_tokens", "/v1/rerank", "/infill", "/tokenize"}
    )

    def __init__(self, binary: str | None = None) -> None:
        self.configured = binary

    def handles_tools(self, spec: ModelSpec, info: GGUFInfo | None) -> bool:
        # with --jinja it renders `tools` through the template, when the template reads them
        # (a template that does not: the tools never reach the model, measured with SmolLM2)
        if spec.chat_format:
            return True  # a template the user chose: theirs to know
        return info is None or info.template_tools

    def binary(self) -> str:
        found = find_llama_server(self.configured)
        if found is None:
            where = self.configured or "beside Python or on PATH"
            raise ModelLoadError(
                f"no llama-server binary ({where})",
                "`make install` builds it into the venv; or set `llama_server: PATH` in the "
                "profile to a binary you built",
            )
        return found

    def argv(self, spec: ModelSpec, model_path: Path, port: int, name: str) -> list[str]:
        threads = str(spec.threads or physical_cores())
        layers = spec.n_gpu_layers if spec.n_gpu_layers >= 0 else 999  # -1: every layer
        argv = [
            self.binary(),
            "--model", str(model_path),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--no-webui",
            "--parallel", str(spec.parallel),
            "--ctx-size", str(spec.n_ctx * spec.parallel),
            "--threads", threads,
            "--threads-batch", threads,
            "--n-gpu-layers", str(layers),
            "--cache-ram", str(-(-spec.cache_ram // 2**20)),  # MiB, rounded up
            "--batch-size", "512",
            "--flash-attn", "auto" if flash_attention(spec) else "off",  # args may say "on"
            "--fit", "off",
            "--no-warmup",
            "--jinja",
            "--metrics",
            "--alias", name,
            "--slot-save-path", str(slot_folder()),
        ]  # fmt: skip
        if spec.chat_format:
            argv += ["--chat-template", spec.chat_format]
        for key, value in sorted(spec.args.items()):
            if value is True:
                argv.append(f"--{key}")
            elif value is not False:
                argv += [f"--{key}", str(value)]
        return argv

    def estimate(self, info: GGUFInfo, spec: ModelSpec) -> Estimate:
        return estimate_for(info, spec)  # the KV cache of every slot, no Python

    def count_request(self, text: str) -> tuple[str, dict[str, Any]]:
        return "/tokenize", {"content": text, "add_special": True}

    def count_of(self, answer: dict[str, Any]) -> int:
        return len(answer["tokens"])

    def progress_of(self, answer: Any) -> int:
        """The prompt tokens decoded and the tokens generated, over every slot, plus the
        tasks' ids (a new task is progress too)."""
        total = 0
        for slot in answer:
            total += int(slot.get("n_prompt_tokens_processed") or 0) + int(slot.get("id_task") or 0)
            total += sum(int(t.get("n_decoded") or 0) for t in slot.get("next_token") or [])
        return total
