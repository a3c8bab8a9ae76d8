"""GGUF metadata through the ``gguf`` library (imported lazily: it pulls in numpy)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from smackctl.errors import ModelLoadError

__all__ = ["GGUFInfo", "check_magic", "read_info"]

_MAGIC = b"GGUF"


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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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
            f"{path} is not a GGUF file (it starts with {head!r}, not {_MAGIC!r})",
            "the file is corrupt or of another format: pull it again or point the model at "
            "a .gguf file",
        )


def _value(field: Any) -> Any:
    if hasattr(field, "contents"):
        return field.contents()
    # older gguf: parts + data indices
    parts = [field.parts[i] for i in field.data]
    if len(parts) == 1:
        v = parts[0]
        if v.dtype.kind == "u" and v.dtype.itemsize == 1:
            return bytes(v).decode(errors="replace")
        return v.tolist()[0] if v.size == 1 else v.tolist()
    return [bytes(p).decode(errors="replace") for p in parts]


def read_info(path: Path) -> GGUFInfo:
    check_magic(path)
    import gguf

    try:
        reader = gguf.GGUFReader(str(path), "r")
    except Exception as exc:  # ValueError, struct errors, mmap errors on a truncated file
        raise ModelLoadError(
            f"{path} is not a readable GGUF file: {exc}",
            "the file is corrupt or truncated: pull it again with `smackctl models pull`",
        ) from exc
    fields = reader.fields

    def get(key: str) -> Any:
        f = fields.get(key)
        return None if f is None else _value(f)

    arch = get("general.architecture")

    def aget(suffix: str) -> Any:
        return get(f"{arch}.{suffix}") if arch else None

    quant = None
    ft = get("general.file_type")
    if isinstance(ft, int):
        try:
            quant = gguf.LlamaFileType(ft).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            quant = str(ft)
    params = get("general.parameter_count")
    if params is None:
        params = int(sum(int(t.n_elements) for t in reader.tensors)) or None
    heads = aget("attention.head_count")
    emb = aget("embedding_length")
    key_len = aget("attention.key_length")
    if key_len is None and heads and emb:
        key_len = emb // heads
    val_len = aget("attention.value_length") or key_len
    tokens = fields.get("tokenizer.ggml.tokens")
    return GGUFInfo(
        path=str(path),
        file_size=path.stat().st_size,
        architecture=arch,
        name=get("general.name"),
        parameter_count=params,
        quantization=quant,
        context_length=aget("context_length"),
        layers=aget("block_count"),
        embedding_length=emb,
        heads=heads,
        heads_kv=aget("attention.head_count_kv") or heads,
        key_length=key_len,
        value_length=val_len,
        vocab_size=len(tokens.data) if tokens is not None else None,
        has_chat_template="tokenizer.chat_template" in fields,
    )
