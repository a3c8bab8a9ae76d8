"""Every CPU: quantized models decode, and a runner that crashes is explained to the user.

On a CPU with Intel AMX, llama.cpp built with -march=native crashes on the first multi-token
decode of a quantized model; F32 models never reach those kernels. These tests decode real
multi-token prompts on tiny Q8_0 and Q4_0 models, so such a build fails them. The crash
itself is a real signal sent to a real runner process (a machine with AMX may not be at
hand): SIGSEGV, what a crashing kernel raises.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import threading
from pathlib import Path

import httpx
import psutil
import pytest
from typer.testing import CliRunner

from smackctl.cli.app import app
from smackctl.selftest import amx_in, run_selftest

from conftest import Supervisor, wait_for

PROMPT = "Decode this prompt of many tokens in one batch, then answer it: " * 4


def test_this_build_decodes_quantized_models_and_has_no_amx_kernels() -> None:
    t = run_selftest()
    assert t.ok, (t.signal, t.doing, t.error)
    assert [s["quant"] for s in t.steps] == ["Q8_0", "Q4_0"]
    assert all(int(str(s["prompt_tokens"])) > 32 for s in t.steps)  # a multi-token decode
    assert all(s["completion_tokens"] == 4 for s in t.steps)
    assert t.system_info.startswith("CPU :")
    # make install builds without AMX: a build with its kernels crashes on quantized models
    assert not amx_in(t.system_info), t.system_info


@pytest.mark.parametrize("model", ["tiny-q8", "tiny-q4"])
def test_a_quantized_model_answers_a_long_prompt_streamed_and_not(
    supervisor: Supervisor, model: str
) -> None:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 12,
        "temperature": 0,
    }
    with supervisor.client() as c:
        r = c.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["model"] == model
        assert answer["usage"]["prompt_tokens"] > 64
        assert answer["usage"]["completion_tokens"] == 12
        assert answer["choices"][0]["message"]["content"]
        assert answer["choices"][0]["finish_reason"] == "length"
        with c.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as s:
            assert s.status_code == 200
            events = [ln[6:] for ln in s.iter_lines() if ln.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks)
    assert all(ch["choices"] for ch in chunks)  # no usage event: the client did not ask


def _runner_log(sup: Supervisor, model: str) -> str:
    return (sup.home.state / "logs" / f"runner-{model}.log").read_text(errors="replace")


def test_a_runner_killed_by_sigsegv_mid_stream_is_explained(supervisor: Supervisor) -> None:
    long = {
        "model": "tiny-q4",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 900,
        "temperature": 0,
        "stream": True,
    }
    with supervisor.client() as c:
        with c.stream("POST", "/v1/chat/completions", json=long) as r:
            assert r.status_code == 200
            it = r.iter_lines()
            seen = 0
            for line in it:
                if line.startswith("data: ") and '"content"' in line:
                    seen += 1
                    if seen == 3:
                        break
            os.kill(supervisor.model("tiny-q4")["pid"], signal.SIGSEGV)
            rest = [ln for ln in it if ln.startswith("data: ")]
    err = json.loads(rest[-1][6:])["error"]
    assert err["type"] == "runner_crashed"
    msg = err["message"]
    assert "the runner for tiny-q4 was killed by SIGSEGV after " in msg
    assert "tokens of the answer" in msg and "smackctl doctor" in msg
    assert "Error(" not in msg and "-11" not in msg  # no Python repr, no bare code

    m = wait_for(
        lambda: (m := supervisor.model("tiny-q4"))["crashes"] == 1 and m,
        15,
        "the crash to be counted",
    )
    assert m["last_crash"].startswith(
        "was killed by SIGSEGV while generating the answer to a prompt of "
    )
    assert "*** " in _runner_log(supervisor, "tiny-q4")
    assert "the runner was killed by SIGSEGV" in _runner_log(supervisor, "tiny-q4")

    r = CliRunner().invoke(app, ["status"])
    assert r.exit_code == 0, r.output
    assert "tiny-q4: 1 crash, the last" in r.stdout
    assert "the runner was killed by SIGSEGV while generating" in r.stdout

    r = CliRunner().invoke(app, ["doctor", "--json"])
    checks = {c["check"]: c for c in json.loads(r.stdout)}
    crash = checks["crash tiny-q4"]
    assert crash["status"] == "warn" and "killed by SIGSEGV" in crash["detail"]
    assert "smackctl logs tiny-q4" in crash["fix"]


def test_a_request_whose_runner_crashes_twice_gets_an_error_that_says_what_happened(
    supervisor: Supervisor,
) -> None:
    """Before any byte went back, a crash is retried once on the restarted runner; a second
    crash reaches the client as an OpenAI error naming the model, the signal and the step."""
    long = {
        "model": "tiny-q8",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 4000,
        "temperature": 0,
    }
    log = supervisor.home.state / "logs" / "runner-tiny-q8.log"
    with supervisor.client() as c:
        assert c.post("/v1/chat/completions", json={**long, "max_tokens": 2}).status_code == 200
        result: dict[str, httpx.Response] = {}
        t = threading.Thread(
            target=lambda: result.update(r=c.post("/v1/chat/completions", json=long))
        )
        t.start()
        for n in (2, 3):  # the second request's generation, then the retry's
            wait_for(
                lambda n=n: log.read_text(errors="replace").count("generating after") >= n,
                30,
                f"generation number {n} to start",
            )
            os.kill(supervisor.model("tiny-q8")["pid"], signal.SIGSEGV)
            if n == 2:
                wait_for(lambda: supervisor.model("tiny-q8")["crashes"] == 1, 15, "crash 1")
        t.join(60)
    r = result["r"]
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["message"].startswith(
        "the runner for tiny-q8 was killed by SIGSEGV while generating the answer to a prompt of "
    )
    assert "restarted and the request sent once more, and it failed again" in err["message"]
    assert "smackctl doctor" in err["message"]
    assert "Error(" not in err["message"]


def test_runner_logs_hold_no_debug_lines_and_no_key(supervisor: Supervisor) -> None:
    with supervisor.client() as c:
        r = c.post(
            "/v1/chat/completions",
            json={"model": "tiny-q4", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert r.status_code == 200
    path = supervisor.home.state / "logs" / "runner-tiny-q4.log"
    text = path.read_text(errors="replace")
    assert "llama_model_loader" in text  # llama.cpp's own info lines are kept
    assert "llama_graph_n_input_tensors" not in text  # its debug lines are not
    assert "--api_key" not in text  # the key is on no command line, so in no logged one
    env = psutil.Process(supervisor.model("tiny-q4")["pid"]).environ()
    key = env.get("SMACKCTL_RUNNER_KEY")  # absent when the spare process took the model
    assert key is None or key not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_selftest_says_which_signal_killed_it_and_where(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fault injected for real: the child raises SIGSEGV at the decode it would crash in
    on a CPU with AMX kernels (no such CPU is needed to check what is said)."""
    monkeypatch.setenv("SMACKCTL_SELFTEST_FAULT", "SIGSEGV")
    t = run_selftest()
    assert not t.ok and t.signal == "SIGSEGV"
    assert t.doing is not None and t.doing.startswith("decoding a prompt of ")
    r = CliRunner().invoke(app, ["doctor", "--json"])
    assert r.exit_code == 1
    checks = {c["check"]: c for c in json.loads(r.stdout)}
    decode = checks["decode"]
    assert decode["status"] == "fail"
    assert decode["detail"].startswith("llama.cpp crashed with SIGSEGV while decoding a prompt")
    assert "make -B install" in decode["fix"]


