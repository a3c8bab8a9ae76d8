"""`smackctl start | stop | restart | status | env` (`logs`: logs_cmd.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from smackctl.errors import SupervisorNotRunning, UsageError
from smackctl.paths import DEFAULT_HOST, DEFAULT_PORT

from . import output
from ._common import client, globals_of

__all__ = ["env", "restart", "start", "status", "stop"]

# the defaults are said in words: the help pages are generated once (help.json), and a
# default printed there would be wrong whenever the variable is set
HostOpt = Annotated[
    str,
    typer.Option(
        "--host",
        envvar="SMACKCTL_HOST",
        show_default=False,
        help=f"Address to listen on (default: SMACKCTL_HOST, else {DEFAULT_HOST}).",
    ),
]
PortOpt = Annotated[
    int,
    typer.Option(
        "--port",
        envvar="SMACKCTL_PORT",
        show_default=False,
        help=f"Port to listen on (default: SMACKCTL_PORT, else {DEFAULT_PORT}).",
    ),
]
ProfileOpt = Annotated[
    str | None, typer.Option("--profile", "-p", help="Profile to activate.", autocompletion=None)
]


def start(
    ctx: typer.Context,
    profile: ProfileOpt = None,
    foreground: Annotated[
        bool,
        typer.Option(
            "--foreground", help="Run attached to this terminal (for systemd, containers)."
        ),
    ] = False,
    host: HostOpt = DEFAULT_HOST,
    port: PortOpt = DEFAULT_PORT,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Serve without a token (loopback only).")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait until it answers.")] = 60.0,
    json_logs: Annotated[
        bool, typer.Option("--json-logs", help="Write the supervisor log as JSON lines.")
    ] = False,
    tls_cert: Annotated[
        str | None,
        typer.Option(
            "--tls-cert",
            envvar="SMACKCTL_TLS_CERT",
            help="Serve HTTPS with this PEM certificate (with --tls-key).",
        ),
    ] = None,
    tls_key: Annotated[
        str | None,
        typer.Option(
            "--tls-key", envvar="SMACKCTL_TLS_KEY", help="The private key of --tls-cert (PEM)."
        ),
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            help="Another Host name clients may use (repeatable; also SMACKCTL_ALLOWED_HOSTS "
            "and the profile's allowed_hosts).",
        ),
    ] = None,
    join: Annotated[
        str | None,
        typer.Option(
            "--join",
            help="Join the fleet of this NATS server (nats://HOST:4222) for this run: serve "
            "this machine's models to it, send it what this one does not serve.",
        ),
    ] = None,
) -> None:
    """Start the supervisor in the background and wait until it answers."""
    from ._lifecycle import Serving, start_supervisor

    if bool(tls_cert) != bool(tls_key):
        raise UsageError(
            "HTTPS needs both a certificate and its key",
            "give both `--tls-cert FILE` and `--tls-key FILE`",
        )
    serving = Serving(
        host,
        port,
        profile or globals_of(ctx).profile,
        no_auth=no_auth,
        json_logs=json_logs,
        tls_cert=tls_cert,
        tls_key=tls_key,
        allowed_hosts=tuple(allowed_host or ()),
        join=join,
    )
    if foreground:
        argv = serving.argv(foreground=True)
        os.execv(argv[0], argv)

    def stale(pid: int) -> None:
        output.info(f"removed a stale pid file (supervisor pid {pid} is not running)")

    given = any(
        getattr(ctx.get_parameter_source(p), "name", None) in ("COMMANDLINE", "ENVIRONMENT")
        for p in ("host", "port")
    )
    with output.spinner("starting the supervisor…"):
        s = start_supervisor(serving, timeout=timeout, on_stale=stale, address_given=given)
    if s.already:
        output.info(f"smackctl is already running (pid {s.pid})")
        if profile is not None:  # `start --profile X` asked for X: say it is not X's
            _say_other_profile(s.url, profile)
    else:
        output.info(f"smackctl started (pid {s.pid})")
        _say_restored(s.url)
    print(s.url)


def _say_other_profile(url: str, asked: str) -> None:
    """A start with --profile found a supervisor running already: a warning when it runs
    another profile (a start never switches: `profile switch` does, without a lost request)."""

    from smackctl.client import Client
    from smackctl.errors import SmackError

    try:
        with Client(url, timeout=5.0) as c:
            running = str(c.get("/api/status").get("profile") or "")
    except SmackError:
        return
    if running and running != asked and running != Path(asked).stem:
        output.warn(
            f"it runs profile {running}, not {asked}: a start does not switch; "
            f"`smackctl profile switch {asked}` does (`--dry-run` shows its plan first)"
        )


def _say_restored(url: str) -> None:
    """Models the supervisor loads again at start (loaded at the last stop, pinned, preload)
    are said aloud: a start that loads a model nobody asked for now should not be silent."""
    from smackctl.client import Client
    from smackctl.errors import SmackError

    try:
        with Client(url, timeout=5.0) as c:
            st = c.get("/api/status")
    except SmackError:
        return
    for w in st.get("warnings") or []:
        output.warn(w)  # what the start found wrong and did about it
    restoring = st.get("restoring") or {}
    why = {
        "loaded": "loaded when the supervisor last stopped",
        "pinned": "pinned",
        "preload": "preload: true in the profile",
    }
    for name, reason in sorted(restoring.items()):
        output.info(
            f"loading {name} ({why.get(reason, reason)}); "
            f"`smackctl models unload {name}` unloads it"
        )


def stop(
    ctx: typer.Context,
    force: Annotated[
        bool, typer.Option("--force", help="Kill at once instead of draining requests.")
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="Seconds to let in-flight requests finish.")
    ] = 30.0,
) -> None:
    """Stop admitting requests, let in-flight ones finish, unload every model, exit."""
    from smackctl.client import default_url

    from ._lifecycle import stop_supervisor

    given = globals_of(ctx).url
    url = given or default_url()
    asked = time.strftime("%Y-%m-%d %H:%M:%S")
    with output.spinner("stopping the supervisor (draining requests)…"):
        pid = stop_supervisor(url, timeout, force, explicit=given is not None)
    if pid is None:
        output.info("smackctl is not running")
    else:
        if (drain := _drain_line(asked)) is not None:
            output.info(drain)  # what the stop waited for, and what it cut
        output.info(f"smackctl stopped (pid {pid})")


def _drain_line(since: str) -> str | None:
    """The supervisor log's account of this stop's drain (``drain: …``), if it wrote one."""
    from smackctl.paths import get_paths

    try:
        lines = get_paths().supervisor_log.read_text(errors="replace").splitlines()[-200:]
    except OSError:
        return None
    for line in reversed(lines):
        if "drain: " in line and line[:19] >= since:
            return "drain: " + line.split("drain: ", 1)[1]
    return None


def restart(
    ctx: typer.Context,
    profile: ProfileOpt = None,
    host: HostOpt = DEFAULT_HOST,
    port: PortOpt = DEFAULT_PORT,
    timeout: Annotated[float, typer.Option(help="Seconds to drain, then to start.")] = 30.0,
) -> None:
    """Stop the supervisor (draining), then start it again."""
    stop(ctx, force=False, timeout=timeout)
    start(
        ctx,
        profile=profile,
        foreground=False,
        host=host,
        port=port,
        no_auth=False,
        timeout=max(timeout, 60.0),
        json_logs=False,
    )


def status(
    ctx: typer.Context,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Show the supervisor and its loaded models. Exit code 3 when it is not running."""
    try:
        with client(ctx, autostart=False) as c:
            st = c.get("/api/status")
    except SupervisorNotRunning as exc:
        if json_:
            output.print_json({"running": False, "url": exc.url})
        raise
    st["running"] = True
    if json_:
        output.print_json(st)
        return
    for w in st.get("warnings") or []:
        output.warn(w)
    mem = st["memory"]
    print(f"smackctl {st['version']}  running  pid {st['pid']}  {st['url']}")
    print(
        f"uptime {output.human_duration(st['uptime'])}  profile {st['profile']}  "
        f"supervisor RSS {output.human_bytes(st['rss'])}  "
        f"memory {output.human_bytes(mem['used_ram'])} used of "
        f"{output.human_bytes(mem['budget_ram'])} budget "
        f"({output.human_bytes(mem['free_ram'])} free)"
    )
    if fleet := st.get("fleet"):
        state = "connected" if fleet["connected"] else "not connected"
        others = ", ".join(m["name"] for m in fleet["members"]) or "none heard"
        print(f"fleet {fleet['name']} at {fleet['url']} ({state}); members: {others}")
    cpu = st.get("cpu") or {}
    if cpu.get("busy"):
        n = cpu["waiting"]
        waiting = f", {n} request{'s' if n > 1 else ''} waiting for cores" if n else ""
        print(f"cpu {cpu['busy']} of {cpu['cores']} cores computing{waiting}")
    loaded = [m for m in st["models"] if m["state"] != "stopped"]
    now = time.time()
    if not loaded:
        print("no model loaded")
        _print_troubles(st["models"], now)
        return
    output.table(
        ["MODEL", "STATE", "PID", "RSS", "LOADED", "LAST USED", "REQUESTS"],
        [
            [
                m["name"],
                m["state"],
                m["pid"],
                output.human_bytes(m["rss"]),
                output.human_duration(now - m["loaded_since"]) + " ago"
                if m["loaded_since"]
                else None,
                output.human_duration(now - m["last_used"]) + " ago" if m["last_used"] else None,
                m["requests_served"],
            ]
            for m in loaded
        ],
    )
    _print_troubles(st["models"], now)


