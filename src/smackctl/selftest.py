"""Does this machine's llama.cpp build decode a quantized model? ``python -m smackctl.selftest``.

Run by ``smackctl doctor`` (and the tests) in a child process, because what it checks is a
crash: llama.cpp built with Intel AMX kernels dies with SIGSEGV on the first multi-token
decode of any quantized model (llama.cpp #20824), which F32 models never reach. The child
writes tiny random-weight Q8_0 and Q4_0 models (``tinymodel``), decodes a multi-token prompt
and a few tokens of each, and prints one JSON line per step as it goes, so that the parent
knows what it was doing when it died. The first line is llama.cpp's system-info line: the CPU
features the build was compiled with.

``run_selftest()`` is the parent's side: it runs the child and says what happened.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["SelfTest", "amx_in", "run_selftest", "signal_name"]

PROMPT = b"The quick brown fox jumps over the lazy dog, then runs into the forest."
#: the weight types checked, in order
CHECKED = ("Q8_0", "Q4_0")


def signal_name(returncode: int | None) -> str | None:
    """``SIGSEGV`` for a process killed by signal 11 (a negative return code), else None."""
    if returncode is None or returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def amx_in(system_info: str) -> bool:
    """Was the build compiled with ggml's AMX kernels (``AMX_INT8 = 1`` in its system info)?"""
    return "AMX_INT8 = 1" in system_info


@dataclass
class SelfTest:
    """What the child did: ``ok``, the system-info line, the steps done, and, when it failed,
    the signal (or exit code) and the step it was in."""

    ok: bool
    system_info: str = ""
    steps: list[dict[str, object]] = field(default_factory=list)
    signal: str | None = None
    exit_code: int | None = None
    doing: str | None = None
    error: str | None = None
    seconds: float = 0.0


def run_selftest(timeout: float = 60.0) -> SelfTest:
    import time

    started = time.monotonic()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "smackctl.selftest"],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return SelfTest(ok=False, error=f"the decode did not finish within {timeout:.0f}s")
    result = SelfTest(ok=False, exit_code=proc.returncode, seconds=time.monotonic() - started)
    for line in proc.stdout.splitlines():
        try:
            step = json.loads(line)
        except ValueError:
            continue
        if "system_info" in step:
            result.system_info = str(step["system_info"]).strip()
        elif step.get("begin"):
            result.doing = str(step["begin"])
        else:
            result.steps.append(step)
            result.doing = None
    result.signal = signal_name(proc.returncode)
    if proc.returncode == 0 and len(result.steps) == len(CHECKED):
        result.ok = True
    elif result.signal is None:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        result.error = lines[-1] if lines else f"exit code {proc.returncode}"
    return result


def _emit(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def main() -> None:
    import llama_cpp

    from .tinymodel import write_tiny_gguf

    _emit(system_info=llama_cpp.llama_print_system_info().decode(errors="replace"))
    threads = max(1, min(2, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory(prefix="smackctl-selftest-") as d:
        for quant in CHECKED:
            path = write_tiny_gguf(Path(d) / f"tiny-{quant}.gguf", quant=quant)
            llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=threads, verbose=False)
            tokens = llm.tokenize(PROMPT)
            _emit(begin=f"decoding a prompt of {len(tokens)} tokens with a {quant} model")
            if fault := os.environ.get("SMACKCTL_SELFTEST_FAULT"):
                # fault injection for the tests: the signal a crashing kernel raises, here
                os.kill(os.getpid(), signal.Signals[fault])
            llm.eval(tokens)  # the multi-token decode that crashes a build with AMX kernels
            _emit(begin=f"generating 4 tokens with a {quant} model")
            out = llm.create_completion(PROMPT.decode(), max_tokens=4, temperature=0)
            usage = out["usage"]  # type: ignore[index]
            _emit(
                quant=quant, prompt_tokens=len(tokens), completion_tokens=usage["completion_tokens"]
            )
            llm.close()


if __name__ == "__main__":
    main()
