"""The supervisor process: ``python -m smackctl.daemon``.

Start-up order matters: take the pid lock (one supervisor per state dir), bind the port (a
clear error if it is taken), reap runners a crashed predecessor left, then serve. On exit:
drain, stop every runner, remember what was loaded, release the lock.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import logging.handlers
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp

from smackctl.config import DEFAULT_HOST, DEFAULT_PORT, Profile
from smackctl.errors import SmackError, UsageError
from smackctl.netaddr import display_url, is_loopback, own_names
from smackctl.paths import Paths, get_paths
from smackctl.profile_file import find_profile, load_profile

from .api import create_app
from .api.common import MAX_BODY
from .connections import GuardedHttp, connection_limit, raise_fd_limit
from .fleet.follow import FleetFollower, fleet_spec
from .fleet.service import Fleet
from .scheduler import Scheduler
from .services import Services, assemble
from .startup import bind, lock, read_or_create_token, setup_logging
from .store import Store
from .systemd import Notifier, draining_server

__all__ = ["main", "read_or_create_token"]

log = logging.getLogger("smackctl.supervisor")


def allowed_hosts(args: argparse.Namespace) -> list[str]:
    """The Host names admitted besides loopback ones: ``--allowed-host`` and
    SMACKCTL_ALLOWED_HOSTS (comma-separated)."""
    env = os.environ.get("SMACKCTL_ALLOWED_HOSTS", "")
    return [h.strip() for h in [*args.allowed_host, *env.split(",")] if h.strip()]


def _check_tls(cert: str | None, key: str | None) -> None:
    """Both or neither, each a file we can read: a clear error before anything starts."""
    if bool(cert) != bool(key):
        raise UsageError(
            "HTTPS needs both a certificate and its key",
            "give both `--tls-cert FILE` and `--tls-key FILE`",
        )
    for what, path in (("certificate", cert), ("key", key)):
        if path and not os.access(path, os.R_OK):
            raise UsageError(
                f"cannot read the TLS {what} {path}", f"check the path given to --tls-{what[:4]}"
            )
    if cert and key:
        import ssl

        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as exc:
            raise UsageError(
                f"the TLS certificate {cert} and key {key} cannot be used: {exc}",
                "give a PEM certificate and the private key that goes with it",
            ) from exc


def _profile(store: Store, requested: str | None) -> tuple[Profile, Path | None, str | None]:
    """The profile to start with, and a notice when the active one's file is gone."""
    name = requested or store.get("active_profile_path") or "default"
    notice = None
    try:
        path = find_profile(name)
    except UsageError:
        if requested:
            raise
        path = find_profile("default")
        notice = (
            f"the active profile's file {name} no longer exists: started with profile "
            "default (`smackctl profile switch NAME` to choose another)"
        )
        log.warning("%s", notice)
    profile = load_profile(path)
    store.set("active_profile_path", str(path))
    return profile, path, notice


def _scheduler(args: argparse.Namespace, paths: Paths) -> Scheduler:
    """The scheduler on the profile to start with, what a crashed predecessor left reaped."""
    store = Store(paths.db_path)
    profile, profile_path, notice = _profile(store, args.profile)
    scheduler = Scheduler(paths, store, profile, profile_path)
    if notice:
        scheduler.notices.append(notice)
    scheduler.plan_restore()
    reaped = scheduler.loader.reap_stale_runners()
    if reaped:
        log.warning("killed %d runner(s) left by an earlier supervisor: %s", len(reaped), reaped)
    return scheduler


def _hosts(args: argparse.Namespace, scheduler: Scheduler) -> set[str]:
    """The Host names admitted besides loopback ones; a LAN bind without TLS is said once."""
    extra = set(allowed_hosts(args))
    if not is_loopback(args.host):
        extra |= own_names(args.host)  # a LAN bind: the names other machines reach it by
        if not args.tls_cert:
            notice = (
                f"serving {args.host}:{args.port} to other machines over plain HTTP: the "
                "token and every prompt cross the network unencrypted (`smackctl start "
                "--tls-cert FILE --tls-key FILE` serves HTTPS)"
            )
            log.warning("%s", notice)
            scheduler.notices.append(notice)
    return extra


