"""GGUF metadata, read from the file header.

A small header parser instead of ``gguf.GGUFReader``: the reader maps every vocabulary string
into a numpy array and took 4.3 s on SmolLM2 (49k tokens) and 18 s on Gemma 3 (262k tokens)
here, on every first load. This one reads the key/value section and the tensor infos with
``struct`` over an mmap, skips arrays by their element count, and needs no numpy. The tests
check it field by field against the ``gguf`` library on the same files.
"""

from __future__ import annotations

import mmap
import struct
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from smackctl.errors import ModelLoadError

__all__ = ["FILE_TYPES", "GGUFInfo", "check_magic", "read_info", "read_metadata"]

_MAGIC = b"GGUF"

#: llama.cpp's LLAMA_FTYPE values (llama.h), the names the gguf library uses, less MOSTLY_
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
    38: "MXFP4_MOE",
}  # fmt: skip

# value types of the GGUF format: (struct code, size)
_SCALARS = {0: ("B", 1), 1: ("b", 1), 2: ("H", 2), 3: ("h", 2), 4: ("I", 4), 5: ("i", 4),
            6: ("f", 4), 7: ("?", 1), 10: ("Q", 8), 11: ("q", 8), 12: ("d", 8)}  # fmt: skip
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class GGUFInfo:
    path: str
    file_size: int
    architecture: str | None
    name: str | None
    parameter_count: int | None
    quantization: str | None
    context_length: int | None
    layers: int | None
    embedding_length: int | None
    heads: int | None
    heads_kv: int | None
    key_length: int | None
    value_length: int | None
    vocab_size: int | None
    has_chat_template: bool
    end_token_ids: tuple[int, ...] = ()  # eos, eot, eom: where generation stops
    #: tokens a sliding-window attention layer sees (Gemma 2 and 3), None: every layer global
    sliding_window: int | None = None
    #: the chat template reads `tools` (llama-server then offers them to the model)
    template_tools: bool = False
    #: the fill-in-the-middle tokens (prefix, suffix, middle) of a code model's vocabulary
    fim: tuple[str, str, str] | None = None
    #: llama.cpp's pooling type, set by embedding and reranker models (1 mean, 2 cls,
    #: 3 last, 4 rank); None: a generative model
    pooling_type: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ArrayInfo:
    """An array value: its length, and its items only when it is short."""

    length: int
    items: list[Any] | None


def check_magic(path: Path) -> None:
    """Cheap check that a file is GGUF at all, before a runner is spent on it."""
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise ModelLoadError(
            f"cannot read model file {path}: {exc.strerror}",
            "check the path and permissions, or pull it again with `smackctl models pull`",
        ) from exc
    if head != _MAGIC:
        raise ModelLoadError(
            f"{path} is not a GGUF file (its first bytes are {head.hex(' ') or 'none'}, "
            f"not {_MAGIC.hex(' ')}, 'GGUF')",
            "the file is corrupt or of another format: pull it again, or point the model at "
            "a .gguf file (llama.cpp's convert_hf_to_gguf.py converts other formats)",
        )


#: GGUF's own bound on a tensor's dimensions (ggml.h GGML_MAX_DIMS), and on an element count
MAX_DIMS = 4
_INT64_MAX = 2**63 - 1
#: arrays of arrays deeper than this are refused (llama.cpp's models have none nested)
MAX_ARRAY_DEPTH = 4
#: the fewest bytes a tensor description takes: its name's length, n_dims, type, offset
_MIN_TENSOR = 8 + 4 + 4 + 8
#: ... and a metadata entry: its key's length, its type, a one-byte value
_MIN_KV = 8 + 4 + 1


def _min_size(vtype: int) -> int:
    """The fewest bytes a value of ``vtype`` takes: a scalar its size, a string its length
    field, an array its type and count."""
    if vtype in _SCALARS:
        return _SCALARS[vtype][1]
    if vtype == _STRING:
        return 8
    if vtype == _ARRAY:
        return 12
    raise ValueError(f"unknown GGUF value type {vtype}")