def _print_troubles(models: list[dict[str, Any]], now: float) -> None:
    """A line for each model that crashed or failed: how often, what happened, the fix."""
    for m in models:
        if m.get("crashes"):
            n = m["crashes"]
            ago = output.human_duration(now - (m.get("last_crash_at") or now))
            print(
                f"{m['name']}: {n} crash{'es' if n != 1 else ''}, the last {ago} ago: the "
                f"runner {m['last_crash']} (`smackctl logs {m['name']}`, `smackctl doctor`)"
            )
        elif m.get("last_error") and m["state"] in ("failed", "backoff", "stopped"):
            print(f"{m['name']}: {m['last_error']} (`smackctl logs {m['name']}`)")


def env(ctx: typer.Context) -> None:
    """Print the `export` lines an OpenAI or Anthropic client reads (base URL and key); on a
    supervisor that serves every address, the URL has this machine's LAN address."""
    from smackctl.netaddr import display_url

    with client(ctx) as c:
        url, token = display_url(c.url), c.token
    print(f"export OPENAI_BASE_URL={url}/v1")
    print(f"export OPENAI_API_KEY={token or 'none'}")
    print(f"export ANTHROPIC_BASE_URL={url}")
    print(f"export ANTHROPIC_API_KEY={token or 'none'}")
