"""What the scheduler does every second besides requests: unload models idle past their
time, refill the spare runner, flush what state.db refused, rotate the runners' logs (a mixin
of ``Scheduler``: the state it reads is the scheduler's own)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from .process import rotate_log
from .runner import RunnerState

if TYPE_CHECKING:
    from .loader import Loader
    from .registry import Managed
    from .store import Store

__all__ = ["Housekeeping"]

log = logging.getLogger("smackctl.scheduler")


class Housekeeping:
    loader: Loader
    store: Store

    if TYPE_CHECKING:

        @property
        def models(self) -> dict[str, Managed]: ...

        async def unload(self, name: str, wait: bool = True) -> bool: ...

    async def reap_idle(self, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        out = []
        for m in list(self.models.values()):
            limit = m.idle_limit()
            if (
                m.runner is not None
                and m.runner.state == RunnerState.READY
                and limit is not None
                and m.in_flight == 0
                and m.runner.slots.queued == 0
                and now - max(m.last_used, m.runner.ready_at or 0) > limit
            ):
                log.info("unloading %s: idle for more than %gs", m.name, limit)
                await self.unload(m.name)
                out.append(m.name)
        return out

    def rotate_logs(self) -> None:
        """Keep the logs of running runners under LOG_CAP (a start rotates its own)."""
        for m in self.models.values():
            if m.runner is not None and m.runner.state == RunnerState.READY:
                rotate_log(m.runner.log_path)

    async def reaper(self, every: float = 1.0) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(every)
            ticks += 1
            try:
                await self.reap_idle()
                self.loader.refill_spare()
                if ticks % 2 == 0:
                    self.store.flush()  # writes kept while state.db refused them
                if ticks % 30 == 0:
                    self.rotate_logs()
            except Exception:  # the reaper must survive anything one model does
                log.exception("idle reaper")