class _Cursor:
    """Reads the header, each count and length checked against the bytes left in the file
    first: a hostile header costs at most a walk of the file, never a loop past its end."""

    def __init__(self, buf: Any) -> None:
        self.buf = buf
        self.pos = 0
        self.end = len(buf)

    def need(self, n: int, what: str) -> None:
        if n > self.end - self.pos:
            raise ValueError(
                f"at byte {self.pos:,}, {what} ({n:,} bytes) runs past the end of the file "
                f"({self.end - self.pos:,} bytes left)"
            )

    def scalar(self, code: str, size: int) -> Any:
        self.need(size, "a value")
        value = struct.unpack_from("<" + code, self.buf, self.pos)[0]
        self.pos += size
        return value

    def string(self) -> str:
        n = self.scalar("Q", 8)
        self.need(n, "a string")
        s = bytes(self.buf[self.pos : self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

    def skip_string(self) -> None:
        n = self.scalar("Q", 8)
        self.need(n, "a string")
        self.pos += n

    def value(self, vtype: int, keep_arrays: int = 64, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            return self.scalar(*_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype != _ARRAY:
            raise ValueError(f"unknown GGUF value type {vtype}")
        if depth >= MAX_ARRAY_DEPTH:
            raise ValueError(
                f"at byte {self.pos:,}, arrays nested more than {MAX_ARRAY_DEPTH} deep"
            )
        etype, count = self.scalar("I", 4), self.scalar("Q", 8)
        self.need(count * _min_size(etype), f"an array of {count:,} values")
        if count <= keep_arrays:
            return ArrayInfo(count, [self.value(etype, depth=depth + 1) for _ in range(count)])
        if etype in _SCALARS:
            self.pos += count * _SCALARS[etype][1]
        elif etype == _STRING:  # a vocabulary: 262k of them in Gemma 3
            buf, pos, end, length = self.buf, self.pos, self.end - 8, _U64.unpack_from
            for _ in range(count):
                if pos > end:
                    self.pos = pos
                    self.need(8, "a string")
                pos += 8 + length(buf, pos)[0]
            self.pos = pos
            if pos > self.end:
                raise ValueError("a string of an array runs past the end of the file")
        else:
            for _ in range(count):
                self.value(etype, 0, depth + 1)
        return ArrayInfo(count, None)

    def tensor_elements(self) -> int:
        """One tensor description read: its element count (its name, type and offset
        skipped), within GGUF's bounds."""
        self.skip_string()
        n_dims = self.scalar("I", 4)
        if n_dims > MAX_DIMS:
            raise ValueError(f"a tensor has {n_dims:,} dimensions; GGUF allows at most {MAX_DIMS}")
        count = 1
        for _ in range(n_dims):
            count *= self.scalar("Q", 8)
        if count > _INT64_MAX:
            raise ValueError("a tensor's dimensions multiply past 2^63 - 1 elements")
        self.need(12, "a tensor's type and offset")
        self.pos += 4 + 8
        return count


#: fill-in-the-middle tokens (prefix, suffix, middle) by family, as llama.cpp's vocabulary
#: recognises them by their text (llama-vocab.cpp)
FIM_FAMILIES = (
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder, SmolLM, Granite
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen
    ("<fim-prefix>", "<fim-suffix>", "<fim-middle>"),
    ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),  # DeepSeek
    ("<PRE>", "<SUF>", "<MID>"),
    ("▁<PRE>", "▁<SUF>", "▁<MID>"),  # CodeLlama
    ("<|code_prefix|>", "<|code_suffix|>", "<|code_middle|>"),  # GLM-4.5
)


def _fim_in(buf: Any, end: int) -> tuple[str, str, str] | None:
    """The FIM family whose three tokens are strings of the header's vocabulary (a GGUF
    string is its length, 8 bytes, then its bytes: searched as such). Most vocabularies have
    none: three scans say so (10 ms in Gemma 3's 6 MB header) before the seven families."""
    if all(buf.find(mark, 0, end) < 0 for mark in (b"fim", b"<PRE>", b"code_prefix")):
        return None
    for family in FIM_FAMILIES:
        if all(buf.find(_U64.pack(len(b := t.encode())) + b, 0, end) >= 0 for t in family):
            return family
    return None


def read_metadata(path: Path) -> tuple[dict[str, Any], int]:
    """The key/value metadata (long arrays as ArrayInfo without items) and the sum of the
    tensors' element counts."""
    meta, params, _ = _read(path)
    return meta, params


def _read(path: Path) -> tuple[dict[str, Any], int, tuple[str, str, str] | None]:
    check_magic(path)
    try:
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            c = _Cursor(mm)
            c.pos = 4
            version = c.scalar("I", 4)
            if version == 1:
                raise ValueError("GGUF version 1 files are not supported")
            n_tensors, n_kv = c.scalar("Q", 8), c.scalar("Q", 8)
            c.need(n_kv * _MIN_KV, f"{n_kv:,} metadata entries")
            meta: dict[str, Any] = {}
            for _ in range(n_kv):
                key = c.string()
                meta[key] = c.value(c.scalar("I", 4))
            c.need(n_tensors * _MIN_TENSOR, f"{n_tensors:,} tensor descriptions")
            params = sum(c.tensor_elements() for _ in range(n_tensors))
            return meta, params, _fim_in(mm, c.pos)
    except (ValueError, struct.error, OSError, OverflowError) as exc:
        raise ModelLoadError(
            f"{path} is not a readable GGUF file: {exc}",
            "the file is corrupt or truncated: pull it again with `smackctl models pull`",
        ) from exc


#: read_info's memory: (path, size, mtime, inode) → the info, or the error (message, hint)
_INFOS: dict[tuple[str, int, int, int], GGUFInfo | tuple[str, str | None]] = {}
_INFOS_MAX = 1024
_INFOS_LOCK = threading.Lock()


def read_info(path: Path) -> GGUFInfo:
    """The file's metadata, read once per path, size, mtime and inode: a file that cannot be
    read is remembered too, and its error raised again without a read."""
    try:
        st = path.stat()
    except OSError as exc:
        raise ModelLoadError(
            f"cannot read model file {path}: {exc.strerror}",
            "check the path and permissions, or pull it again with `smackctl models pull`",
        ) from exc
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    with _INFOS_LOCK:
        got = _INFOS.get(key)
    if got is None:
        try:
            got = _info(path, st.st_size)
        except ModelLoadError as exc:
            got = (exc.message, exc.hint)
        with _INFOS_LOCK:
            if len(_INFOS) >= _INFOS_MAX:
                del _INFOS[next(iter(_INFOS))]
            _INFOS[key] = got
    if isinstance(got, tuple):
        raise ModelLoadError(*got)
    return got


def _count(v: Any) -> int | None:
    """A count or size of the metadata: a whole number >= 0, else None (a hostile file's
    string or float where a count belongs must not reach the estimate's arithmetic)."""
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def _text(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _info(path: Path, file_size: int) -> GGUFInfo:
    meta, params, fim = _read(path)
    arch = _text(meta.get("general.architecture"))

    def a(suffix: str) -> int | None:
        v = meta.get(f"{arch}.{suffix}") if arch else None
        return _count(v if not isinstance(v, ArrayInfo) else (v.items[0] if v.items else None))

    ft = meta.get("general.file_type")
    quant = FILE_TYPES.get(ft, str(ft)) if isinstance(ft, int) else None
    heads, emb = a("attention.head_count"), a("embedding_length")
    key_len = a("attention.key_length")
    if key_len is None and heads and emb:
        key_len = emb // heads
    tokens = meta.get("tokenizer.ggml.tokens")
    return GGUFInfo(
        path=str(path),
        file_size=file_size,
        architecture=arch,
        name=_text(meta.get("general.name")),
        parameter_count=_count(meta.get("general.parameter_count")) or params or None,
        quantization=quant,
        context_length=a("context_length"),
        layers=a("block_count"),
        embedding_length=emb,
        heads=heads,
        heads_kv=a("attention.head_count_kv") or heads,
        key_length=key_len,
        value_length=a("attention.value_length") or key_len,
        vocab_size=tokens.length if isinstance(tokens, ArrayInfo) else None,
        has_chat_template="tokenizer.chat_template" in meta,
        template_tools="tools" in str(meta.get("tokenizer.chat_template") or ""),
        sliding_window=a("attention.sliding_window"),
        fim=fim,
        pooling_type=a("pooling_type"),
        end_token_ids=tuple(
            sorted(
                {
                    v
                    for k in ("eos", "eot", "eom")
                    if (v := _count(meta.get(f"tokenizer.ggml.{k}_token_id"))) is not None
                }
            )
        ),
    )
