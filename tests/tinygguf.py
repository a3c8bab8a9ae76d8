"""Tiny GGUF files for the tests: the random-weight llama model (``smackctl.tinymodel``),
and files that must fail: a corrupt one and one of an unknown architecture."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from smackctl.tinymodel import CHAT_TEMPLATE, QUANTS, write_tiny_gguf

__all__ = ["CHAT_TEMPLATE", "QUANTS", "write_alien_gguf", "write_corrupt_gguf", "write_tiny_gguf"]


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
