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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from smackctl import procnet
from smackctl.errors import ModelLoadError
from smackctl.selftest import signal_name

from .backends import RUNNER_PROGRAM
from .host import HOST_ANSWERED, HOST_GENERATING, HOST_PROMPT, LOGS_ENV
from .slots import QueueBudget, Slots
from .upstream import TransportError, Upstream

__all__ = [
    "Runner",
    "RunnerState",
    "Spare",
    "Vacated",
    "LOG_CAP",
    "free_port",
    "open_log",
    "rotate_log",
    "runner_env",
    "shown",
    "signal_group",
]


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


#: a runner's log is rotated past this size (one older copy, ``runner-NAME.log.1``, is kept)
LOG_CAP = 8 * 2**20


def open_log(path: Path, cap: int = LOG_CAP) -> BinaryIO:
    """A runner's log, for appending: mode 0600 (it quotes prompts' sizes and llama.cpp's
    paths), rotated first when it has grown past ``cap``."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    rotate_log(path, cap)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o600)  # a log an older version wrote 0644
    return os.fdopen(fd, "ab")


def rotate_log(path: Path, cap: int = LOG_CAP) -> bool:
    """Past ``cap``: copy the log to ``PATH.1`` and empty it in place. In place, because the
    runner process keeps writing to its open descriptor (O_APPEND: from the new end)."""
    try:
        if path.stat().st_size <= cap:
            return False
        old = path.with_name(path.name + ".1")
        with (
            path.open("rb") as src,
            open(os.open(old, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as dst,
        ):
            while block := src.read(1 << 20):
                dst.write(block)
        os.truncate(path, 0)
        return True
    except OSError:
        return False


def shown(argv: Sequence[str], secret: str) -> str:
    """A command line for a log: the runner's key never appears in one."""
    return " ".join(argv).replace(secret, "***")


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


#: what a runner needs of the supervisor's environment; nothing else passes (the API keys of
#: remote deployments, SMACKCTL_TOKEN, whatever the user's shell holds). SMACKCTL_HOME stays
#: as a mark of whose runner a process is (``ps e``, the tests' orphan checks).
_RUNNER_ENV = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH",
     "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "SMACKCTL_HOME", "SMACKCTL_RUNNER_DEBUG"}
)  # fmt: skip
#: and what the compute libraries read: threads (OpenMP, BLAS), devices (CUDA, ROCm, Vulkan),
#: llama.cpp's own GGML_ settings, the locale
_RUNNER_ENV_PREFIXES = (
    "LC_", "CUDA_", "NVIDIA_", "HIP_", "ROCR_", "HSA_", "GGML_", "OMP_", "KMP_", "GOMP_",
    "OPENBLAS_", "MKL_", "VK_",
)  # fmt: skip


def runner_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a runner process starts with: the allowed part of ours, and ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k in _RUNNER_ENV or k.startswith(_RUNNER_ENV_PREFIXES)
    }
    return {**env, **(extra or {})}


async def _start_child(
    argv: Sequence[str], log: BinaryIO, *, stdin: int, env: dict[str, str]
) -> asyncio.subprocess.Process:
    """A runner's (or a spare's) process: output to its log, its own session (process group),
    ``PR_SET_PDEATHSIG`` so that it dies with the supervisor, and ``env`` alone."""
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=stdin,
        stdout=log,
        stderr=log,
        start_new_session=True,
        preexec_fn=_child_setup,
        env=env,
    )


