"""`smackctl top | usage | backends | doctor | config`: for the person who runs the machine."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from smackctl.errors import SmackError, SupervisorNotRunning

from . import output
from ._common import client, since_time
from ._group import Group

__all__ = ["config_app", "register"]

config_app = typer.Typer(
    cls=Group,
    rich_markup_mode=None,  # click's plain help: typer's rich help imports 200 ms of rich
    help="Where smackctl keeps things and which settings are in force.",
    no_args_is_help=True,
)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON only.")]


def usage(
    ctx: typer.Context,
    since: Annotated[str, typer.Option(help="How far back: 30m, 12h, 7d.")] = "7d",
    json_: JsonOpt = False,
) -> None:
    """Requests, tokens and errors per model per day, from the supervisor's SQLite log."""
    with client(ctx, autostart=False) as c:
        rows = c.get("/api/usage", params={"since": str(since_time(since))})
    if json_:
        output.print_json(rows)
        return
    output.table(
        ["DAY", "MODEL", "REQUESTS", "TOKENS IN", "TOKENS OUT", "ERRORS", "AVG MS"],
        [
            [
                r["day"],
                r["model"],
                r["requests"],
                r["tokens_in"],
                r["tokens_out"],
                r["errors"],
                r["avg_ms"],
            ]
            for r in rows
        ],
    )


