"""Tiny GGUF files for the tests: the random-weight llama model (``smackctl.tinymodel``),
and files that must fail: a corrupt one, one of an unknown architecture, and hostile headers."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np

from smackctl.tinymodel import CHAT_TEMPLATE, QUANTS, write_tiny_gguf

__all__ = [
    "CHAT_TEMPLATE",
    "QUANTS",
    "write_alien_gguf",
    "write_corrupt_gguf",
    "write_huge_array_gguf",
    "write_huge_dims_gguf",
    "write_long_string_gguf",
    "write_nested_arrays_gguf",
    "write_odd_types_gguf",
    "write_tiny_gguf",
]


def write_corrupt_gguf(path: Path) -> Path:
    """Right magic, garbage after it: passes the cheap check, fails in llama.cpp."""
    path.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    return path


def write_alien_gguf(path: Path) -> Path:
    """A well-formed GGUF of an architecture llama.cpp does not know: only the runner fails."""
    w = gguf.GGUFWriter(str(path), "nonesuch")
    w.add_block_count(1)
    w.add_chat_template(CHAT_TEMPLATE)  # a chat model, as far as its metadata says
    w.add_tensor("x.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# -- hostile headers: well-formed GGUF framing around counts and lengths that are not ---------
# (written byte by byte: the gguf library refuses to write most of them)

_U32, _U64 = "<I", "<Q"
_ARRAY, _STRING, _UINT8 = 9, 8, 0


def _gguf(path: Path, n_tensors: int, kv: bytes, n_kv: int, tensors: bytes = b"") -> Path:
    head = b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv)
    path.write_bytes(head + kv + tensors)
    return path


def _str(s: bytes) -> bytes:
    return struct.pack(_U64, len(s)) + s


def write_huge_dims_gguf(path: Path, dims: int = 100_000) -> Path:
    """One tensor of ``dims`` dimensions, each 2^64 - 1 (GGUF allows 4): 8 bytes a dimension."""
    tensor = _str(b"t") + struct.pack(_U32, dims) + struct.pack(_U64, 2**64 - 1) * dims
    return _gguf(path, 1, b"", 0, tensor + struct.pack("<IQ", 0, 0))


def write_nested_arrays_gguf(path: Path, depth: int = 10_000) -> Path:
    """One metadata value: an array of one array of one array… ``depth`` deep (12 bytes a
    level), the innermost one empty."""
    nested = struct.pack("<IQ", _ARRAY, 1) * depth + struct.pack("<IQ", _UINT8, 0)
    return _gguf(path, 0, _str(b"a") + struct.pack(_U32, _ARRAY) + nested, 1)


def write_long_string_gguf(path: Path) -> Path:
    """A tensor whose name says it is 2^40 bytes long, in a file of a few dozen."""
    tensor = struct.pack(_U64, 2**40) + b"t" + struct.pack(_U32, 1) + struct.pack("<QIQ", 1, 0, 0)
    return _gguf(path, 1, b"", 0, tensor)


def write_huge_array_gguf(path: Path) -> Path:
    """An array that says it holds 2^62 strings, followed by two of them."""
    items = _str(b"x") * 2
    array = struct.pack(_U32, _ARRAY) + struct.pack("<IQ", _STRING, 2**62) + items
    return _gguf(path, 0, _str(b"tokenizer.ggml.tokens") + array, 1)


def write_odd_types_gguf(path: Path) -> Path:
    """A llama header whose counts are of the wrong types: a string block count, a float
    context length, a negative head count (each must read as unknown, never reach arithmetic)."""
    kv = (
        _str(b"general.architecture") + struct.pack(_U32, _STRING) + _str(b"llama")
        + _str(b"llama.block_count") + struct.pack(_U32, _STRING) + _str(b"many")
        + _str(b"llama.context_length") + struct.pack(_U32, 6) + struct.pack("<f", float("nan"))
        + _str(b"llama.attention.head_count") + struct.pack(_U32, 5) + struct.pack("<i", -4)
    )  # fmt: skip
    return _gguf(path, 0, kv, 4)
