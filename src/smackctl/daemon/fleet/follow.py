"""A running supervisor's fleet follows its profile: a switch (or a reload of the file) to a
profile whose ``fleet:`` differs leaves the old fleet and joins the new one; to a profile
without one, it leaves. Leaving drains first: the member takes nothing new, and what it
serves and what it forwards are finished (up to ``PATIENCE``) before it says it leaves.
``--join`` keeps its URL for the whole run."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from smackctl.config import Profile
from smackctl.daemon.switch import SwitchPhase
from smackctl.errors import UsageError
from smackctl.fleet_config import FleetSpec

from .service import Fleet

if TYPE_CHECKING:
    from smackctl.daemon.services import Services

__all__ = ["PATIENCE", "FleetFollower", "fleet_spec"]

log = logging.getLogger("smackctl.fleet")

#: seconds a member leaving a fleet waits for the answers it serves and forwards
PATIENCE = 60.0


def fleet_spec(join: str | None, profile: Profile) -> FleetSpec | None:
    """The fleet to join: the profile's ``fleet:``, its URL replaced by ``--join``."""
    if not join:
        return profile.fleet
    try:
        if profile.fleet is not None:
            return FleetSpec(**{**profile.fleet.model_dump(), "url": join})
        return FleetSpec(url=join)
    except ValueError as exc:
        raise UsageError(
            f"--join {join}: not a NATS server's URL", "write nats://HOST:4222"
        ) from exc


class FleetFollower:
    def __init__(self, services: Services, join: str | None) -> None:
        self.s, self.join = services, join
        self._moving: asyncio.Task[None] | None = None
        services.scheduler.events.listeners.append(self._on_event)

    def _on_event(self, ev: dict[str, Any]) -> None:
        if ev.get("event") != "switch" or ev.get("phase") != str(SwitchPhase.ACTIVE):
            return
        before = self._moving  # a move under way: this one after it, from what it left
        self._moving = asyncio.get_running_loop().create_task(self._move(before))

    async def stop(self) -> None:
        if self._moving is not None:
            self._moving.cancel()

    async def _move(self, before: asyncio.Task[None] | None) -> None:
        if before is not None:  # one move at a time, in the order asked
            with contextlib.suppress(BaseException):
                await before
        # the profile as it is now: a switch back during a drain moves back
        want = fleet_spec(self.join, self.s.scheduler.profile)
        old = self.s.fleet
        if old is not None and old.spec == want:
            return
        if old is not None:
            log.info("fleet: leaving %s as %s: the profile changed", old.spec.url, old.spec.name)
            await old.drain()
            deadline = time.monotonic() + PATIENCE
            while old.busy() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)  # the answers it serves and forwards, finished
            self.s.fleet = None
            await old.aclose()
        if want is not None:
            log.info("fleet: joining %s as %s: the profile changed", want.url, want.name)
            self.s.fleet = Fleet(self.s, want)
            await self.s.fleet.start()