class Spare:
    """A runner process with the imports done, waiting for its model (``host.py --spare``).

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
            self.proc = await _start_child(argv, log, stdin=asyncio.subprocess.PIPE, env=env)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def hand(
        self, args: Sequence[str], log_path: Path, key: str
    ) -> asyncio.subprocess.Process | None:
        """Make it the runner started with ``args`` and ``key``, logging to ``log_path`` (a
        file of the spare's log folder); None if it died."""
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None or proc.stdin is None:
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


@dataclass
class Vacated:
    """The process of a runner whose model was just unloaded, kept for the next load: it
    loads that model in place (``POST /smackctl/load``, host.py) with its port and key.
    ``keep_old``: memory has room for both models, so the old one is freed after the load
    (``Runner.free_old``), off the swap's path."""

    proc: asyncio.subprocess.Process
    port: int
    api_key: str
    model: str
    keep_old: bool

    async def discard(self) -> None:
        signal_group(self.proc.pid, signal.SIGKILL, leader_gone=self.proc.returncode is not None)
        await self.proc.wait()


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
        if reuse is not None and await self._load_in(reuse):
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
                    self.proc = await _start_child(
                        argv, log, stdin=asyncio.subprocess.DEVNULL, env=env
                    )
                except OSError as exc:
                    raise ModelLoadError(
                        f"cannot start the runner for {self.model}: {exc}",
                        "check that llama-cpp-python is installed: `smackctl doctor`",
                    ) from exc
        self._watch_process()

    async def _load_in(self, v: Vacated) -> bool:
        """Load this runner's model in a vacated process: True once it answers; False when
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
        order = {"args": argv[n:], "log": self.log_path.name, "keep_old": v.keep_old}
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

    async def _post_own(self, path: str, body: bytes, read_timeout: float) -> tuple[int, bytes]:
        """POST to one of RUNNER_PROGRAM's own routes (host.py): (status, body)."""
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

    def vacate(self, keep_old: bool) -> Vacated | None:
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
        return Vacated(self.proc, self.port, self.api_key, self.model, keep_old)

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

    def activity(self) -> str | None:
        """What the process was doing when it ended, from the lines RUNNER_PROGRAM writes to
        this run's log as a request goes (host.py): ``while decoding a prompt of 12 tokens``,
        ``while generating the answer to a prompt of 12 tokens``; None when it was not
        answering."""
        for line in reversed(self._this_run().splitlines()):
            if line.startswith(HOST_PROMPT):
                return "while decoding " + line[len(HOST_PROMPT) :].strip()
            if line.startswith(HOST_GENERATING):
                return "while generating the answer to " + line[len(HOST_GENERATING) :].strip()
            if line.startswith(HOST_ANSWERED):
                return None
        return None

    def _this_run(self) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 65536))
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return text.rsplit("\n=== ", 1)[-1] if "\n=== " in text else text

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
        """Whether this runner's own process listens on its port, checked before the key is
        first sent there: True once seen, False while nothing listens yet. Any local user can
        bind a free port in the moment before the runner does (llama_cpp.server binds only
        once its model is loaded): another process there gets ModelLoadError, not the key."""
        if self._port_checked or not procnet.LINUX:
            return True
        if self.proc is None or self.port is None:
            return False
        held = procnet.holds_listener(self.proc.pid, self.port)
        if held is None:
            return False
        if not held:
            raise ModelLoadError(
                f"another process took 127.0.0.1:{self.port}, the port chosen for the runner "
                f"of {self.model}, before the runner could listen there; its key was not sent "
                "to it",
                f"find that process with `ss -ltnp 'sport = :{self.port}'` and stop it, then "
                f"load {self.model} again",
            )
        self._port_checked = True
        return True

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

    def log_tail(self, lines: int = 6) -> str:
        """The lines of this run's log that explain a failure: llama.cpp's own error lines
        first (they sit above Python's traceback), then the last lines."""
        if not self.log_path.is_file():
            return "  (no log)"
        run = self._this_run().splitlines()[1:]  # this start's lines only
        errors = [ln for ln in run if "error" in ln.lower() and not ln.startswith(" ")][:4]
        tail = [ln for ln in run[-lines:] if ln not in errors and ln.strip()]
        picked = errors + (["  ..."] if errors and tail else []) + tail[-3:]
        return "\n".join(f"  | {ln.strip()}" for ln in picked) or "  (empty log)"


def signal_group(pgid: int, sig: signal.Signals, *, leader_gone: bool = False) -> None:
    """Signal a whole process group; one that is already gone is fine.

    ``leader_gone``: the group's leader was reaped, so its pid, the group's id, is free for a
    new process once no member of the group is left (members that outlived the leader keep
    the id from reuse). A process with that pid then means the id was reused, and the
    group, if any, is someone else's: it is left alone."""
    if leader_gone and os.path.exists(f"/proc/{pgid}"):
        return
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
