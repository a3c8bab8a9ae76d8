"""A runner process kept for the next load: ``Spare`` (imports done, no model yet) and
``Vacated`` (a model just unloaded from it: the next model loads in place)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from smackctl.errors import ModelLoadError

from .backends.base import RUNNER_PROGRAM
from .backends.llama_cpp_python.words import LOGS_ENV
from .process import open_log, runner_env, shown, signal_group, start_child
from .upstream import TransportError

if TYPE_CHECKING:
    from .runner import Runner

__all__ = ["keep_conversations", "Spare", "Vacated", "load_in"]

log = logging.getLogger("smackctl.kv")


class Spare:
    """A runner process with the imports done, waiting for its model (``runner --spare``).

    Same hygiene as a runner: own process group, killed by the kernel with the supervisor.
    """

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with open_log(self.log_path) as log:
            log.write(f"\n=== {time.strftime('%F %T')} spare starting\n".encode())
            log.flush()
            argv = [*RUNNER_PROGRAM, "--spare"]
            env = runner_env({LOGS_ENV: str(self.log_path.parent)})
            self.proc = await start_child(argv, log, stdin=asyncio.subprocess.PIPE, env=env)

    @property
    def alive(self) -> bool:
        return self.proc is not None and not _gone(self.proc)

    def hand(
        self, args: Sequence[str], log_path: Path, key: str
    ) -> asyncio.subprocess.Process | None:
        """Make it the runner started with ``args`` and ``key``, logging to ``log_path`` (a
        file of the spare's log folder); None if it died."""
        proc, self.proc = self.proc, None
        if proc is None or _gone(proc) or proc.stdin is None:
            return None
        if log_path.parent != self.log_path.parent:
            raise RuntimeError(f"{log_path} is not in the spare's log folder")
        order = {"args": list(args), "log": log_path.name, "key": key}
        try:
            proc.stdin.write(json.dumps(order).encode())
            proc.stdin.write(b"\n")
            proc.stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            return None
        return proc

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # no order: it exits by itself
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 2.0)
        signal_group(proc.pid, signal.SIGKILL, leader_gone=proc.returncode is not None)
        await proc.wait()


def _gone(proc: asyncio.subprocess.Process) -> bool:
    """The process is dead: reaped, or killed and not yet reaped (a zombie: ``returncode``
    says so only once asyncio's watcher has waited for it, and an order written to its stdin
    in between went nowhere: the load handed to it died, -9, as a 500)."""
    if proc.returncode is not None:
        return True
    try:
        return bool(psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


@dataclass
class Vacated:
    """The process of a runner whose model was just unloaded, kept for the next load: it
    loads that model in place (``POST /smackctl/load``, the runner program) with its port and key.
    ``keep_old``: memory has room for both models, so the old one is freed after the load
    (``Runner.free_old``), off the swap's path."""

    proc: asyncio.subprocess.Process
    port: int
    api_key: str
    model: str
    keep_old: bool
    #: the KV cache folder's cap: the model that goes saves its conversations (0: none)
    save_kv: int = 0

    async def discard(self) -> None:
        signal_group(self.proc.pid, signal.SIGKILL, leader_gone=self.proc.returncode is not None)
        await self.proc.wait()


async def load_in(self: Runner, v: Vacated) -> bool:
    """Load ``self``'s model in a vacated process: True once it answers; False when
    the process cannot take it (another program, other server settings: it is ended and
    a fresh one starts); ModelLoadError when the load itself fails."""
    argv = list(self._argv_for(v.port))
    n = len(RUNNER_PROGRAM)
    if argv[:n] != RUNNER_PROGRAM or v.proc.returncode is not None:
        await v.discard()
        return False
    self.port, self.api_key, self.proc, self.hosted = v.port, v.api_key, v.proc, True
    self.reused = self._port_checked = True  # its predecessor checked the listener
    with open_log(self.log_path) as log:
        log.write(
            f"\n=== {time.strftime('%F %T')} loading in the process of {v.model} "
            f"(pid {v.proc.pid}): {shown(argv, self.api_key)}\n".encode()
        )
    self._watch_process()
    order = {"args": argv[n:], "log": self.log_path.name, "keep_old": v.keep_old,
             "save_kv": v.save_kv}  # fmt: skip
    try:
        status, body = await self._post_own(
            "/smackctl/load", json.dumps(order).encode(), self.ready_timeout
        )
    except TransportError as exc:
        status, body = None, str(exc).encode()
    if status == 200:
        self.holds_old = v.keep_old
        return True
    if status == 409:  # it needs a process of its own
        await v.discard()
        await self.exited.wait()  # the watch is done with it before a new one starts
        self.proc, self.exited, self.reused = None, asyncio.Event(), False
        return False
    with contextlib.suppress(ValueError, AttributeError):
        body = json.loads(body)["message"].encode()
    raise ModelLoadError(
        f"the runner for {self.model} could not load it: {body.decode(errors='replace')}\n"
        f"{self.log_tail()}",
        self._load_fix(),
    )


async def keep_conversations(r: Runner, max_bytes: int) -> None:
    """Before an idle llama-cpp-python runner is ended, have it save its model's KV cache
    (``kvstore.py``: restored when a prompt with that prefix comes back) and hold the folder
    to ``max_bytes``; a runner that does not answer in time keeps nothing."""
    if not max_bytes or r.proc is None or r.exited.is_set():
        return
    if r.kv is not None:  # llama-server: each slot's, through its own routes
        await r.kv.save(r, max_bytes)
        return
    if not r.hosted:
        return
    body = json.dumps({"max_bytes": max_bytes}).encode()
    try:
        status, answer = await r._post_own("/smackctl/kv/save", body, 30.0)
    except TransportError as exc:
        log.warning("%s: its KV cache was not saved: %s", r.model, exc)
        return
    if status == 200 and json.loads(answer).get("saved"):
        log.info("%s: saved its KV cache (%s)", r.model, answer.decode(errors="replace")[:200])
