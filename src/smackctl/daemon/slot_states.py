"""llama-server's conversations across swaps (issue 32): its slots' KV caches saved as the
model goes (``POST /slots/{id}?action=save`` into ``--slot-save-path``, the state dir's
``kv/slots``), and restored into a slot for the first request whose prompt shares half or
more of its tokens with a saved one (``action=restore``, the request then sent with that
``id_slot``; llama-server keeps the common prefix and computes the rest).

llama-server's ``/slots`` does not say which tokens a slot holds, but the file it saves
does (llama.cpp's ``llama_state_seq_save_file``: ``ggsq``, a version, the token count, the
tokens, then the state): the choice is made on those, against the prompt as llama-server
sees it (``/apply-template``, then ``/tokenize``). A file is named
``IDENTITY-OWNER-TIME-SLOT.bin`` (the model's identity: ``kvstore.identity_of``: a changed
file or ``n_ctx`` finds none). Its owner (``kv_config.owner_of``) restores it, no one else:
llama-server does not say which slot answered a request, so the slots saved of a runner
that answered one owner are that owner's, and those of a runner that answered several are
not saved: no one could restore them (``kv_cache.shared`` makes everyone one owner).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .backends.llama_cpp_python.kvstore import MIN_TOKENS, common_prefix, prune

if TYPE_CHECKING:
    from .runner import Runner

__all__ = ["SlotStates", "read_tokens"]

log = logging.getLogger("smackctl.kv")

_MAGIC = 0x67677371  # 'ggsq': llama.cpp's LLAMA_STATE_SEQ_MAGIC
_CHAT, _COMPLETIONS = "/v1/chat/completions", "/v1/completions"


def read_tokens(path: Path) -> list[int] | None:
    """The tokens a saved slot holds, as the file lists them (None: not such a file). The
    file's version 3 puts a few words of its own before the tokens (measured: ``-1, 1, N``
    ahead of the BOS): ``_common`` finds where the tokens begin."""
    try:
        with path.open("rb") as f:
            magic, _version, n = struct.unpack("<III", f.read(12))
            if magic != _MAGIC or n > 10_000_000:
                return None
            return list(struct.unpack(f"<{n}i", f.read(4 * n)))
    except (OSError, struct.error):
        return None


def _common(saved: list[int], tokens: list[int]) -> int:
    """The tokens ``tokens`` shares from its start with the saved list, wherever in its
    first words the saved tokens begin; 0 when they do not line up."""
    head = tokens[:4]
    for k in range(min(8, len(saved))):
        if saved[k : k + len(head)] == head:
            return common_prefix(saved[k:], tokens)
    return 0


def _owner(path: Path) -> str:
    """Whose a saved slot is: the second word of its name."""
    return path.name.split("-")[1]


class SlotStates:
    def __init__(self, folder: Path, identity: str, parallel: int) -> None:
        self.folder, self.identity, self.parallel = folder, identity, parallel
        #: the saved states of this identity not restored yet: (file, tokens)
        self.waiting: list[tuple[Path, list[int]]] | None = None  # None: not read yet
        self._next = 0
        self._lock = asyncio.Lock()
        #: whose requests this runner answered since it loaded (``kv_config.owner_of``)
        self.owners: set[str] = set()

    def _scan(self) -> list[tuple[Path, list[int]]]:
        found = []
        for path in sorted(self.folder.glob(f"{self.identity}-*-*-*.bin")):
            tokens = read_tokens(path)
            if tokens is None:
                log.warning("discarded the saved state %s: unreadable", path.name)
                path.unlink(missing_ok=True)
            else:
                found.append((path, tokens))
        return found

    async def save(self, r: Runner, max_bytes: int) -> None:
        """Each slot's cache to a file (those worth keeping), then the folder to its cap."""
        if len(self.owners) != 1:  # no one's alone (or no one's): nothing to restore it for
            log.info("%s: its slots are not saved: it served %d keys", r.model, len(self.owners))
            return
        owner, stamp = next(iter(self.owners)), time.time_ns()
        for slot in range(self.parallel):
            name = f"{self.identity}-{owner}-{stamp}-{slot}.bin"
            body = json.dumps({"filename": name}).encode()
            try:
                status, answer = await r._ask("POST", f"/slots/{slot}?action=save", body, 30.0)
                saved = json.loads(answer).get("n_saved", 0) if status == 200 else 0
            except Exception as exc:  # noqa: BLE001 - a save lost costs a prefix, no more
                log.warning("%s: slot %d was not saved: %s", r.model, slot, exc)
                continue
            path = self.folder / name
            if saved < MIN_TOKENS:
                path.unlink(missing_ok=True)
                continue
            with contextlib.suppress(OSError):
                os.chmod(path, 0o600)
            log.info("%s: saved slot %d's KV cache (%d tokens)", r.model, slot, saved)
        if max_bytes:
            await asyncio.to_thread(prune, str(self.folder.parent), max_bytes)

    async def prepare(self, r: Runner, route: str, payload: bytes, owner: str) -> bytes:
        """The request's body, sent to the slot a saved state of ``owner`` was restored into
        when its prompt shares a long enough prefix with one; else as it was."""
        if route not in (_CHAT, _COMPLETIONS):
            return payload
        async with self._lock:
            if self.waiting is None:
                self.waiting = await asyncio.to_thread(self._scan)
            if not any(_owner(path) == owner for path, _ in self.waiting):
                return payload
            try:
                body = json.loads(payload)
                tokens = await self._prompt_tokens(r, route, body)
            except Exception as exc:  # noqa: BLE001 - no restore: computed as usual
                log.debug("%s: no prompt tokens for a restore: %s", r.model, exc)
                return payload
            best, best_n = None, 0
            for path, saved in self.waiting:
                if _owner(path) == owner and (n := _common(saved, tokens)) > best_n:
                    best, best_n = (path, saved), n
            if best is None or best_n < max(MIN_TOKENS, len(tokens) // 2):
                return payload
            self.waiting.remove(best)
            slot = self._next % self.parallel
            self._next += 1
            restore = json.dumps({"filename": best[0].name}).encode()
            status, answer = await r._ask("POST", f"/slots/{slot}?action=restore", restore, 30.0)
            if status != 200:
                log.warning("discarded the saved state %s: it did not load (%s)",
                            best[0].name, answer[:200].decode(errors="replace"))  # fmt: skip
                best[0].unlink(missing_ok=True)
                return payload
            os.utime(best[0])  # the least recently used goes first
            log.info("%s: restored a saved KV cache into slot %d: %d of the prompt's %d "
                     "tokens", r.model, slot, best_n, len(tokens))  # fmt: skip
            return json.dumps({**body, "id_slot": slot}).encode()

    async def _prompt_tokens(self, r: Runner, route: str, body: dict[str, Any]) -> list[int]:
        if route == _CHAT:
            ask = json.dumps({"messages": body.get("messages") or []}).encode()
            status, answer = await r._ask("POST", "/apply-template", ask, 30.0)
            prompt = json.loads(answer)["prompt"] if status == 200 else None
        else:
            prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise ValueError("no prompt text")
        words = {"content": prompt, "add_special": True, "parse_special": True}
        status, answer = await r._ask("POST", "/tokenize", json.dumps(words).encode(), 30.0)
        if status != 200:
            raise ValueError(f"tokenize answered {status}")
        return [int(t) for t in json.loads(answer)["tokens"]]
