"""`smackctl doctor`: the environment checked, each line with its fix."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from smackctl.errors import CommandFailed, SmackError, SupervisorNotRunning

from . import output
from ._common import client

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON only.")]

__all__ = ["doctor", "read_db"]


def doctor(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Check the environment: versions, GPU, memory, paths, supervisor, profiles, model files.
    Each line is ok, warn or fail, with the fix. Exit 1 if anything failed."""
    checks: list[tuple[str, str, str, str | None]] = []

    def add(status: str, what: str, detail: str, fix: str | None = None) -> None:
        checks.append((status, what, detail, fix))

    v = sys.version_info
    add(
        "ok" if v >= (3, 11) else "fail",
        "python",
        f"{v.major}.{v.minor}.{v.micro}",
        None if v >= (3, 11) else "install Python 3.11 or newer",
    )
    _check_llama(add)
    from smackctl.hardware import probe_machine

    m = probe_machine()
    add("ok", "cpu", f"{m.cores_physical} physical / {m.cores_logical} logical cores")
    add(
        "ok" if m.ram_available > 2 * 1024**3 else "warn",
        "ram",
        f"{output.human_bytes(m.ram_available)} available of {output.human_bytes(m.ram_total)}",
        None if m.ram_available > 2 * 1024**3 else "unload models or close programs",
    )
    if m.gpus:
        for g in m.gpus:
            add(
                "ok",
                f"gpu {g.index}",
                f"{g.name}: {output.human_bytes(g.free)} free of {output.human_bytes(g.total)}",
            )
    else:
        add("ok", "gpu", "no NVIDIA GPU seen through NVML (CPU only)")
    from smackctl.paths import get_paths

    paths = get_paths()
    for name, folder in (
        ("config dir", paths.config_dir),
        ("data dir", paths.data_dir),
        ("state dir", paths.state_dir),
    ):
        if folder.exists() and not os.access(folder, os.W_OK):
            add("fail", name, f"{folder} is not writable", f"fix the permissions of {folder}")
        else:
            add("ok", name, str(folder))
    if paths.token_path.exists():
        mode = paths.token_path.stat().st_mode & 0o777
        add(
            "ok" if mode == 0o600 else "fail",
            "token",
            f"{paths.token_path} mode {mode:o}",
            None if mode == 0o600 else f"chmod 600 {paths.token_path}",
        )
    from smackctl.client import default_url

    url = default_url(paths)
    try:
        with client(ctx, autostart=False) as c:
            st = c.get("/api/status")
        add("ok", "supervisor", f"running at {url} (pid {st['pid']}, profile {st['profile']})")
        _check_fleet(add, st.get("fleet"))
    except SupervisorNotRunning:
        add("warn", "supervisor", f"not running at {url}", "smackctl start")
    except SmackError as exc:
        add("fail", "supervisor", exc.message, "smackctl stop --force; smackctl start")
    from .service import doctor_checks

    for check in doctor_checks():  # the systemd service and lingering
        add(*check)
    _check_profiles(add)
    _check_added_models(add, paths.db_path)
    _check_crashes(add, paths.db_path)
    if json_:
        output.print_json(
            [{"status": s, "check": w, "detail": d, "fix": f} for s, w, d, f in checks]
        )
    else:
        for s, w, d, f in checks:
            print(f"{s:<5} {w:<17} {d}" + (f"\n      fix: {f}" if f else ""))
    if any(s == "fail" for s, *_ in checks):
        raise CommandFailed(1)


def _check_fleet(add: Any, fleet: dict[str, Any] | None) -> None:
    """The fleet's NATS server, as the running supervisor sees it (when it is in one)."""
    if not fleet:
        return
    if fleet["connected"]:
        members = ", ".join(m["name"] for m in fleet["members"]) or "none yet"
        add("ok", "fleet", f"{fleet['name']} joined {fleet['url']}; members: {members}")
    else:
        why = fleet.get("error") or "not connected"
        fix = "check the NATS server runs and is reachable, and the profile's fleet.credentials"
        add("fail", "fleet", f"{fleet['url']}: {why}", fix)
    for refused in fleet.get("refused") or []:
        add("warn", "fleet", refused, "run the same smackctl version on every member")


#: what fixes a llama.cpp build that crashes on this CPU (the AMX kernels, see README)
REBUILD = (
    "rebuild llama.cpp with Intel AMX off: `make -B install` in the smackctl checkout "
    "(scripts/build-llama.sh; README, 'Every CPU')"
)


