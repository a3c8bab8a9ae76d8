"""How much memory a model's runner will use at its peak: a pure function of GGUF metadata.

    weights   the file size (mmap'd; every page is touched once the model has run), split
              between RAM and VRAM by the share of layers offloaded
    kv cache  n_ctx × layers × kv_heads × (key_len + value_len) × 2 bytes (f16 K and V);
              llama.cpp clears it at start, so all of it is resident at once
    compute   the scratch that a full context touches: one micro-batch's KQ scores over the
              whole context, in f32. llama.cpp *reserves* more (the logits of a whole micro-batch:
              512 MiB for a 262k vocabulary) but a chat request only touches one row of it
    baseline  the runner process itself (Python, llama_cpp.server and its web stack, the
              ggml backends) plus llama.cpp's per-token vocabulary tables

Calibrated against measured peak RSS in ``benchmarks/estimate_accuracy.py`` (BENCHMARKS.md).
After each load the supervisor measures the real figure and prefers it the next time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from smackctl.config import ModelSpec
from smackctl.gguf import GGUFInfo

__all__ = [
    "RUNNER_BASELINE", "SERVER_BASELINE", "Estimate", "estimate_for", "estimate_memory",
    "flash_attention",
]  # fmt: skip

#: RSS of ``python -m llama_cpp.server`` with a tiny model (measured: ~80 MiB)
RUNNER_BASELINE = 85 * 1024**2
#: RSS of llama.cpp's llama-server itself beside the model: its HTTP server and ggml's
#: backends (fitted in benchmarks/estimate_accuracy.py, BENCHMARKS.md)
SERVER_BASELINE = 32 * 1024**2
#: llama-server's batch: a sliding-window layer's cache holds the window plus one batch
_SERVER_BATCH = 2048
#: of every N layers of these architectures, N - 1 use sliding-window attention (llama.cpp's
#: own layer patterns); the rest attend over the whole context
_SWA_PATTERN = {"gemma3": 6, "gemma2": 2}
#: llama.cpp's vocabulary tables: token text, scores, lookup maps (fitted: ~250 B a token)
_VOCAB_BYTES = 250
_UBATCH = 512
_KV_BYTES = 2  # f16


@dataclass(frozen=True)
class Estimate:
    ram: int
    vram: int
    weights: int
    kv_cache: int
    compute: int
    baseline: int
    #: True when ram/vram are a measurement of an earlier load, not this formula
    measured: bool = False

    @property
    def total(self) -> int:
        return self.ram + self.vram


def estimate_for(info: GGUFInfo, spec: ModelSpec) -> Estimate:
    """The estimate for a model as its backend runs it: llama-server holds the KV cache of
    ``parallel`` slots of ``n_ctx`` each (and its ``cache_ram``) and no Python;
    llama_cpp.server one context."""
    if spec.backend == "llama-server":
        swa_full = str(spec.args.get("swa-full", "")).lower() in ("true", "1", "on")
        est = _server_estimate(info, spec.n_ctx, spec.parallel, spec.n_gpu_layers, swa_full)
        if not flash_attention(spec):  # a micro-batch's KQ scores over a slot's context
            heads, total = info.heads or 1, spec.n_ctx * spec.parallel  # (a stream each)
            more = min(_UBATCH, total) * spec.n_ctx * heads * 4 - est.compute
            if est.vram:  # the scratch lives where the compute does (``_split``)
                est = replace(est, vram=est.vram + more, compute=est.compute + more)
            else:
                est = replace(est, ram=est.ram + more, compute=est.compute + more)
        # its prompt caches in RAM (``cache_ram``): all of it, as they may fill it
        return replace(est, ram=est.ram + spec.cache_ram, kv_cache=est.kv_cache + spec.cache_ram)
    return estimate_memory(info, spec.n_ctx, spec.n_gpu_layers)


def flash_attention(spec: ModelSpec) -> bool:
    """Whether llama-server runs a model with flash attention: not on the CPU (measured on
    SmolLM2, a token generated over 1,640 tokens of context: 66 tokens/s without, 35 with;
    over 140: 103 and 99; its prompts read 1.06-1.28× faster with it), llama.cpp's own
    choice once layers are offloaded; ``args: {flash-attn: …}`` decides over both."""
    said = spec.args.get("flash-attn", spec.args.get("fa"))
    if said is None:
        said = "off" if spec.n_gpu_layers == 0 else "auto"
    return str(said).lower() not in ("off", "false", "0")


def _server_estimate(
    info: GGUFInfo, n_ctx: int, slots: int, n_gpu_layers: int, swa_full: bool = False
) -> Estimate:
    """llama-server: ``slots`` sequences of ``n_ctx`` each. Its flash attention (on by default
    on the CPU) never holds a micro-batch's KQ scores over the context, so the compute scratch
    is a small fraction of llama_cpp.server's; a sliding-window layer's KV cache holds the
    window plus a batch per slot, not the whole context (Gemma 3: 15 of its 18 layers),
    unless ``swa_full``."""
    layers = info.layers or 1
    heads = info.heads or 1
    heads_kv = info.heads_kv or heads
    key_len = info.key_length or ((info.embedding_length or 0) // heads)
    val_len = info.value_length or key_len
    per_token = heads_kv * (key_len + val_len) * _KV_BYTES  # one layer
    # ``--swa-full``: every layer keeps the whole context (a saved slot restores then)
    window = info.sliding_window and not swa_full
    pattern = _SWA_PATTERN.get(info.architecture or "") if window else None
    swa_layers = layers - layers // pattern if pattern else 0
    swa_tokens = min(n_ctx, (info.sliding_window or 0) + _SERVER_BATCH) * slots
    kv = per_token * ((layers - swa_layers) * n_ctx * slots + swa_layers * swa_tokens)
    compute = min(_UBATCH, n_ctx) * n_ctx * heads // 2
    return _split(info, kv, compute, SERVER_BASELINE, n_gpu_layers)


def estimate_memory(info: GGUFInfo, n_ctx: int, n_gpu_layers: int = 0) -> Estimate:
    """llama_cpp.server's runner (RUNNER_PROGRAM): one context of ``n_ctx``."""
    layers = info.layers or 1
    heads = info.heads or 1
    heads_kv = info.heads_kv or heads
    key_len = info.key_length or ((info.embedding_length or 0) // heads)
    val_len = info.value_length or key_len
    kv = n_ctx * layers * heads_kv * (key_len + val_len) * _KV_BYTES
    compute = min(_UBATCH, n_ctx) * n_ctx * heads * 4
    return _split(info, kv, compute, RUNNER_BASELINE, n_gpu_layers)


def _split(info: GGUFInfo, kv: int, compute: int, baseline: int, n_gpu_layers: int) -> Estimate:
    """The whole estimate, RAM and VRAM, from its parts: the weights and the KV cache split
    by the share of layers offloaded, the vocabulary tables with the runner in RAM."""
    layers = info.layers or 1
    baseline = baseline + (info.vocab_size or 0) * _VOCAB_BYTES
    weights = info.file_size
    if n_gpu_layers < 0 or n_gpu_layers > layers:
        gpu_share = 1.0
    else:
        gpu_share = n_gpu_layers / (layers + 1)  # +1: the output layer stays on the CPU unless all
    weights_vram = int(weights * gpu_share)
    kv_vram = int(kv * min(1.0, gpu_share * (layers + 1) / layers))
    compute_vram = compute if gpu_share > 0 else 0
    ram = baseline + (weights - weights_vram) + (kv - kv_vram) + (compute - compute_vram)
    vram = weights_vram + kv_vram + compute_vram
    return Estimate(
        ram=ram, vram=vram, weights=weights, kv_cache=kv, compute=compute, baseline=baseline
    )
