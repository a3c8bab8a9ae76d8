"""The spare runner the loader keeps: a runner process with llama_cpp.server imported, so
that the next load saves its ~0.85 s of imports; started only when nothing loads or runs and
the memory has room to spare (a mixin of ``Loader``: the state it reads is the loader's)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .spare import Spare

if TYPE_CHECKING:
    import asyncio

    from smackctl.config import Profile
    from smackctl.paths import Paths

    from .registry import Registry

__all__ = ["SPARE_RAM", "SpareKeeping"]

#: what a waiting spare runner may hold: ~70-80 MB RSS measured, with headroom
SPARE_RAM = 128 * 2**20


class SpareKeeping:
    paths: Paths
    registry: Registry
    spare: Spare | None
    spare_starting: bool
    budget_probe: Callable[[], tuple[int, int]]
    accepting: Callable[[], bool]
    spawn: Callable[[Any, str], asyncio.Task[Any]]

    if TYPE_CHECKING:

        @property
        def profile(self) -> Profile: ...

    def take_spare(self) -> Spare | None:
        spare, self.spare = self.spare, None
        return spare if spare is not None and spare.alive else None

    def refill_spare(self) -> None:
        """Start a spare when there is none, once nothing loads and no request runs: its
        imports take a core for a second, which a model should not have to share. The reaper
        calls this every second."""
        if self.spare is not None and not self.spare.alive:
            self.spare = None  # it died while it waited (the OOM killer): start another
        if (
            not self.profile.memory.spare_runner
            or not self.accepting()
            or self.spare_starting
            or self.spare is not None
            # only llama_cpp.server runners start from a spare: none to serve, none to wait
            or not any(m.spec.backend == "llama-cpp-python" for m in self.registry.models.values())
            or any(m.loading is not None or m.in_flight for m in self.registry.models.values())
            or not self._room_for_spare()
        ):
            return
        self.spare_starting = True
        self.spawn(self._start_spare(), "spare")

    def _room_for_spare(self) -> bool:
        """A spare is a convenience: it never takes memory a model could use. Start one only
        when the machine has twice its size free beyond the profile's reserve."""
        avail_ram, _ = self.budget_probe()
        return avail_ram - self.profile.memory.reserve >= 2 * SPARE_RAM

    async def _start_spare(self) -> None:
        spare = Spare(self.paths.runner_log("spare"))
        try:
            await spare.start()
        finally:
            self.spare_starting = False
        if (
            self.spare is None
            and self.accepting()
            and self.profile.memory.spare_runner
            and self._room_for_spare()  # a load may have taken the room while it started
        ):
            self.spare = spare
        else:
            await spare.stop()

    async def drop_spare(self) -> None:
        spare, self.spare = self.spare, None
        if spare is not None:
            await spare.stop()
