"""One child process serving one model.

States and the only transitions allowed between them::

    stopped ──▶ starting ──▶ ready ──▶ stopping ──▶ stopped
                   │           │
                   ├──────▶ backoff ──▶ starting      (crashed: restart after a delay)
                   └──────▶ failed                    (too many quick failures in a row)

The runner owns its process; the scheduler owns the runner and decides about restarts.
Subprocess hygiene: own session (process group), ``PR_SET_PDEATHSIG`` so the kernel kills it
when the supervisor dies, SIGTERM the group, a grace period, SIGKILL the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
import json
import os
import secrets
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from smackctl.errors import ModelLoadError, SmackError

from .upstream import TransportError, Upstream

__all__ = ["QueueFull", "Runner", "RunnerState", "Slots", "Spare", "free_port", "signal_group"]

#: how a runner of the default backend starts; a spare can stand in for exactly this
LLAMA_CPP_SERVER = [sys.executable, "-m", "llama_cpp.server"]


class RunnerState(enum.StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    BACKOFF = "backoff"
    FAILED = "failed"


S = RunnerState
TRANSITIONS: dict[RunnerState, frozenset[RunnerState]] = {
    S.STOPPED: frozenset({S.STARTING}),
    S.STARTING: frozenset({S.READY, S.STOPPING, S.BACKOFF, S.FAILED}),
    S.READY: frozenset({S.STOPPING, S.BACKOFF}),
    S.STOPPING: frozenset({S.STOPPED}),
    S.BACKOFF: frozenset({S.STARTING, S.STOPPED, S.FAILED}),
    S.FAILED: frozenset({S.STARTING, S.STOPPED}),
}


class QueueFull(SmackError):
    status = 503
    error_type = "queue_full"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


_PR_SET_PDEATHSIG = 1


def _child_setup() -> None:
    """Runs in the child between fork and exec: die with the supervisor.

    PDEATHSIG fires when the *thread* that forked exits, so runners are spawned from the
    event-loop thread, which lives as long as the supervisor.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the supervisor died between fork and prctl
        os._exit(1)


async def _start_child(
    argv: Sequence[str], log: BinaryIO, *, stdin: int
) -> asyncio.subprocess.Process:
    """A runner's (or a spare's) process: output to its log, its own session (process group),
    and ``PR_SET_PDEATHSIG`` so that it dies with the supervisor."""
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=stdin,
        stdout=log,
        stderr=log,
        start_new_session=True,
        preexec_fn=_child_setup,
    )


