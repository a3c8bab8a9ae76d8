"""How much memory a model will take once loaded: a pure function of GGUF metadata + params.

    weights   the file size, split between RAM and VRAM by the share of layers offloaded
    kv cache  n_ctx × layers × kv_heads × (key_len + value_len) × 2 bytes (f16 K and V)
    compute   llama.cpp's scratch buffers: the KQ matrix for one micro-batch over the context,
              plus the logits/embedding buffers of one micro-batch
    baseline  the runner process itself (Python, llama_cpp.server, its web stack)

After a load the supervisor measures the real figure and prefers it next time.
"""

from __future__ import annotations

from dataclasses import dataclass

from smackctl.gguf import GGUFInfo

__all__ = ["Estimate", "estimate_memory", "RUNNER_BASELINE"]

#: RSS of ``python -m llama_cpp.server`` before any model (measured: ~70 MB) plus its
#: llama.cpp backend buffers and allocator slack.
RUNNER_BASELINE = 95 * 1024**2
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


def estimate_memory(info: GGUFInfo, n_ctx: int, n_gpu_layers: int = 0) -> Estimate:
    layers = info.layers or 1
    heads = info.heads or 1
    heads_kv = info.heads_kv or heads
    key_len = info.key_length or ((info.embedding_length or 0) // heads)
    val_len = info.value_length or key_len
    kv = n_ctx * layers * heads_kv * (key_len + val_len) * _KV_BYTES
    ub = min(_UBATCH, n_ctx)
    compute = (
        ub * n_ctx * heads * 4
        + ub * ((info.vocab_size or 0) + 4 * (info.embedding_length or 0)) * 4
    )
    weights = info.file_size
    if n_gpu_layers < 0 or n_gpu_layers > layers:
        gpu_share = 1.0
    else:
        gpu_share = n_gpu_layers / (layers + 1)  # +1: the output layer stays on the CPU unless all
    weights_vram = int(weights * gpu_share)
    kv_vram = int(kv * min(1.0, gpu_share * (layers + 1) / layers))
    compute_vram = compute if gpu_share > 0 else 0
    ram = RUNNER_BASELINE + (weights - weights_vram) + (kv - kv_vram) + (compute - compute_vram)
    vram = weights_vram + kv_vram + compute_vram
    return Estimate(
        ram=ram, vram=vram, weights=weights, kv_cache=kv, compute=compute, baseline=RUNNER_BASELINE
    )