def _check_llama(add: Any) -> None:
    """llama-cpp-python's version and build, a real decode of quantized models in a child
    process (``smackctl.selftest``), and the llama-server binary."""
    from smackctl.selftest import amx_in, run_selftest

    try:
        import llama_cpp

        gpu = bool(llama_cpp.llama_supports_gpu_offload())
        add(
            "ok",
            "llama-cpp-python",
            f"{llama_cpp.__version__} ({'built with GPU offload' if gpu else 'CPU build'})",
        )
    except Exception as exc:  # an import of a compiled library can fail many ways
        add("fail", "llama-cpp-python", f"cannot import: {exc}", "run `make install`")
        return
    t = run_selftest()
    if t.system_info:
        if amx_in(t.system_info):
            add("warn", "llama.cpp build", t.system_info, REBUILD)
        else:
            add("ok", "llama.cpp build", t.system_info)
    if t.ok:
        steps = ", ".join(str(s["quant"]) for s in t.steps)
        prompt = t.steps[0]["prompt_tokens"] if t.steps else "?"
        add("ok", "decode", f"{steps} models decoded a {prompt}-token prompt ({t.seconds:.2f} s)")
    elif t.signal is not None:
        doing = f" while {t.doing}" if t.doing else ""
        add(
            "fail",
            "decode",
            f"llama.cpp crashed with {t.signal}{doing} in a child process: this build cannot "
            "run quantized models on this CPU"
            + (" (it has Intel AMX kernels)" if amx_in(t.system_info) else ""),
            REBUILD,
        )
    else:
        add("fail", "decode", f"the test decode failed: {t.error}", "run `make install`")
    from smackctl.paths import find_llama_server

    server = find_llama_server()
    if server is None:
        add("warn", "llama-server", "not found", "`make install` builds it into the venv")
    else:
        add("ok", "llama-server", f"{server} ({_llama_server_version(server)})")


def _llama_server_version(binary: str) -> str:
    """Its version and compiler, and the devices it can offload to (none: the CPU only).
    Its CPU features are the library's above: `make install` builds both with one key."""
    import subprocess

    def lines(*args: str) -> list[str]:
        out = subprocess.run(
            [binary, *args], capture_output=True, text=True, timeout=10, check=False
        )
        return [ln.strip() for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]

    try:
        info, devices = lines("--version"), lines("--list-devices")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"does not run: {exc}"
    version = next((ln for ln in info if ln.startswith("version:")), "version: unknown")
    built = next((ln for ln in info if ln.startswith("built with")), "")
    found = [ln for ln in devices if ln != "Available devices:" and ln != "(none)"]
    where = ", ".join(found) if found else "no GPU device (CPU only)"
    return f"{version.removeprefix('version:').strip()}, {built}; {where}".replace(", ;", ";")


def read_db(db: Any, query: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows from the supervisor's SQLite file, read-only (the supervisor may be writing)."""
    import sqlite3

    if not db.is_file():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            return list(con.execute(query, args))
    except sqlite3.Error:
        return []


def _check_added_models(add: Any, db: Any) -> None:
    for name, spec in read_db(db, "SELECT name, spec FROM added_models ORDER BY name"):
        try:
            file = Path(json.loads(spec)["path"])
        except (ValueError, KeyError, TypeError):
            continue
        if file.is_file():
            add("ok", f"model {name}", f"{file} ({output.human_bytes(file.stat().st_size)}, added)")
        else:
            add(
                "fail",
                f"model {name}",
                f"{file} is missing (added with `smackctl models add`)",
                f"add it again with its new path, or `smackctl models rm {name}`",
            )


def _check_crashes(add: Any, db: Any, within: float = 86400.0) -> None:
    rows = read_db(
        db,
        "SELECT at, model, what FROM crashes WHERE at > ? ORDER BY at DESC LIMIT 5",
        (time.time() - within,),
    )
    for at, model, what in rows:
        ago = output.human_duration(time.time() - at)
        crashed = "SIGSEGV" in what or "SIGILL" in what or "SIGBUS" in what
        fix = f"smackctl logs {model}" + (
            "; if the decode check above fails too: " + REBUILD if crashed else ""
        )
        add("warn", f"crash {model}", f"{ago} ago: the runner {what}", fix)


def _check_profiles(add: Any) -> None:
    from smackctl.catalog import parse_source, stored_path
    from smackctl.paths import get_paths, list_profile_files
    from smackctl.profile_file import validate_profile_file

    models_dir = get_paths().models_dir
    for name, path in list_profile_files().items():
        profile, issues = validate_profile_file(path)
        if profile is None:
            add("fail", f"profile {name}", str(issues[0]), f"smackctl profile validate {path}")
            continue
        add("ok", f"profile {name}", f"{path} ({len(profile.models)} models)")
        for model, spec in profile.models.items():
            if spec.source is None:  # a missing path fails the profile's validation above
                continue
            file = stored_path(parse_source(spec.source), models_dir, spec.sha256)
            sidecar = file.with_name(file.name + ".sha256")
            if not file.is_file():
                add(
                    "ok",
                    f"model {model}",
                    f"not pulled yet (profile {name}): pulled on first use",
                )
                continue
            got = sidecar.read_text().split()[0] if sidecar.is_file() else None
            if spec.sha256 and got and got != spec.sha256:
                add(
                    "fail",
                    f"model {model}",
                    f"{file} sha256 {got[:12]}… is not the profile's {spec.sha256[:12]}…",
                    f"smackctl models pull {model}",
                )
            else:
                add("ok", f"model {model}", f"{file} ({output.human_bytes(file.stat().st_size)})")
