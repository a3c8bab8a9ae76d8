"""Conversations that survive a swap (issue 32), in the runner program: the KV cache of the
model's sequence saved to disk as the model goes (``save``: an unload, an eviction, a swap
in this process, the supervisor's stop), and restored as a request comes whose prompt
shares a long enough prefix of tokens with a saved one (``restore_for``, called by
``Llama.generate`` before it looks for its own cached prefix: llama-cpp-python then keeps
the common prefix and computes the rest, as it does between two turns).

Where: ``kv/`` beside the runner's log folder (the state dir's), one folder per
model identity (the file's real path, size and time, and the settings that change the
cache: ``n_ctx``, the cache's types): a changed file or ``n_ctx`` finds nothing, and a
save for a changed file removes the old file's folder. A file: ``SMKV1``, a JSON line
(``n`` tokens, ``bytes``), the tokens (int32), then llama.cpp's sequence state. Folders
0700, files 0600; written whole then renamed. A state that fails to load is removed and
the prompt computed as usual. Each state keeps its owner (``OWNER``: the key of the request
that made the sequence, as the supervisor says it, ``kv_config.owner_of``): only a request
of the same owner restores it.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from .words import LOGS_ENV

__all__ = [
    "MIN_TOKENS", "OWNER", "common_prefix", "flush", "identity", "identity_of", "kv_root",
    "prune", "restore_for", "save",
]  # fmt: skip

MAGIC = b"SMKV1\n"
#: a prefix shorter than this is not worth a restore (nor a state worth a save)
MIN_TOKENS = 32
_INDEX: dict[str, list[tuple[str, list[int], str]]] = {}  # folder -> [(file, tokens, owner)]
#: whose the request being answered is (its ``X-Smackctl-Kv-Owner``); "" when not said
OWNER: ContextVar[str] = ContextVar("smackctl_kv_owner", default="")
#: the states being written on threads of their own (``save(…, background=True)``)
_WRITING: list[threading.Thread] = []


def _say(line: str) -> None:
    print(f"smackctl runner: {line}", file=sys.stderr, flush=True)


def identity(llama: Any) -> tuple[str, dict[str, Any]] | None:
    """The folder name of this model's saved states, and what it stands for."""
    cached = getattr(llama, "_smackctl_kv_id", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    params = llama.context_params
    found = identity_of(llama.model_path, llama.n_ctx(), type_k=int(params.type_k),
                        type_v=int(params.type_v))  # fmt: skip
    llama._smackctl_kv_id = found
    return found


def identity_of(path: str, n_ctx: int, **cache: Any) -> tuple[str, dict[str, Any]] | None:
    """A model's identity as far as its KV cache goes: the file (its real path, size and
    time: a changed file is another model), ``n_ctx`` and what else shapes the cache."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError:
        return None
    what = {"path": real, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "n_ctx": n_ctx,
            **cache}  # fmt: skip
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16], what


def kv_root() -> str | None:
    """The state dir's ``kv/``: beside the log folder the supervisor gave the runner."""
    logs = os.environ.get(LOGS_ENV)
    return os.path.join(os.path.dirname(logs.rstrip("/")), "kv") if logs else None


def _folder(llama: Any) -> tuple[str, dict[str, Any]] | None:
    root = kv_root()
    found = identity(llama) if root else None
    if root is None or found is None:
        return None
    return os.path.join(root, found[0]), found[1]


def _index(folder: str) -> list[tuple[str, list[int], str]]:
    if folder not in _INDEX:
        entries = []
        with contextlib.suppress(OSError):
            for name in sorted(os.listdir(folder)):
                if name.endswith(".kv"):
                    found = _read_tokens(os.path.join(folder, name))
                    if found is not None:
                        entries.append((os.path.join(folder, name), *found))
        _INDEX[folder] = entries
    return _INDEX[folder]


def _read_tokens(path: str) -> tuple[list[int], str] | None:
    import numpy as np

    try:
        with open(path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                raise ValueError("not a saved state")
            head = json.loads(f.readline())
            tokens: list[int] = np.frombuffer(f.read(4 * int(head["n"])), dtype=np.int32).tolist()
            return tokens, str(head.get("owner", ""))
    except (OSError, ValueError, KeyError, TypeError):
        _discard(path, "unreadable")
        return None


def _discard(path: str, why: str) -> None:
    _say(f"discarded the saved state {os.path.basename(path)}: {why}")
    with contextlib.suppress(OSError):
        os.unlink(path)
    for entries in _INDEX.values():
        entries[:] = [e for e in entries if e[0] != path]


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many tokens two lists share from their start."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def flush() -> None:
    """Wait for the states still being written (``save(…, background=True)``)."""
    while _WRITING:
        _WRITING.pop().join()


def save(
    llama: Any, background: bool = False, then: Callable[[], Any] | None = None
) -> dict[str, Any]:
    """Take the sequence the model holds now and write it (``background``: on a thread of
    its own, the caller going on at once: a swap need not wait for the disk; the process
    waits for it before it exits, and ``flush`` does), then ``then()``; what is written (or
    why not)."""
    import llama_cpp as lib

    if not background:
        flush()
    where = _folder(llama)
    n = int(getattr(llama, "n_tokens", 0))
    if where is None or n < MIN_TOKENS:
        return {"saved": False, "why": "nothing worth keeping" if where else "no folder"}
    folder, what = where
    tokens = [int(t) for t in llama.input_ids[:n]]
    owner = str(getattr(llama, "_smackctl_kv_owner", ""))  # whose request made the sequence
    for path, held, by in _index(folder):
        if by == owner and held[: len(tokens)] == tokens and len(held) >= len(tokens):
            os.utime(path)  # kept already (a longer one holds it): just fresh again
            return {"saved": False, "why": "kept already", "file": os.path.basename(path)}
    import numpy as np

    ctx = llama._ctx.ctx
    size = int(lib.llama_state_seq_get_size(ctx, 0))
    buf = np.empty(size, dtype=np.uint8)  # not zeroed, and written out without a copy
    written = int(lib.llama_state_seq_get_data(ctx, _pointer(buf), size, 0))
    if written <= 0:
        return {"saved": False, "why": "llama.cpp gave no state"}
    name = os.path.join(folder, f"{time.time_ns()}.kv")

    def write() -> None:
        try:
            os.makedirs(folder, mode=0o700, exist_ok=True)
            _forget_other_files(os.path.dirname(folder), what)
            with open(os.path.join(folder, "model.json"), "w") as f:
                json.dump(what, f)
            tmp = name + ".part"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                head = {"n": n, "bytes": written, "owner": owner}
                f.write(MAGIC + json.dumps(head).encode() + b"\n")
                f.write(np.asarray(tokens, dtype=np.int32).tobytes())
                f.write(buf[:written].data)
            os.replace(tmp, name)
            _index(folder).append((name, tokens, owner))  # restorable once whole
            _say(f"saved the KV cache of {n} tokens ({written} bytes)")
        except OSError as exc:  # a save lost costs a prefix, no more
            _say(f"the KV cache was not saved: {exc}")
        if then is not None:
            then()

    if background:
        writing = threading.Thread(target=write, name="smackctl-kv-save")
        writing.start()  # not a daemon: the process waits for it as it exits
        _WRITING[:] = [*(w for w in _WRITING if w.is_alive()), writing]  # the done ones go
    else:
        write()
    return {"saved": True, "tokens": n, "bytes": written, "file": os.path.basename(name),
            "background": background}  # fmt: skip


def _forget_other_files(root: str, what: dict[str, Any]) -> None:
    """Remove the folders of this model's file as it was before it changed."""
    import shutil

    with contextlib.suppress(OSError):
        for name in os.listdir(root):
            meta = os.path.join(root, name, "model.json")
            try:
                with open(meta) as f:
                    old = json.load(f)
            except (OSError, ValueError):
                continue
            changed = (old.get("size"), old.get("mtime_ns")) != (what["size"], what["mtime_ns"])
            if old.get("path") == what["path"] and changed:
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
                _INDEX.pop(os.path.join(root, name), None)
                _say(f"removed the saved states of {what['path']} as it was before it changed")


def _pointer(array: Any) -> Any:
    """A numpy byte array as the ``uint8_t *`` llama.cpp's state functions take."""
    return array.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))