class _Stop:
    """A stop asked for (``POST /api/shutdown``, SIGTERM): drain, or cut what runs after
    ``timeout``, then end the server. ``server`` is set once it exists."""

    def __init__(self, scheduler: Scheduler, systemd: Notifier, services: Services) -> None:
        self.scheduler, self.systemd, self.services = scheduler, systemd, services
        self.server: Any = None

    def __call__(self, timeout: float, force: bool) -> None:
        asyncio.get_running_loop().create_task(self._go(timeout, force))

    async def _go(self, timeout: float, force: bool) -> None:
        scheduler = self.scheduler
        running, queued = scheduler.busy()
        self.systemd.send("STOPPING=1", f"STATUS=draining: {running} running, {queued} queued")
        if self.services.fleet is not None:  # the fleet sends it nothing new meanwhile
            await self.services.fleet.drain()
        if force:  # no drain: what runs is cut (each client told so), what waits refused
            scheduler.accepting = False
            scheduler.stop_grace = 0.5
            cut, refused = scheduler.cut_now(forced=True)
            await scheduler.drain_models(None, 2.0)  # their error answers go out
            log.warning(
                "stop --force: %d request(s) running and %d queued: %d answer(s) cut and %d "
                "queued request(s) refused", running, queued, cut, refused,
            )  # fmt: skip
        elif await scheduler.drain(timeout):
            log.info(
                "drain: %d request(s) running and %d queued at the stop; all answered",
                running,
                queued,
            )
        else:
            cut, refused = scheduler.cut_now()
            await scheduler.drain_models(None, 5.0)  # their error answers go out
            log.warning(
                "drain: %d request(s) running and %d queued at the stop; after %gs "
                "%d answer(s) were cut and %d queued request(s) refused",
                running, queued, timeout, cut, refused,
            )  # fmt: skip
        scheduler.events.close()  # event streams end: none may hold the stop open
        self.server.should_exit = True
        if force:  # nor may any other connection (a remote's stream, the page's socket)
            self.server.force_exit = True


def _server(args: argparse.Namespace, app: ASGIApp, stop: _Stop) -> Any:
    """uvicorn's server for ``app``, its connections held to bounds (connections.py)."""
    import uvicorn

    fds = raise_fd_limit()
    http = GuardedHttp.configure(
        float(os.environ.get("SMACKCTL_HEAD_TIMEOUT") or 15.0),
        int(os.environ.get("SMACKCTL_MAX_CONNECTIONS") or connection_limit(fds)),
    )
    config = uvicorn.Config(
        app,
        http=http,
        ssl_certfile=args.tls_cert,
        ssl_keyfile=args.tls_key,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=args.drain_timeout,
        timeout_keep_alive=30,
        ws_max_size=MAX_BODY,  # the WebSocket's frames (ui/live.py), as bodies are capped
    )
    stop.server = draining_server(config, stop, args.drain_timeout)
    return stop.server


async def _announce(
    args: argparse.Namespace, paths: Paths, services: Services, server: Any, notify: Notifier
) -> None:
    """Once the server listens: the endpoint files, the parts that start with it, the word
    to the log and to systemd, then the models to load again."""
    while not server.started:
        await asyncio.sleep(0.01)
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"{'https' if args.tls_cert else 'http'}://{host}:{args.port}"
    if args.tls_cert:  # the certificate the CLI trusts for this URL
        paths.endpoint_cert_path.write_text(str(Path(args.tls_cert).resolve()) + "\n")
    else:
        paths.endpoint_cert_path.unlink(missing_ok=True)
    paths.endpoint_path.write_text(url + "\n")
    # the remote deployments' clients and health checks now, not on the first request
    # (an httpx client's TLS context takes ~0.3 s to build here)
    services.deployments.sync()
    services.reloader.start()
    if services.fleet is not None:  # joined once the server answers: it serves the fleet
        await services.fleet.start()
    seen_as = display_url(url)
    also = f" (from elsewhere: {seen_as})" if seen_as != url else ""
    name = services.scheduler.profile.name
    log.info("supervisor %d ready at %s%s (profile %s)", os.getpid(), url, also, name)
    notify.send("READY=1", f"STATUS=ready at {seen_as} (profile {name})")
    await services.scheduler.restore()


