"""The supervisor process: ``python -m smackctl.daemon``.

Start-up order matters: take the pid lock (one supervisor per state dir), bind the port (a
clear error if it is taken), reap runners a crashed predecessor left, then serve. On exit:
drain, stop every runner, remember what was loaded, release the lock.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import fcntl
import logging
import logging.handlers
import os
import secrets
import signal
import socket
import sys
from pathlib import Path
from typing import IO

from smackctl.config import DEFAULT_HOST, DEFAULT_PORT, Profile, find_profile, load_profile
from smackctl.errors import PortInUse, SmackError, UsageError
from smackctl.netaddr import display_url, is_loopback, own_names
from smackctl.paths import Paths, get_paths

from .api import create_app
from .connections import GuardedHttp, connection_limit, raise_fd_limit
from .scheduler import Scheduler
from .services import assemble
from .store import Store
from .systemd import JournalFormatter, Notifier, draining_server, stderr_is_journal

__all__ = ["main", "read_or_create_token"]

log = logging.getLogger("smackctl.supervisor")


def read_or_create_token(paths: Paths) -> tuple[str, str | None]:
    """The supervisor's token, and a notice when it had to be replaced.

    A token file that others could read (a mode other than 0600, another owner) is replaced,
    not trusted: whoever read it could use it. An empty one is replaced too.
    """
    p = paths.token_path
    notice = None
    if p.is_file():
        st = p.stat()
        token = p.read_text().strip()
        if st.st_mode & 0o077 == 0 and st.st_uid == os.getuid() and token:
            return token, None
        why = (
            "was empty"
            if not token
            else f"had mode {st.st_mode & 0o777:o}, so other users could read it"
            if st.st_mode & 0o077
            else f"belonged to uid {st.st_uid}"
        )
        notice = (
            f"the token file {p} {why}: a new token was made in a file only you can read "
            "(clients that saved the old one need the new one: `smackctl env`)"
        )
        log.warning("%s", notice)
    elif p.exists():
        raise SmackError(f"{p} is not a file", f"remove it (`rm -r {p}`), then start again")
    token = "smk-" + secrets.token_urlsafe(32)
    tmp = p.with_name(f".{p.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(tmp, p)
    return token, notice


def _lock(paths: Paths) -> IO[str]:
    """Hold an exclusive lock on the pid file for the life of the process."""
    f = open(paths.pid_path, "a+")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        other = f.read().strip()
        raise SmackError(
            f"another supervisor (pid {other or '?'}) holds {paths.pid_path}",
            "use `smackctl status`, or `smackctl stop` first",
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    # IPPROTO_TCP, not the default 0: accepted sockets inherit it, and asyncio sets
    # TCP_NODELAY only on sockets whose proto says TCP. Without it Nagle's algorithm held
    # every response's last segment for the client's delayed ACK: +40 ms per request.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(host, port) from exc
        raise SmackError(
            f"cannot listen on {host}:{port}: {exc.strerror}",
            "choose another address with `--host`/`--port`",
        ) from exc
    sock.listen(512)
    sock.set_inheritable(False)
    return sock


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


class _JsonFormatter(logging.Formatter):
    """One JSON object a line; request lines carry their fields as keys."""

    def format(self, record: logging.LogRecord) -> str:
        import json

        out = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.name == "smackctl.requests":
            for part in out["message"].split():
                key, eq, value = part.partition("=")
                if eq:
                    out[key] = value
        return json.dumps(out)


def _setup_logging(paths: Paths, foreground: bool, json_logs: bool = False) -> None:
    handlers: list[logging.Handler] = [
        logging.handlers.RotatingFileHandler(
            paths.supervisor_log, maxBytes=10 * 1024**2, backupCount=3
        )
    ]
    fmt: logging.Formatter = (
        _JsonFormatter()
        if json_logs
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    for h in handlers:
        h.setFormatter(fmt)
    if foreground:  # the files `smackctl logs` reads, and stderr: a terminal or the journal
        stderr = logging.StreamHandler(sys.stderr)
        journal = stderr_is_journal(os.environ)
        stderr.setFormatter(JournalFormatter(fmt if json_logs else None) if journal else fmt)
        handlers.append(stderr)
    root = logging.getLogger()
    root.handlers.clear()
    for h in handlers:
        root.addHandler(h)
    root.setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per proxied request is ours


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


async def _serve(args: argparse.Namespace, paths: Paths, sock: socket.socket) -> None:
    import uvicorn

    systemd = Notifier.from_environ(os.environ)  # before any runner starts: none inherits it
    store = Store(paths.db_path)
    profile, profile_path, notice = _profile(store, args.profile)
    scheduler = Scheduler(paths, store, profile, profile_path)
    if notice:
        scheduler.notices.append(notice)
    scheduler.plan_restore()
    reaped = scheduler.loader.reap_stale_runners()
    if reaped:
        log.warning("killed %d runner(s) left by an earlier supervisor: %s", len(reaped), reaped)
    token = None
    if not args.no_auth:
        token, notice = read_or_create_token(paths)
        if notice:
            scheduler.notices.append(notice)
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
    server: uvicorn.Server | None = None

    def request_shutdown(timeout: float, force: bool) -> None:
        async def go() -> None:
            running, queued = scheduler.busy()
            systemd.send("STOPPING=1", f"STATUS=draining: {running} running, {queued} queued")
            if force:
                scheduler.accepting = False
                scheduler.stop_grace = 0.5
            else:
                drained = await scheduler.drain(timeout)
                if drained:
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
                        running,
                        queued,
                        timeout,
                        cut,
                        refused,
                    )
            assert server is not None
            scheduler.events.close()  # event streams end: none may hold the stop open
            server.should_exit = True

        asyncio.get_running_loop().create_task(go())

    services = assemble(scheduler)
    services.stop = request_shutdown
    app = create_app(
        services,
        token=token,
        extra_hosts=extra,
        body_timeout=float(os.environ.get("SMACKCTL_BODY_TIMEOUT") or 60.0),
    )
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
    )
    server = draining_server(config, request_shutdown, args.drain_timeout)
    reaper = asyncio.get_running_loop().create_task(scheduler.reaper())
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"{'https' if args.tls_cert else 'http'}://{host}:{args.port}"

    async def announce() -> None:
        while not server.started:
            await asyncio.sleep(0.01)
        if args.tls_cert:  # the certificate the CLI trusts for this URL
            paths.endpoint_cert_path.write_text(str(Path(args.tls_cert).resolve()) + "\n")
        else:
            paths.endpoint_cert_path.unlink(missing_ok=True)
        paths.endpoint_path.write_text(url + "\n")
        # the remote deployments' clients and health checks now, not on the first request
        # (an httpx client's TLS context takes ~0.3 s to build here)
        services.deployments.sync()
        services.reloader.start()
        seen_as = display_url(url)
        also = f" (from elsewhere: {seen_as})" if seen_as != url else ""
        log.info("supervisor %d ready at %s%s (profile %s)", os.getpid(), url, also, profile.name)
        systemd.send("READY=1", f"STATUS=ready at {seen_as} (profile {profile.name})")
        await scheduler.restore()

    announcer = asyncio.get_running_loop().create_task(announce())
    try:
        await server.serve(sockets=[sock])
    finally:
        announcer.cancel()
        reaper.cancel()
        log.info("stopping: unloading every model")
        await scheduler.shutdown()
        await services.reloader.stop()
        await services.aclose()
        store.close()
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
    args = parser.parse_args(argv)
    # a file-size limit (or a filesystem that answers EFBIG) fails the write, as a full disk
    # does, instead of killing the supervisor; the state store keeps what it could not write
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    paths = get_paths().ensure()
    _setup_logging(paths, args.foreground, args.json_logs)
    try:
        if args.no_auth and not is_loopback(args.host):
            raise UsageError(
                f"refusing to listen on {args.host} without a token",
                "drop --no-auth, or bind 127.0.0.1",
            )
        _check_tls(args.tls_cert, args.tls_key)
        lock = _lock(paths)
        sock = _bind(args.host, args.port)
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
        lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