def restore_for(llama: Any, tokens: list[int], owner: str = "") -> int:
    """Load the saved state of ``owner`` that shares the longest prefix with ``tokens`` when
    it is worth it (half the prompt or more, and more than the model holds now); the tokens
    restored."""
    import llama_cpp as lib
    import numpy as np

    where = _folder(llama)
    if where is None or not os.path.isdir(where[0]) or len(tokens) < MIN_TOKENS:
        return 0
    held = common_prefix([int(t) for t in llama.input_ids[: llama.n_tokens]], tokens)
    best, best_n = None, 0
    for path, saved, by in _index(where[0]):
        n = common_prefix(saved, tokens) if by == owner else 0
        if n > best_n:
            best, best_n = (path, saved), n
    if best is None or best_n <= held or best_n < max(MIN_TOKENS, len(tokens) // 2):
        return 0
    path, saved = best
    try:
        with open(path, "rb") as f:
            f.read(len(MAGIC))
            head = json.loads(f.readline())
            f.seek(4 * int(head["n"]), os.SEEK_CUR)
            size = int(head["bytes"])
            if not 0 < size <= os.fstat(f.fileno()).st_size:
                raise ValueError("its length is not the file's")
            blob = np.empty(size, dtype=np.uint8)  # read in place: no copy
            if f.readinto(blob.data) != len(blob) or f.read(1):
                raise ValueError("truncated")
        ctx = llama._ctx.ctx
        llama._ctx.kv_cache_seq_rm(-1, 0, -1)
        if int(lib.llama_state_seq_set_data(ctx, _pointer(blob), len(blob), 0)) == 0:
            raise ValueError("llama.cpp refused it")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        llama._ctx.kv_cache_seq_rm(-1, 0, -1)
        llama.n_tokens = 0
        _discard(path, f"it did not load ({exc}); the prompt is computed as usual")
        return 0
    llama.input_ids[: len(saved)] = saved
    llama.n_tokens = len(saved)
    llama._requires_eval = True
    os.utime(path)  # the least recently used goes first
    _say(f"restored a saved KV cache: {best_n} of the prompt's {len(tokens)} tokens")
    return best_n


def prune(root: str, max_bytes: int) -> list[str]:
    """Remove the least recently used saved states (both backends') until the folder holds
    ``max_bytes``."""
    files = []
    for folder, _, names in os.walk(root):
        for name in names:
            if name.endswith((".kv", ".bin")):  # .bin: llama-server's slots (slot_states.py)
                path = os.path.join(folder, name)
                with contextlib.suppress(OSError):
                    st = os.stat(path)
                    files.append((st.st_mtime_ns, st.st_size, path))
    total = sum(size for _, size, _ in files)
    gone = []
    for _, size, path in sorted(files):
        if total <= max_bytes:
            break
        _discard(path, f"the KV cache folder is over its {max_bytes} bytes")
        total -= size
        gone.append(os.path.basename(path))
    return gone