def test_rotate_log_keeps_one_older_copy_while_the_writer_goes_on(tmp_path: Path) -> None:
    from smackctl.daemon.process import open_log, rotate_log

    path = tmp_path / "runner-x.log"
    with open_log(path) as log:
        log.write(b"a" * 2000)
        log.flush()
        assert rotate_log(path, cap=1000)
        log.write(b"after\n")  # O_APPEND: lands at the start of the emptied file
    assert path.read_bytes() == b"after\n"
    assert path.with_name("runner-x.log.1").read_bytes() == b"a" * 2000
    assert not rotate_log(path, cap=1000)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_build_flags_turn_amx_off_even_for_a_cpu_that_has_it(tmp_path: Path) -> None:
    """What the compiler makes of scripts/build-llama.sh's flags on a Sapphire Rapids CPU (the
    AMX kind; this machine may have no AMX, so -march=native is replaced by that CPU): no AMX
    macro, so ggml compiles no AMX kernel; AVX-512 stays. And without our -mno-amx-* the
    same target would have them: the check can tell the two apart."""
    import subprocess

    script = (Path(__file__).parents[1] / "scripts" / "build-llama.sh").read_text()
    flags = re.search(r'flags="(-march=native[^"]*)"', script)
    assert flags is not None
    ours = flags.group(1).replace("-march=native", "-march=sapphirerapids").split()

    def macros(args: list[str]) -> str:
        out = subprocess.run(
            ["cc", *args, "-dM", "-E", "-"], input="", capture_output=True, text=True, check=True
        )
        return out.stdout

    assert "__AMX_INT8__" in macros(["-march=sapphirerapids"])
    built = macros(ours)
    assert "__AMX_INT8__" not in built and "__AMX_TILE__" not in built
    assert "__AVX512F__" in built
    # ggml's own -march=native is off: it would come after ours and turn AMX back on
    assert "-DGGML_NATIVE=OFF" in script
