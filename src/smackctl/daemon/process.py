"""Process hygiene for the supervisor's children (runners and the spare): their logs (mode
0600, rotated in place), their start (own session, ``PR_SET_PDEATHSIG``, an allowlisted
environment, output to the log) and their end (a whole process group signalled, never a
group whose id was reused).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from smackctl import procnet
from smackctl.errors import ModelLoadError

__all__ = [
    "LOG_CAP",
    "free_port",
    "listening",
    "open_log",
    "rotate_log",
    "runner_env",
    "shown",
    "signal_group",
    "start_child",
]


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


async def start_child(
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


def listening(pid: int, port: int, model: str) -> bool:
    """Whether process ``pid`` (a runner of ``model``) listens on ``port`` yet: checked before
    its key is first sent there. Any local user can bind a free port in the moment before the
    runner does (llama_cpp.server binds only once its model is loaded): another process there
    is a ModelLoadError, and it gets no key."""
    if not procnet.LINUX:
        return True
    held = procnet.holds_listener(pid, port)
    if held is None:
        return False
    if not held:
        raise ModelLoadError(
            f"another process took 127.0.0.1:{port}, the port chosen for the runner of {model}, "
            "before the runner could listen there; its key was not sent to it",
            f"find that process with `ss -ltnp 'sport = :{port}'` and stop it, then load "
            f"{model} again",
        )
    return True


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
