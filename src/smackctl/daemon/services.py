"""The supervisor's services, made once and handed to whoever needs them: the scheduler and
the parts it owns (registry, loader, store, events), and what answers requests (the
gateway and what it sends to), counts them (usage, metrics) and watches the profile."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from starlette.types import Receive, Scope, Send

from smackctl.config import Price, Profile

from .bench import Bench
from .events import Events
from .fleet.follow import FleetFollower
from .fleet.service import Fleet
from .gateway import Gateway
from .gateway.auto import Router
from .gateway.cached import Cached
from .gateway.deployments import Deployments
from .gateway.local import LocalModels
from .gateway.relay import Runners
from .keys import Key, KeyRing, Operator
from .limits import Meter
from .loader import Loader
from .metrics import Metrics
from .plugins import Plugins
from .registry import Registry
from .reload import Reloader
from .scheduler import Scheduler
from .status import status_view
from .store import Store
from .ui.sessions import Sessions
from .usage import Usage

__all__ = ["Services", "assemble"]


@dataclass
class Services:
    scheduler: Scheduler
    registry: Registry
    loader: Loader
    store: Store
    events: Events
    metrics: Metrics
    usage: Usage
    cached: Cached
    deployments: Deployments
    router: Router
    gateway: Gateway
    reloader: Reloader
    bench: Bench
    plugins: Plugins = field(init=False)
    keys: KeyRing = field(init=False)
    #: the operator's token (``POST /api/token/rotate`` replaces it)
    operator: Operator = field(default_factory=lambda: Operator(None))
    started: float = field(default_factory=time.time)
    #: the page's logins (``ui/sessions.py``)
    sessions: Sessions = field(default_factory=Sessions)
    #: WebSockets open per key name (``ui/live.py`` holds each to a bound)
    sockets: dict[str, int] = field(default_factory=dict)
    #: this supervisor's membership of a fleet (``fleet/``), when the profile has ``fleet:``
    fleet: Fleet | None = None
    #: what follows the profile's ``fleet:`` through switches (``fleet/follow.py``)
    follower: FleetFollower | None = None
    #: serve an ASGI request as a key, behind the door's rules (``Guard.serve_as``)
    serve_as: Callable[[Key, Scope, Receive, Send], Awaitable[None]] = field(init=False)
    #: what ``POST /api/shutdown`` asks of the process: drain for seconds, or force
    stop: Callable[[float, bool], None] = lambda timeout, force: None

    async def aclose(self) -> None:
        if self.follower is not None:  # no move begins or goes on past the stop
            await self.follower.stop()
        if self.fleet is not None:
            await self.fleet.aclose()
        await self.gateway.aclose()


def assemble(scheduler: Scheduler) -> Services:
    """The services around ``scheduler``, each given the parts it uses."""

    def profile() -> Profile:
        return scheduler.profile

    registry, store, events = scheduler.registry, scheduler.store, scheduler.events
    metrics = Metrics(scheduler)
    meter = Meter(store.key_history)

    def price_of(name: str) -> Price | None:
        """A deployment's price: a model of the profile's, or ``MEMBER/MODEL`` of the
        fleet's as its member says in its heartbeats."""
        spec = scheduler.profile.models.get(name)
        if spec is not None:
            return spec.price
        said = s.fleet.members.price(name) if s.fleet is not None else None
        return Price(input=said[0], output=said[1]) if said is not None else None

    usage = Usage(store, metrics, scheduler.add_tokens, meter, price_of)
    cached = Cached(
        profile, registry, store.path.with_name("cache.db"), scheduler.notices.append, metrics
    )
    local = LocalModels(
        scheduler, scheduler.loader, registry, Runners(scheduler, usage), cached, usage
    )
    deployments = Deployments(profile, local, usage, events)
    router = Router(profile, local)
    s = Services(
        scheduler, registry, scheduler.loader, store, events, metrics, usage, cached,
        deployments, router, Gateway(profile, registry, deployments, local, router, events),
        Reloader(scheduler), Bench(scheduler),
    )  # fmt: skip
    s.keys = KeyRing(store)
    s.plugins = Plugins(
        lambda: {k: v or {} for k, v in scheduler.profile.plugins.items()},
        lambda: status_view(s, ""),
    )
    return s