async def _serve(args: argparse.Namespace, paths: Paths, sock: socket.socket) -> None:
    systemd = Notifier.from_environ(os.environ)  # before any runner starts: none inherits it
    scheduler = _scheduler(args, paths)
    token = None
    if not args.no_auth:
        token, notice = read_or_create_token(paths)
        if notice:
            scheduler.notices.append(notice)
    services = assemble(scheduler)
    if (spec := fleet_spec(args.join, scheduler.profile)) is not None:
        services.fleet = Fleet(services, spec)
    services.follower = FleetFollower(services, args.join)  # a switch: left, and joined
    stop = services.stop = _Stop(scheduler, systemd, services)
    app = create_app(
        services,
        token=token,
        extra_hosts=_hosts(args, scheduler),
        body_timeout=float(os.environ.get("SMACKCTL_BODY_TIMEOUT") or 60.0),
    )
    server = _server(args, app, stop)
    reaper = asyncio.get_running_loop().create_task(scheduler.reaper())
    announcer = asyncio.get_running_loop().create_task(
        _announce(args, paths, services, server, systemd)
    )
    try:
        await server.serve(sockets=[sock])
    finally:
        announcer.cancel()
        reaper.cancel()
        log.info("stopping: unloading every model")
        await scheduler.shutdown()
        await services.reloader.stop()
        await services.aclose()
        scheduler.store.close()
        with contextlib.suppress(FileNotFoundError):
            paths.endpoint_path.unlink()
        paths.endpoint_cert_path.unlink(missing_ok=True)
        log.info("supervisor %d stopped", os.getpid())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smackctl-supervisor")
    parser.add_argument("--host", default=os.environ.get("SMACKCTL_HOST", DEFAULT_HOST))
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("SMACKCTL_PORT", DEFAULT_PORT))
    )
    parser.add_argument("--profile", default=None)
    parser.add_argument("--foreground", action="store_true")
    parser.add_argument("--no-auth", action="store_true")
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    parser.add_argument("--json-logs", action="store_true")
    parser.add_argument("--tls-cert", default=os.environ.get("SMACKCTL_TLS_CERT") or None)
    parser.add_argument("--tls-key", default=os.environ.get("SMACKCTL_TLS_KEY") or None)
    parser.add_argument("--allowed-host", action="append", default=[])
    parser.add_argument("--join", default=os.environ.get("SMACKCTL_JOIN") or None)
    args = parser.parse_args(argv)
    # a file-size limit (or a filesystem that answers EFBIG) fails the write, as a full disk
    # does, instead of killing the supervisor; the state store keeps what it could not write
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    # what the supervisor and its runners write (state.db, logs, kv/, models) is the user's
    # alone, whatever the umask it was started with: prompts and answers are in some of it
    os.umask(0o077)
    paths = get_paths().ensure()
    setup_logging(paths, args.foreground, args.json_logs)
    try:
        if args.no_auth and not is_loopback(args.host):
            raise UsageError(
                f"refusing to listen on {args.host} without a token",
                "drop --no-auth, or bind 127.0.0.1",
            )
        _check_tls(args.tls_cert, args.tls_key)
        held = lock(paths)
        try:
            sock = bind(args.host, args.port)
        except SmackError:  # no supervisor came of it: no pid file left for the next start
            with contextlib.suppress(OSError):
                paths.pid_path.unlink()
            held.close()
            raise
    except SmackError as exc:
        log.error("%s", exc)
        print(f"smackctl: error: {exc}", file=sys.stderr)
        return exc.exit_code
    try:
        asyncio.run(_serve(args, paths, sock))
    except SmackError as exc:
        log.error("%s", exc)
        print(f"smackctl: error: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        with contextlib.suppress(OSError):
            paths.pid_path.unlink()
        held.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
