"""A tiny llama-architecture GGUF file with random weights (~0.4 MB F32, loads in ~10 ms).

A vocabulary of 259 tokens (<unk>, <s>, </s> and the 256 bytes), ``layers`` blocks of width
``dim``: real llama.cpp loads and runs it and generates gibberish. Greedy decoding
(temperature 0) makes the gibberish repeatable, and the output layer is shaped so that it is
printable ASCII and never stops before max_tokens.

The tests use it for their many models; ``smackctl doctor`` (``selftest.py``) writes a
quantized one to check that this machine's llama.cpp build decodes without crashing.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

__all__ = ["CHAT_TEMPLATE", "QUANTS", "write_tiny_gguf"]

#: the weight types ``write_tiny_gguf`` can write
QUANTS = ("F32", "Q8_0", "Q4_0")

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def write_tiny_gguf(
    path: Path,
    *,
    dim: int = 64,
    layers: int = 2,
    heads: int = 4,
    heads_kv: int = 2,
    ff: int = 128,
    context: int = 4096,
    seed: int = 0,
    name: str = "tiny-llama",
    chat_template: str | None = CHAT_TEMPLATE,
    quant: str = "F32",
    fim: bool = False,
    rerank: bool = False,
    embedding: bool = False,
) -> Path:
    """``quant``: F32, or Q8_0 / Q4_0 for the attention and feed-forward matrices (quantized
    with the gguf library's own helpers). A quantized model runs llama.cpp's quantized matmul
    kernels, the ones a build for the wrong CPU features crashes in (Intel AMX); an F32 model
    never reaches them.

    ``fim``: the vocabulary has StarCoder's fill-in-the-middle tokens (``<fim_prefix>``,
    ``<fim_suffix>``, ``<fim_middle>``), as code models do. ``rerank``: a reranker, the shape
    of Qwen3-Reranker (the qwen3 architecture, rank pooling, a two-label ``cls.output``
    head) that llama-server's ``--reranking`` serves. ``embedding``: trained for embeddings,
    as far as its metadata says (mean pooling)."""
    rng = np.random.default_rng(seed)
    tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(256)]
    extra = [b"<fim_prefix>", b"<fim_suffix>", b"<fim_middle>"] if fim else []
    tokens += extra
    arch = "qwen3" if rerank else "llama"
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_context_length(context)
    w.add_embedding_length(dim)
    w.add_block_count(layers)
    w.add_feed_forward_length(ff)
    w.add_rope_dimension_count(dim // heads)
    w.add_head_count(heads)
    w.add_head_count_kv(heads_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(
        {
            "F32": gguf.LlamaFileType.ALL_F32,
            "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
            "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
        }[quant]
    )
    _tokenizer(w, tokens, len(extra), chat_template)
    if embedding:
        w.add_pooling_type(gguf.PoolingType.MEAN)
    if rerank:
        w.add_pooling_type(gguf.PoolingType.RANK)
        w.add_array(f"{arch}.classifier.output_labels", ["yes", "no"])
    qtype = {
        "F32": None,
        "Q8_0": gguf.GGMLQuantizationType.Q8_0,
        "Q4_0": gguf.GGMLQuantizationType.Q4_0,
    }[quant]
    _weights(w, rng, qtype, len(tokens), dim, layers, heads, heads_kv, ff, rerank)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _tokenizer(
    w: gguf.GGUFWriter, tokens: list[bytes], extra: int, chat_template: str | None
) -> None:
    """A byte-level llama tokenizer: <unk>, <s>, </s>, the 256 bytes, ``extra`` controls."""
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types(
        [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
        + [gguf.TokenType.BYTE] * 256
        + [gguf.TokenType.CONTROL] * extra
    )
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    if chat_template is not None:
        w.add_chat_template(chat_template)


def _weights(
    w: gguf.GGUFWriter,
    rng: np.random.Generator,
    qtype: gguf.GGMLQuantizationType | None,
    vocab: int,
    dim: int,
    layers: int,
    heads: int,
    heads_kv: int,
    ff: int,
    rerank: bool,
) -> None:
    head_dim = dim // heads
    kv_dim = head_dim * heads_kv

    def t(tensor_name: str, *shape: int, quantize: bool = True) -> None:
        data = (rng.standard_normal(shape) * 0.02).astype(np.float32)
        if qtype is None or not quantize:
            w.add_tensor(tensor_name, data)
        else:
            w.add_tensor(tensor_name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)

    t("token_embd.weight", vocab, dim, quantize=False)
    w.add_tensor("output_norm.weight", np.ones(dim, dtype=np.float32))
    # Output rows: large random weights for printable ASCII bytes, zeros for everything else.
    # Logits of the zero rows are exactly 0 while the best ASCII logit is ~+20, so the model
    # streams readable characters steadily and never ends early on </s>; random non-ASCII bytes
    # would form invalid UTF-8 that llama-cpp-python holds back until the answer ends.
    out = np.zeros((vocab, dim), dtype=np.float32)
    printable = range(3 + 0x20, 3 + 0x7F)
    out[list(printable)] = rng.standard_normal((len(printable), dim)).astype(np.float32)
    w.add_tensor("output.weight", out)
    if rerank:
        t("cls.output.weight", 2, dim, quantize=False)
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(dim, dtype=np.float32))
        t(f"blk.{i}.attn_q.weight", dim, dim)
        t(f"blk.{i}.attn_k.weight", kv_dim, dim)
        t(f"blk.{i}.attn_v.weight", kv_dim, dim)
        t(f"blk.{i}.attn_output.weight", dim, dim)
        if rerank:  # qwen3 normalises each head's queries and keys
            w.add_tensor(f"blk.{i}.attn_q_norm.weight", np.ones(head_dim, dtype=np.float32))
            w.add_tensor(f"blk.{i}.attn_k_norm.weight", np.ones(head_dim, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(dim, dtype=np.float32))
        t(f"blk.{i}.ffn_gate.weight", ff, dim)
        t(f"blk.{i}.ffn_up.weight", ff, dim)
        t(f"blk.{i}.ffn_down.weight", dim, ff)