class Slots:
    """``parallel`` slots with a bounded FIFO queue in front of them.

    A waiter that is cancelled (its client went away) leaves the queue and never holds a slot.
    """

    def __init__(self, parallel: int, max_queue: int) -> None:
        self.parallel = parallel
        self.max_queue = max_queue
        self.busy = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        if self.busy < self.parallel and not self._waiters:
            self.busy += 1
            return
        if len(self._waiters) >= self.max_queue:
            raise QueueFull(
                f"the queue is full ({self.max_queue} waiting, {self.busy} running)",
                "retry after a moment, or raise `max_queue`/`parallel` for this model",
            )
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut in self._waiters:
                self._waiters.remove(fut)
            elif fut.done() and not fut.cancelled():
                self._release_one()  # the slot was handed to us as we were cancelled
            raise

    def release(self) -> None:
        self._release_one()

    def _release_one(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot passes straight to the next waiter
                return
        self.busy -= 1


class Spare:
    """A pre-imported ``llama_cpp.server`` process waiting for its model (``spare.py``).

    Same hygiene as a runner: own process group, killed by the kernel with the supervisor.
    """

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n=== {time.strftime('%F %T')} spare starting\n".encode())
            log.flush()
            argv = [sys.executable, "-m", "smackctl.daemon.spare"]
            self.proc = await _start_child(argv, log, stdin=asyncio.subprocess.PIPE)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def hand(self, args: Sequence[str], log_path: Path) -> asyncio.subprocess.Process | None:
        """Make it the runner started with ``args``, logging to ``log_path``; None if it died."""
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None or proc.stdin is None:
            return None
        try:
            proc.stdin.write(json.dumps({"args": list(args), "log": str(log_path)}).encode())
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
        signal_group(proc.pid, signal.SIGKILL)
        await proc.wait()


class Runner:
    """One child process for one model. Created per load; not reused after it stopped."""

    def __init__(
        self,
        model: str,
        argv_for: Callable[[int, str], Sequence[str]],
        log_path: Path,
        *,
        parallel: int = 1,
        max_queue: int = 32,
        ready_timeout: float = 300.0,
        on_state: Callable[[Runner, RunnerState], None] | None = None,
        take_spare: Callable[[], Spare | None] | None = None,
    ) -> None:
        self.model = model
        self._take_spare = take_spare
        self._argv_for = argv_for
        self.log_path = log_path
        self.ready_timeout = ready_timeout
        self.state = RunnerState.STOPPED
        self.slots = Slots(parallel, max_queue)
        # hex: a urlsafe token can start with '-', which argparse reads as another flag
        self.api_key = secrets.token_hex(24)
        self.port: int | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at: float | None = None
        self.ready_at: float | None = None
        self.exit_code: int | None = None
        self._on_state = on_state
        self._expected_exit = False
        self.exited = asyncio.Event()

    # -- state ---------------------------------------------------------------------------------

    def _set(self, new: RunnerState) -> None:
        if new not in TRANSITIONS[self.state]:
            raise RuntimeError(f"runner {self.model}: illegal transition {self.state} → {new}")
        self.state = new
        if self._on_state is not None:
            self._on_state(self, new)

    def mark(self, new: RunnerState) -> None:
        """Transitions decided by the owner (backoff, failed)."""
        self._set(new)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) of a started runner."""
        if self.port is None:
            raise RuntimeError("the runner has not been started")
        return "127.0.0.1", self.port

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def unexpected_exit(self) -> bool:
        return self.exited.is_set() and not self._expected_exit

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn the process and return once it answers; raise ModelLoadError otherwise."""
        self._set(RunnerState.STARTING)
        for attempt in range(3):
            await self._spawn()
            try:
                await self._wait_ready()
                break
            except ModelLoadError:
                # the port free_port() found was taken before the child bound it: new port
                if (
                    attempt < 2
                    and self.exited.is_set()
                    and "address already in use" in (self.log_tail().lower())
                ):
                    self.exited = asyncio.Event()
                    continue
                raise
        self.ready_at = time.time()
        self._set(RunnerState.READY)

    async def _spawn(self) -> None:
        self.port = free_port()
        argv = list(self._argv_for(self.port, self.api_key))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        n = len(LLAMA_CPP_SERVER)
        spare = self._take_spare() if self._take_spare and argv[:n] == LLAMA_CPP_SERVER else None
        with self.log_path.open("ab") as log:
            via = "  (in the spare process, imports done)" if spare else ""
            log.write(f"\n=== {time.strftime('%F %T')} starting: {' '.join(argv)}{via}\n".encode())
            log.flush()
            self.proc = spare.hand(argv[n:], self.log_path) if spare is not None else None
            if self.proc is None:
                try:
                    self.proc = await _start_child(argv, log, stdin=asyncio.subprocess.DEVNULL)
                except OSError as exc:
                    raise ModelLoadError(
                        f"cannot start the runner for {self.model}: {exc}",
                        "check that llama-cpp-python is installed: `smackctl doctor`",
                    ) from exc
        self.started_at = time.time()
        asyncio.get_running_loop().create_task(
            self._watch(self.proc, self.exited), name=f"watch-{self.model}"
        )

    async def _watch(self, proc: asyncio.subprocess.Process, exited: asyncio.Event) -> None:
        self.exit_code = await proc.wait()
        exited.set()

    async def _wait_ready(self) -> None:
        """Poll ``GET /v1/models`` every 10 ms until it answers 200. llama_cpp.server loads the
        model before it binds its port, so until then each poll is a refused connect: cheap."""
        deadline = time.monotonic() + self.ready_timeout
        headers = {"Authorization": f"Bearer {self.api_key}"}
        http = Upstream(connect_timeout=2.0, read_timeout=2.0)
        try:
            while True:
                if self.exited.is_set():
                    raise ModelLoadError(
                        f"the runner for {self.model} exited with code {self.exit_code} "
                        f"while loading:\n{self.log_tail()}",
                        f"see the whole log with `smackctl logs {self.model}`; a corrupt file "
                        f"is fixed with `smackctl models pull {self.model}`",
                    )
                try:
                    answer = await http.request("GET", *self.address, "/v1/models", b"", headers)
                    await answer.read()
                    if answer.status == 200:
                        return
                except TransportError:
                    pass
                if time.monotonic() > deadline:
                    await self.stop(grace=1.0)
                    raise ModelLoadError(
                        f"the runner for {self.model} did not answer within "
                        f"{self.ready_timeout:.0f}s:\n{self.log_tail()}",
                        f"see `smackctl logs {self.model}`",
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.exited.wait(), 0.01)
        finally:
            await http.aclose()

    def kill(self) -> None:
        """SIGKILL the process group now, as an expected exit; ``stop`` then waits for it."""
        if self.state in (RunnerState.STOPPED, RunnerState.STOPPING) or self.proc is None:
            return
        self._expected_exit = True
        self._set(RunnerState.STOPPING)
        signal_group(self.proc.pid, signal.SIGKILL)

    async def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process group, wait ``grace``, then SIGKILL it. Idempotent; after
        ``kill`` it only waits for the exit."""
        if self.state is RunnerState.STOPPED:
            return
        if self.state is RunnerState.STOPPING:  # another caller is stopping it (or killed it)
            if self.proc is not None:
                await self.exited.wait()
            self._stopped()
            return
        self._expected_exit = True
        if self.state in (RunnerState.STARTING, RunnerState.READY):
            self._set(RunnerState.STOPPING)
        if self.proc is not None:
            if not self.exited.is_set():
                signal_group(self.proc.pid, signal.SIGTERM)
                try:
                    await asyncio.wait_for(self.exited.wait(), grace)
                except TimeoutError:
                    signal_group(self.proc.pid, signal.SIGKILL)
                    await self.exited.wait()
            signal_group(self.proc.pid, signal.SIGKILL)  # children that outlived the leader
        self._stopped()

    def _stopped(self) -> None:
        if self.state is not RunnerState.STOPPED:  # two callers may wait for the same exit
            self._set(RunnerState.STOPPED)

    def log_tail(self, lines: int = 6) -> str:
        """The lines of this run's log that explain a failure: llama.cpp's own error lines
        first (they sit above Python's traceback), then the last lines."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 65536))
                text = f.read().decode(errors="replace")
        except OSError:
            return "  (no log)"
        run = text.rsplit("\n=== ", 1)[-1].splitlines()[1:]  # this start's lines only
        errors = [ln for ln in run if "error" in ln.lower() and not ln.startswith(" ")][:4]
        tail = [ln for ln in run[-lines:] if ln not in errors and ln.strip()]
        picked = errors + (["  ..."] if errors and tail else []) + tail[-3:]
        return "\n".join(f"  | {ln.strip()}" for ln in picked) or "  (empty log)"


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Signal a whole process group; one that is already gone is fine."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
