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
import enum
import json
import secrets
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from smackctl.errors import ModelLoadError
from smackctl.selftest import signal_name

from . import runlog
from .backends.base import RUNNER_PROGRAM
from .backends.llama_cpp_python.words import LOGS_ENV
from .process import free_port, listening, open_log, runner_env, shown, signal_group, start_child
from .slot_states import SlotStates
from .slots import QueueBudget, Slots
from .spare import Spare, Vacated, load_in
from .upstream import TransportError, Upstream

__all__ = ["Runner", "RunnerState"]


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


class Runner:
    """One child process for one model. Created per load; not reused after it stopped, but
    its process may be: ``vacate`` hands it on to the next model's runner (``reuse``)."""

    def __init__(
        self,
        model: str,
        argv_for: Callable[[int], Sequence[str]],
        log_path: Path,
        *,
        parallel: int = 1,
        max_queue: int | None = None,
        queue_budget: QueueBudget | None = None,
        ready_timeout: float = 300.0,
        on_state: Callable[[Runner, RunnerState], None] | None = None,
        take_spare: Callable[[], Spare | None] | None = None,
        reuse: Vacated | None = None,
        ready_path: str = "/v1/models",
        key_env: str = "SMACKCTL_RUNNER_KEY",
    ) -> None:
        """``argv_for(port)``: the command line; ``ready_path``: the route that answers 200
        once the model is loaded; ``key_env``: the variable the process reads its API key
        from (never a flag: any local user reads command lines in ``ps``)."""
        self.model = model
        self.ready_path = ready_path
        self.key_env = key_env
        self._take_spare = take_spare
        self._reuse = reuse
        #: the process runs RUNNER_PROGRAM, so it can load another model (``vacate``)
        self.hosted = False
        #: the process held another model before this one (``Vacated``)
        self.reused = False
        #: the process still holds the model it had before this one (``free_old``)
        self.holds_old = False
        #: llama-server's saved slots (slot_states.py), for its conversations across swaps
        self.kv: SlotStates | None = None
        #: set when a request to this runner has been answered
        self.used = asyncio.Event()
        self._argv_for = argv_for
        self.log_path = log_path
        self.ready_timeout = ready_timeout
        self.state = RunnerState.STOPPED
        self.slots = Slots(parallel, max_queue, queue_budget)
        # hex: a urlsafe token can start with '-', which argparse reads as another flag
        self.api_key = secrets.token_hex(24)
        self.port: int | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at: float | None = None
        self.ready_at: float | None = None
        self.exit_code: int | None = None
        self._on_state = on_state
        self._expected_exit = False
        #: why it was killed as hung (``kill_hung``): a crash, restarted as one
        self.hung: str | None = None
        self.exited = asyncio.Event()
        #: the listener on ``port`` was seen to be this runner's process (``_ours``)
        self._port_checked = False

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
        """Spawn the process (or load in a vacated one) and return once it answers; raise
        ModelLoadError otherwise."""
        self._set(RunnerState.STARTING)
        reuse, self._reuse = self._reuse, None
        if reuse is not None and await load_in(self, reuse):
            self.ready_at = time.time()
            self._set(RunnerState.READY)
            return
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
        self._port_checked = False
        argv = list(self._argv_for(self.port))
        n = len(RUNNER_PROGRAM)
        self.hosted = argv[:n] == RUNNER_PROGRAM
        spare = self._take_spare() if self._take_spare and self.hosted else None
        with open_log(self.log_path) as log:
            via = "  (in the spare process, imports done)" if spare else ""
            line = f"\n=== {time.strftime('%F %T')} starting: {shown(argv, self.api_key)}{via}\n"
            log.write(line.encode())
            log.flush()
            self.proc = (
                spare.hand(argv[n:], self.log_path, self.api_key) if spare is not None else None
            )
            if self.proc is None:
                env = runner_env({self.key_env: self.api_key, LOGS_ENV: str(self.log_path.parent)})
                try:
                    self.proc = await start_child(
                        argv, log, stdin=asyncio.subprocess.DEVNULL, env=env
                    )
                except OSError as exc:
                    raise ModelLoadError(
                        f"cannot start the runner for {self.model}: {exc}",
                        "check that llama-cpp-python is installed: `smackctl doctor`",
                    ) from exc
        self._watch_process()

    async def _post_own(self, path: str, body: bytes, read_timeout: float) -> tuple[int, bytes]:
        """POST to one of RUNNER_PROGRAM's own routes (the runner program): (status, body)."""
        return await self._ask("POST", path, body, read_timeout)

    async def _ask(
        self, method: str, path: str, body: bytes, read_timeout: float
    ) -> tuple[int, bytes]:
        """A request of the supervisor's own on a connection of its own: (status, body)."""
        if not self._ours():
            raise TransportError(f"nothing of the runner's listens on port {self.port} yet")
        headers = {"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"}
        http = Upstream(connect_timeout=2.0, read_timeout=read_timeout)
        try:
            answer = await http.request(method, *self.address, path, body, headers)
            return answer.status, await answer.read()
        finally:
            await http.aclose()

    async def progress(self, path: str, read: Callable[[Any], int], timeout: float) -> int | None:
        """How far the runner's work has gone: ``read`` of its JSON answer to ``GET path``
        (the backend's ``progress_path``), or None when it gives none within ``timeout``."""
        try:
            status, body = await self._ask("GET", path, b"", timeout)
            return read(json.loads(body)) if status == 200 else None
        except (TransportError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def _load_fix(self) -> str:
        return (
            f"see the whole log with `smackctl logs {self.model}`; a corrupt file "
            f"is fixed with `smackctl models pull {self.model}`"
        )

    async def free_old(self) -> None:
        """Have the process free the model it held before this one (``Vacated.keep_old``)."""
        if not self.holds_old:
            return
        with contextlib.suppress(TransportError):  # gone: the old model went with the process
            await self._post_own("/smackctl/free", b"", 60.0)
        self.holds_old = False

    def vacate(self, keep_old: bool, save_kv: int = 0) -> Vacated | None:
        """Unload the model but keep the process for the next load (see ``Vacated``); None
        when it cannot be kept: not ready, busy, or not RUNNER_PROGRAM."""
        if (
            self.state is not RunnerState.READY
            or self.proc is None
            or self.port is None
            or not self.hosted
            or self.exited.is_set()
            or self.slots.busy
            or self.slots.queued
        ):
            return None
        self._expected_exit = True
        self._set(RunnerState.STOPPING)
        self._set(RunnerState.STOPPED)
        return Vacated(self.proc, self.port, self.api_key, self.model, keep_old, save_kv)

    def _watch_process(self) -> None:
        """The process is this runner's from now: time it, and set ``exited`` when it ends."""
        assert self.proc is not None
        self.started_at = time.time()
        asyncio.get_running_loop().create_task(
            self._watch(self.proc, self.exited), name=f"watch-{self.model}"
        )

    async def _watch(self, proc: asyncio.subprocess.Process, exited: asyncio.Event) -> None:
        self.exit_code = await proc.wait()
        if not self._expected_exit:  # the runner's own log says how it ended
            with contextlib.suppress(OSError), open_log(self.log_path) as log:
                log.write(
                    f"*** {time.strftime('%F %T')} the runner {self.exit_description()}\n".encode()
                )
        exited.set()

    def exit_description(self) -> str:
        """How the process ended, in words: ``was killed by SIGSEGV``, ``exited with code 1``."""
        if self.hung:
            return f"hung ({self.hung}) and was killed"
        name = signal_name(self.exit_code)
        if name is not None:
            return f"was killed by {name}"
        return f"exited with code {self.exit_code}"

    async def _wait_ready(self) -> None:
        """Poll ``GET ready_path`` every 10 ms until it answers 200. llama_cpp.server loads the
        model before it binds its port, so until then each poll is a refused connect: cheap;
        llama-server binds first and answers 503 while it loads."""
        deadline = time.monotonic() + self.ready_timeout
        headers = {"Authorization": f"Bearer {self.api_key}"}
        http = Upstream(connect_timeout=2.0, read_timeout=2.0)
        try:
            while True:
                if self.exited.is_set():
                    raise ModelLoadError(
                        f"the runner for {self.model} exited with code {self.exit_code} "
                        f"while loading:\n{self.log_tail()}",
                        self._load_fix(),
                    )
                try:
                    if self._ours():
                        answer = await http.request(
                            "GET", *self.address, self.ready_path, b"", headers
                        )
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

    def _ours(self) -> bool:
        """Whether this runner's own process listens on its port (``process.listening``),
        checked once, before its key is first sent there."""
        if not self._port_checked and self.proc is not None and self.port is not None:
            self._port_checked = listening(self.proc.pid, self.port, self.model)
        return self._port_checked

    def kill_hung(self, why: str) -> None:
        """SIGKILL the process group of a runner that made no progress (``why``). Not an
        expected exit: the scheduler restarts it with backoff, as after a crash."""
        if self.proc is not None and not self.exited.is_set() and not self._expected_exit:
            self.hung = why
            signal_group(
                self.proc.pid, signal.SIGKILL, leader_gone=self.proc.returncode is not None
            )

    def kill(self) -> None:
        """SIGKILL the process group now, as an expected exit; ``stop`` then waits for it."""
        if self.state in (RunnerState.STOPPED, RunnerState.STOPPING) or self.proc is None:
            return
        self._expected_exit = True
        self._set(RunnerState.STOPPING)
        signal_group(self.proc.pid, signal.SIGKILL, leader_gone=self.proc.returncode is not None)

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
            pid = self.proc.pid
            if not self.exited.is_set():
                signal_group(pid, signal.SIGTERM, leader_gone=self.proc.returncode is not None)
                try:
                    await asyncio.wait_for(self.exited.wait(), grace)
                except TimeoutError:
                    signal_group(pid, signal.SIGKILL, leader_gone=self.proc.returncode is not None)
                    await self.exited.wait()
            signal_group(pid, signal.SIGKILL, leader_gone=True)  # members that outlived it
        self._stopped()

    def _stopped(self) -> None:
        if self.state is not RunnerState.STOPPED:  # two callers may wait for the same exit
            self._set(RunnerState.STOPPED)

    def activity(self) -> str | None:
        """What the process was doing when it ended (``runlog.activity``)."""
        return runlog.activity(self.log_path)

    def log_tail(self, lines: int = 6) -> str:
        """The lines of this run's log that explain a failure (``runlog.tail``)."""
        return runlog.tail(self.log_path, lines)