def backends(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Deployments (local models and servers elsewhere): circuit breakers, health, groups."""
    with client(ctx, autostart=False) as c:
        view = c.get("/api/backends")
    if json_:
        output.print_json(view)
        return
    rows = []
    for d in view["deployments"]:
        b = d["breaker"]
        breaker = b["state"] if b["state"] == "closed" else f"{b['state']}: {b['why']}"
        rows.append(
            [
                d["name"],
                d["url"] or d["backend"],
                breaker,
                "yes" if d["healthy"] else f"no: {d['health_error']}",
                d["in_flight"],
                "-" if d["ttfb_ms"] is None else f"{d['ttfb_ms']:.0f}",
                d["served"],
                d["failed"],
            ]
        )
    output.table(
        ["DEPLOYMENT", "WHERE", "BREAKER", "HEALTHY", "IN FLIGHT", "TTFB MS", "SERVED", "FAILED"],
        rows,
    )
    for name, g in view["groups"].items():
        fallbacks = f", then {', '.join(g['fallbacks'])}" if g["fallbacks"] else ""
        print(f"group {name} ({g['policy']}): {', '.join(g['deployments'])}{fallbacks}")


def _frame(st: dict[str, Any], rates: dict[str, float]) -> Any:
    mem = st["memory"]
    head = (
        f"smackctl {st['version']}  pid {st['pid']}  profile {st['profile']}  up "
        f"{output.human_duration(st['uptime'])}  RAM {output.human_bytes(mem['used_ram'])}"
        f" / {output.human_bytes(mem['budget_ram'])} budget   (q quits)"
    )
    rows = []
    for m in st["models"]:
        if m["state"] == "stopped" and not m["requests_served"]:
            continue
        rate = rates.get(m["name"])
        rows.append(
            [
                m["name"],
                m["state"],
                # what the runner holds; a stopped model holds nothing (its estimate is for
                # `models load --estimate-only`)
                output.human_bytes(m["rss"] or m["estimated_ram"])
                if m["state"] in ("ready", "starting")
                else "-",
                output.human_bytes(m["measured_vram"]) if m["measured_vram"] else "-",
                f"{rate:.1f}" if rate is not None else "-",
                m["in_flight"],
                m["queued"],
                m["requests_served"],
            ]
        )
    cols = ["MODEL", "STATE", "RAM", "VRAM", "TOKENS/S", "IN FLIGHT", "QUEUED", "REQUESTS"]
    return output.frame(head, cols, rows)


def top(
    ctx: typer.Context,
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 1.0,
) -> None:
    """A live view of the runners: state, memory against the budget, tokens/s, queues."""
    with client(ctx, autostart=False) as c:
        st = c.get("/api/status")
        if once or not output.is_tty():
            output.render(_frame(st, {}))
            return
        last = {m["name"]: (m["tokens_out"], time.monotonic()) for m in st["models"]}
        with _raw_stdin() as key, output.live(_frame(st, {})) as update:
            while key(interval) != "q":
                st = c.get("/api/status")
                now = time.monotonic()
                rates = {}
                for m in st["models"]:
                    prev, then = last.get(m["name"], (m["tokens_out"], now))
                    rates[m["name"]] = (m["tokens_out"] - prev) / max(now - then, 1e-6)
                    last[m["name"]] = (m["tokens_out"], now)
                update(_frame(st, rates))


class _raw_stdin:  # noqa: N801 - used as a context manager factory
    """Read single keys without echo, with a timeout (POSIX terminals)."""

    def __enter__(self) -> Any:
        import select
        import termios
        import tty

        self.fd = sys.stdin.fileno()
        self.old = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)

        def key(timeout: float) -> str | None:
            ready, _, _ = select.select([sys.stdin], [], [], timeout)
            return sys.stdin.read(1) if ready else None

        return key

    def __exit__(self, *exc: object) -> None:
        import termios

        termios.tcsetattr(self.fd, termios.TCSADRAIN, self.old)


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
        raise typer.Exit(1)


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


def _read_db(db: Any, query: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
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
    for name, spec in _read_db(db, "SELECT name, spec FROM added_models ORDER BY name"):
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
    rows = _read_db(
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
    from smackctl.config import validate_profile_file
    from smackctl.paths import get_paths, list_profile_files

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


@config_app.command("path")
def config_path(json_: JsonOpt = False) -> None:
    """Where smackctl keeps its files (SMACKCTL_HOME moves them all)."""
    from smackctl.paths import get_paths, profile_dirs

    p = get_paths()
    data = {
        "config": str(p.config_dir),
        "data": str(p.data_dir),
        "state": str(p.state_dir),
        "models": str(p.models_dir),
        "logs": str(p.logs_dir),
        "database": str(p.db_path),
        "token": str(p.token_path),
        "profile_dirs": [str(d) for d in profile_dirs()],
    }
    if json_:
        output.print_json(data)
        return
    for k, v in data.items():
        print(f"{k:<13} {', '.join(v) if isinstance(v, list) else v}")


@config_app.command("show")
def config_show(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """The settings in force and where each comes from."""
    from smackctl.client import default_url
    from smackctl.paths import DEFAULT_HOST, DEFAULT_PORT, get_paths

    env = {
        k: v for k, v in os.environ.items() if k.startswith("SMACKCTL_") and k != "SMACKCTL_TOKEN"
    }
    from urllib.parse import urlsplit

    from smackctl.netaddr import display_url
    from smackctl.paths import pid_status

    paths = get_paths()
    profile, source = _profile_in_force(ctx, paths.db_path)
    url = default_url()
    running = pid_status(paths)[1] and paths.endpoint_path.is_file()
    where = urlsplit(url)
    data = {
        "url": url,
        "url_elsewhere": display_url(url),  # a wildcard bind's URL from another machine
        # a running supervisor's own address, else what the next start takes
        "host": where.hostname if running else os.environ.get("SMACKCTL_HOST", DEFAULT_HOST),
        "port": where.port if running else int(os.environ.get("SMACKCTL_PORT", DEFAULT_PORT)),
        "address_from": "the running supervisor" if running else "the next start",
        "profile": profile,
        "profile_from": source,
        "environment": env,
    }
    if json_:
        output.print_json(data)
        return
    for k, v in data.items():
        print(f"{k:<12} {v}")


def _profile_in_force(ctx: typer.Context, db: Path) -> tuple[str, str]:
    """The active profile and where that comes from: the running supervisor's, else the one
    the next start activates (SMACKCTL_PROFILE, else the last active one, else default)."""
    try:
        with client(ctx, autostart=False) as c:
            return str(c.get("/api/status")["profile"]), "the running supervisor"
    except SmackError:
        pass
    if name := os.environ.get("SMACKCTL_PROFILE"):
        return name, "SMACKCTL_PROFILE (used by the next start)"
    rows = _read_db(db, "SELECT value FROM kv WHERE key='active_profile_path'")
    if rows:
        return Path(rows[0][0]).stem, "the last active one (used by the next start)"
    return "default", "the default (used by the next start)"


def register(app: typer.Typer) -> None:
    from .events import events
    from .plugins import plugins_app
    from .route import route

    for fn in (top, usage, backends, events, route, doctor):
        app.command()(fn)
    app.add_typer(plugins_app, name="plugins")
    from .cache import cache_app

    app.add_typer(cache_app, name="cache")
    app.add_typer(config_app, name="config")
