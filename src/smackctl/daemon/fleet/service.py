"""A supervisor's membership of the fleet: its NATS connection (nats-py; reconnects by
itself), its heartbeat, the other members as heard, and the worker that serves its models.

Started once the server listens, when the profile has ``fleet:``; a connection that fails
(the server away, a wrong credential) is said in the log, in ``status`` and by ``doctor``,
and tried again: one machine's work never waits for the fleet."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smackctl.errors import SmackError, UsageError
from smackctl.fleet_config import FleetSpec
from smackctl.fleet_keys import exposed, public_key

from .front import Front
from .members import Members
from .protocol import ANY_MEMBERS, MEMBERS, WHO, Heartbeat, VersionMismatch
from .shared import SharedLimits
from .shared_cache import FleetCache
from .worker import Worker

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

    from smackctl.daemon.services import Services

__all__ = ["Fleet"]

log = logging.getLogger("smackctl.fleet")


class Fleet:
    def __init__(self, services: Services, spec: FleetSpec) -> None:
        self.s, self.spec = services, spec
        self.instance = uuid.uuid4().hex[:12]
        self.members = Members(spec.name, spec.heartbeat)
        self.nc: Client | None = None
        self.connected = False
        self.error: str | None = None
        self.draining = False
        self.worker = Worker(self)
        self.front = Front(self)
        #: the keys' counters shared by the fleet's fronts (JetStream), when it has them
        self.shared = SharedLimits(lambda: self.connected)
        services.usage.shared_spent = self.shared.spent
        #: the response cache shared by the fleet's members (JetStream), when it has one
        self.cache = FleetCache(lambda: self.connected)
        if spec.share_cache:
            services.cached.fleet = self.cache
            self.cache.on_clear = lambda model: services.cached.open().clear(model)
        self._tasks: list[asyncio.Task[None]] = []
        self._beat_error: str | None = None

    # -- the connection -------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._connect_and_beat()))

    async def _connect_and_beat(self) -> None:
        while self.nc is None:
            try:
                self.nc = await self._connect()
            except Exception as exc:  # noqa: BLE001 - said in words; tried again
                self.error = _words(exc)
                log.error("fleet: cannot join %s as %s: %s (tried again in 5s)",
                          self.spec.url, self.spec.name, self.error)  # fmt: skip
                await asyncio.sleep(5.0)
        # every version's members subject: another version is heard, to be refused in words
        await self.nc.subscribe(ANY_MEMBERS, cb=self._on_member)
        await self.nc.subscribe(WHO, cb=self._on_who)
        await self.worker.start(self.nc)
        await self.shared.open(self.nc)
        if self.spec.share_cache:
            await self.cache.open(self.nc)
        await self.nc.publish(WHO, b"{}")
        log.info("fleet: joined %s as %s", self.spec.url, self.spec.name)
        while True:
            await self._beat()
            for gone in self.members.sweep():
                log.warning("fleet: member %s missed %d heartbeats: dropped", gone, 3)
            await asyncio.sleep(self.spec.heartbeat)

    async def _connect(self) -> Client:
        import nats

        c = self.spec.credentials
        options: dict[str, Any] = {
            "servers": [self.spec.url], "name": f"smackctl {self.spec.name}",
            "allow_reconnect": True, "max_reconnect_attempts": -1, "reconnect_time_wait": 0.5,
            "connect_timeout": 3, "ping_interval": 5, "max_outstanding_pings": 2,
            "disconnected_cb": self._on_disconnected, "reconnected_cb": self._on_reconnected,
            "error_cb": self._on_error,
        }  # fmt: skip
        for what, value in (("token", c.token), ("password", c.password)):
            if value is not None and not value.strip():  # `${NATS_TOKEN}`, unset here
                raise UsageError(
                    f"fleet.credentials.{what} is empty: written as ${{VARIABLE}} in the "
                    "profile, that variable is not set in the supervisor's environment",
                    "restart the supervisor with it set (NATS_TOKEN=… smackctl restart)",
                )
        if c.token is not None:
            options["token"] = c.token
        if c.user is not None:
            options["user"], options["password"] = c.user, c.password
        if c.nkey_file is not None:
            public_key(c.nkey_file)  # a seed that cannot be used is said as such, not as NATS
            if warning := exposed(c.nkey_file):
                log.warning("fleet: %s", warning)
            options["nkeys_seed"] = str(Path(c.nkey_file).expanduser())  # away
        if self.spec.tls is not None:
            options["tls"] = self._tls()
        nc = await nats.connect(**options)
        self.connected, self.error = True, None
        return nc

    def _tls(self) -> ssl.SSLContext:
        tls = self.spec.tls
        assert tls is not None
        context = ssl.create_default_context(cafile=tls.ca)
        if tls.cert and tls.key:
            context.load_cert_chain(tls.cert, tls.key)
        return context

    async def _on_disconnected(self) -> None:
        self.connected = False
        log.warning("fleet: the connection to %s was lost; reconnecting", self.spec.url)

    async def _on_reconnected(self) -> None:
        self.connected, self.error = True, None
        log.info("fleet: reconnected to %s", self.spec.url)
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.publish(WHO, b"{}")

    async def _on_error(self, exc: Exception) -> None:
        words = _words(exc)
        if words != self.error:  # nats-py says it at every try: the log says it once
            log.warning("fleet: %s", words)
        self.error = words

    # -- heartbeats ---------------------------------------------------------------------------

    async def _on_member(self, msg: Msg) -> None:
        try:
            hb = Heartbeat.decode(msg.data)
        except VersionMismatch as exc:
            if exc.name not in self.members.refused:
                log.error("fleet: refused: %s", exc)
            self.members.refused[exc.name] = str(exc)
            return
        except (ValueError, TypeError):
            return  # not one of ours: nothing to hear
        self.members.heard(hb, instance=self.instance)

    async def _on_who(self, msg: Msg) -> None:
        await self._beat()

    def heartbeat(self, leaving: bool = False) -> Heartbeat:
        sched = self.s.scheduler
        budget = sched.budget()
        used = sum(m.memory()[0] for m in self.s.registry.models.values() if m.loaded)
        free = budget.ram - used
        models: dict[str, dict[str, Any]] = {}
        for m in self.s.registry.models.values():
            r = m.runner
            ram = m.memory()[0]
            on_disk = self.s.registry.model_file(m).is_file()
            models[m.name] = {
                "state": m.state, "loaded": m.state == "ready",
                "fits": on_disk and (m.state == "ready" or not ram or ram <= budget.ram),
                "in_flight": m.in_flight, "queued": r.slots.queued if r is not None else 0,
            }  # fmt: skip
            if m.spec.price is not None:  # a front charges a key's budget_usd with it
                models[m.name]["price"] = [m.spec.price.input, m.spec.price.output]
        running, queued = sched.busy()
        return Heartbeat(
            self.spec.name, self.instance, models, {"budget": budget.ram, "free": free},
            running, queued, self.draining or not sched.accepting, leaving,
        )  # fmt: skip

    async def _beat(self) -> None:
        if self.nc is None or not self.connected:
            return
        try:
            await self.nc.publish(MEMBERS, self.heartbeat().encode())
            self._beat_error = None
        except Exception as exc:  # noqa: BLE001 - a heartbeat lost is one of three
            if str(exc) != self._beat_error:  # said once, not every 2 s
                log.warning("fleet: a heartbeat could not go out: %s", exc)
            self._beat_error = str(exc)

    # -- what others see ------------------------------------------------------------------------

    def view(self) -> dict[str, Any]:
        now = time.time()
        return {
            "name": self.spec.name,
            "url": self.spec.url,
            "connected": self.connected,
            "error": self.error,
            "refused": sorted(self.members.refused.values()),
            "clash": self.members.clash,
            "limits": self.shared.view(),
            "cache": {"shared": self.cache.kv is not None, "hits": self.cache.hits,
                      "kept": self.cache.kept},  # fmt: skip
            "members": [
                {"name": hb.name, "models": hb.models, "memory": hb.memory,
                 "in_flight": hb.in_flight, "queued": hb.queued, "draining": hb.draining,
                 "seen": round(now - hb.at, 1)}
                for hb in sorted(self.members.table.values(), key=lambda hb: hb.name)
            ],
        }  # fmt: skip

    def busy(self) -> int:
        """The answers it serves the fleet and forwards to it now."""
        return len(self.worker._serving) + len(self.front.inbox.waiting)

    async def drain(self) -> None:
        """Take nothing new (the stop's drain finishes what runs)."""
        self.draining = True
        await self.worker.stop_taking()
        await self._beat()

    async def aclose(self) -> None:
        if self.s.usage.shared_spent == self.shared.spent:  # what __init__ hooked, unhooked
            self.s.usage.shared_spent = None
        if self.s.cached.fleet is self.cache:
            self.s.cached.fleet = None
        for task in self._tasks:
            task.cancel()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.publish(MEMBERS, self.heartbeat(leaving=True).encode())
                await self.nc.flush(timeout=1)
            with contextlib.suppress(Exception):
                await self.nc.close()


def _words(exc: BaseException) -> str:
    """An exception of nats-py's, in words (no Python repr)."""
    if isinstance(exc, SmackError):
        return f"{exc.message}: {exc.hint}" if exc.hint else exc.message
    text = str(exc).strip().strip("'\"")
    name = type(exc).__name__
    if "authorization" in text.lower() or "Authorization" in name:
        return "the NATS server refused this member's credentials (authorization violation)"
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return ("the NATS server's certificate is not trusted: give the CA that signed it as "
                "fleet.tls.ca")  # fmt: skip
    if isinstance(exc, socket.gaierror):  # a host name that does not resolve
        return f"the NATS server's host name does not resolve ({exc.strerror or 'unknown'})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS with the NATS server failed ({exc.reason or exc.strerror or name})"
    if isinstance(exc, OSError) and exc.filename:  # a CA, certificate or key file of ours
        return f"cannot read {exc.filename}: {(exc.strerror or name).lower()}"
    if isinstance(exc, OSError) and exc.errno and exc.errno > 0:  # its words, not
        return f"the NATS server cannot be reached ({os.strerror(exc.errno).lower()})"  # a repr
    if isinstance(exc, TimeoutError) or "Timeout" in name:
        return "the NATS server cannot be reached (no answer in time)"
    if isinstance(exc, OSError) or "NoServers" in name:
        return "the NATS server cannot be reached"
    return text or name
