"""The scheduler: the rules of which model runs when, on the event-loop thread.

All mutation happens on the one event loop, between awaits, so no lock guards the tables.
Callers never read ``state`` to decide what to do: they ask ``ensure_ready()``, which starts a
load, joins the one in progress, or waits for a crash restart, and returns a ready runner.
Slow work (pulls, process starts) runs in tasks that report back through futures and events.

The known models are the ``Registry``'s (registry.py); starting, watching and measuring
runners is the ``Loader``'s (loader.py), which asks this module's ``_make_room`` what to
evict; memory arithmetic is memory.py's, the status views views.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from smackctl.config import MemoryBudget, Profile
from smackctl.errors import InsufficientMemory, ShuttingDown, UsageError
from smackctl.estimate import Estimate
from smackctl.hardware import physical_cores
from smackctl.paths import Paths

from .cores import Cores
from .draining import Draining
from .events import Events
from .housekeeping import Housekeeping
from .loader import MEASURE_EVERY, SPARE_RAM, Loader
from .memory import budget_of, explain, fix, machine_budget, plan_for, queued_ahead, wait_gone
from .planner import Budget, Plan
from .registry import Managed, Registry, forget_runner
from .runner import Runner, RunnerState
from .spare import Vacated, keep_conversations
from .store import Store
from .switch_plan import SwitchPhase
from .views import model_view

__all__ = ["SPARE_RAM", "Managed", "Scheduler", "ShuttingDown"]

log = logging.getLogger("smackctl.scheduler")


class Scheduler(Draining, Housekeeping):
    def __init__(
        self,
        paths: Paths,
        store: Store,
        profile: Profile,
        profile_path: Path | None,
        *,
        ready_timeout: float = 300.0,
        stop_grace: float = 5.0,
        budget_probe: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        self.paths = paths
        self.store = store
        self.stop_grace = stop_grace
        self.accepting = True
        self.started_at = time.time()
        self.registry = Registry(paths, store, profile, profile_path)
        self.events = Events()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._budget_probe = budget_probe or machine_budget
        self.loader = Loader(
            paths,
            store,
            self.registry,
            self.events,
            self.spawn,
            lambda: self._budget_probe(),
            lambda: self.accepting,
            ready_timeout=ready_timeout,
        )
        self.loader.make_room = self._make_room
        #: models whose new requests wait while a profile switch replaces them
        self._held: set[str] = set()
        self._hold_released = asyncio.Event()
        self.switch_phase: SwitchPhase | None = None
        #: held by a profile switch (switch.run_switch): switches take turns, never overlap
        self.switches = asyncio.Lock()
        #: the CPU cores that requests of CPU-computing runners hold while they run
        self.cores = Cores(_cpu_cores(profile))
        #: models loaded again at start, and why: "loaded" (at the last stop), "pinned", "preload"
        self.restoring: dict[str, str] = {}
        #: set when a stop's drain ran out of time and what still ran was cut (``cut_now``)
        self.cut = asyncio.Event()
        #: what the supervisor found wrong at start and did about it (a state.db set aside, a
        #: token replaced, a deleted profile): `smackctl start` and `status` say these
        self.notices: list[str] = [store.recovered] if store.recovered else []
        #: what else may be wrong now, asked at each status (the event loop's lag: metrics.py)
        self.checks: list[Callable[[], str | None]] = []

    def warnings(self) -> list[str]:
        """The start's notices and what is wrong now, each a sentence with its fix."""
        out = list(self.notices)
        if trouble := self.store.trouble():
            out.append(trouble)
        out += [warning for check in self.checks if (warning := check())]
        path = self.profile_path
        if path is not None and not path.exists():
            out.append(
                f"the active profile's file {path} was deleted: profile {self.profile.name} "
                "keeps running from memory, and the next start uses profile default "
                "(restore the file, or `smackctl profile switch NAME`)"
            )
        return out

    # -- what others read (the registry, events and loader are attributes of their own) --------

    @property
    def profile(self) -> Profile:
        return self.registry.profile

    @property
    def profile_path(self) -> Path | None:
        return self.registry.profile_path

    @property
    def models(self) -> dict[str, Managed]:
        return self.registry.models

    def resolve(self, name: str | None) -> Managed:
        return self.registry.resolve(name)

    async def remove_model(self, name: str) -> None:
        m = self.resolve(name)
        if m.origin != "added":
            raise UsageError(
                f"model {m.name} comes from the profile, not `models add`",
                "remove it from the profile file instead",
            )
        await self.unload(m.name)
        self.store.remove_model(m.name)
        self.registry.rebuild(self.profile, self.profile_path)

    def add_tokens(self, name: str, n: int) -> None:
        """A model produced ``n`` tokens (``usage.Usage``): the count its view shows."""
        m = self.registry.models.get(name)
        if m is not None:
            m.tokens_out += n

    def model_view(self, m: Managed) -> dict[str, Any]:
        return model_view(m, self.registry.model_file(m))

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    # -- loading -------------------------------------------------------------------------------

    async def ensure_ready(
        self,
        name: str | None,
        *,
        force: bool = False,
        switching: bool = False,
        fresh: bool = False,
    ) -> Runner:
        """A ready runner for the model: starts a load, joins one, or waits for a restart.
        ``fresh``: a load it starts runs in a new process, never in an evicted runner's
        (``models bench`` measures a cold load and the process's peak memory).

        While a profile switch replaces the model, new requests wait for the switch to end."""
        m = self.resolve(name)
        while not switching and m.name in self._held:
            await self._hold_released.wait()
            m = self.resolve(name)
        while True:
            if not self.accepting:
                raise ShuttingDown(
                    "the supervisor is shutting down", "start it again with `smackctl start`"
                )
            r = m.runner
            if r is not None and r.state == RunnerState.READY and not r.exited.is_set():
                return r
            if m.loading is None:
                m.loading = asyncio.get_running_loop().create_future()
                load = self.loader.load(m, restart=False, force=force, fresh=fresh)
                self.spawn(load, f"load-{m.name}")
            await asyncio.shield(m.loading)

    def budget(self, mem: MemoryBudget | None = None) -> Budget:
        """The RAM/VRAM budget of the active profile (or of ``mem``) given what is loaded."""
        return budget_of(self.models.values(), mem or self.profile.memory, self._budget_probe)

    def plan_for(self, m: Managed, est: Estimate, waited: float | None = None) -> Plan:
        return plan_for(m, est, self.models.values(), self.budget(), waited)

    async def _make_room(
        self, m: Managed, est: Estimate, force: bool, keep_process: bool
    ) -> Vacated | None:
        """Evict what the plan says, wait, or refuse. ``keep_process``: the first idle runner
        evicted keeps its process for ``m``'s load: a swap in a warm process, as
        llama_cpp.server's own ``--config_file`` does it (~0.1 s less than a new process)."""
        began, said = time.monotonic(), False
        while True:
            plan = self.plan_for(m, est, waited=time.monotonic() - began)
            if plan.wait and not said and (ahead := queued_ahead(m, self.models)):
                said = True  # the loaded models' queued requests go first (memory.py)
                log.info("%s waits for %s before its load: that saves a swap", m.name, ahead)
            # evictions for max_loaded alone: the new model does not need their memory,
            # so it loads while the kernel tears them down (~35 ms of a swap, measured)
            for_count = plan.need_ram <= plan.free_ram and plan.need_vram <= plan.free_vram
            if (
                self.loader.spare is not None
                and plan.need_ram > plan.free_ram
                and self.profile.memory.ram is None
            ):
                # short of RAM in a budget taken from the machine's available memory: the
                # spare's goes before any model's, and before a refusal; the next plan
                # counts what it freed
                log.info("stopping the spare runner to make room for %s", m.name)
                await self.loader.drop_spare()
                continue
            if plan.fits:
                reuse: Vacated | None = None
                for name in plan.evict:
                    log.info("evicting %s to make room for %s", name, m.name)
                    why = "max_loaded" if for_count else "memory"
                    self.events.publish(
                        {"event": "evict", "model": name, "for": m.name, "reason": why}
                    )
                    if (
                        keep_process
                        and reuse is None
                        and (reuse := self._vacate(name, keep_old=for_count))
                    ):
                        continue
                    await self.unload(name, wait=not for_count)
                return reuse
            if plan.wait:
                self.loader.progress(m, "waiting for memory")
                await self._wait_idle_change()
                continue
            if force:
                log.warning("loading %s despite the estimate (--force)", m.name)
                return None
            raise InsufficientMemory(explain(m, plan), fix(m, plan))

    # -- profile switch --------------------------------------------------------------------------

    def set_profile(self, profile: Profile, path: Path | None) -> None:
        self.cores.resize(_cpu_cores(profile))
        if not profile.memory.spare_runner:
            self.spawn(self.loader.drop_spare(), "drop-spare")
        self.registry.rebuild(profile, path)

    def hold(self, names: list[str]) -> None:
        self._held = set(names)
        self._hold_released.clear()

    def release_hold(self) -> None:
        self._held = set()
        self._hold_released.set()

    # -- requests ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def slot(self, name: str | None, size: int = 0) -> AsyncIterator[tuple[Managed, Runner]]:
        """A ready runner, one of its slots and its share of the CPU cores, held for the
        duration of a request; ``size``: the bytes of the request's body (the queue's memory)."""
        m = self.resolve(name)
        while True:
            runner = await self.ensure_ready(m.name)
            await runner.slots.acquire(
                size,
                lambda place: self.events.publish({"event": "queued", "model": m.name, **place}),
            )
            if runner.state == RunnerState.READY and not runner.exited.is_set():
                break
            runner.slots.release()  # it died while we queued: go round again
        # in flight from here: waiting for cores, the model must not be evicted or reaped
        m.in_flight += 1
        m.use_count += 1
        m.last_used = time.time()
        self._idle.clear()
        cores = self.cores.units_for(m.spec, m.info)
        try:
            await self.cores.acquire(cores, runner)
        except BaseException:
            self._end_request(m, runner, served=False)
            raise
        began = time.monotonic()
        try:
            yield m, runner
        finally:
            runner.slots.served(time.monotonic() - began)
            self.cores.release(cores, runner)
            self._end_request(m, runner, served=True)

    def _end_request(self, m: Managed, runner: Runner, *, served: bool) -> None:
        runner.slots.release()
        runner.used.set()
        m.in_flight -= 1
        m.requests_served += served
        m.last_used = time.time()
        if served and time.monotonic() - m.measured_at > MEASURE_EVERY:
            self.spawn(self.loader.measure(m, runner), f"measure-{m.name}")
        if m.in_flight == 0:
            self._idle.set()

    # -- unloading -----------------------------------------------------------------------------

    async def unload(self, name: str, wait: bool = True) -> bool:
        """Stop a model's runner (``wait=False``: once an idle one is sent SIGKILL; its exit
        is waited for in the background, for an eviction whose memory no load waits for)."""
        m = self.resolve(name)
        if m.loading is not None and not m.loading.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(m.loading)
        r = m.runner
        if r is None or r.state == RunnerState.STOPPED:
            m.failed = False
            return False
        forget_runner(m)
        # an idle runner has nothing to finish: SIGKILL frees its memory at once (uvicorn's
        # graceful shutdown took ~200 ms of every swap), once its conversations are kept
        idle = m.in_flight == 0 and not r.slots.queued
        if idle:
            await keep_conversations(r, self.profile.kv_cache.max_size)
            r.kill()
        if wait or not idle:
            await self._reap(m, r)
        else:
            self.spawn(self._reap(m, r), f"reap-{m.name}")
        return True

    def _vacate(self, name: str, keep_old: bool) -> Vacated | None:
        """Unload an idle model but keep its process for the next load (``Runner.vacate``)."""
        m = self.resolve(name)
        vacated = m.runner.vacate(keep_old, self.profile.kv_cache.max_size) if m.runner else None
        if vacated is None:
            return None
        forget_runner(m)
        log.info("unloaded %s; its process (pid %s) takes the next model", name, vacated.proc.pid)
        self.events.publish({"event": "unloaded", "model": m.name})
        return vacated

    async def _reap(self, m: Managed, r: Runner) -> None:
        await r.stop(self.stop_grace)
        await asyncio.to_thread(wait_gone, r.pid)
        self.events.publish({"event": "unloaded", "model": m.name})

    async def unload_all(self) -> list[str]:
        names = [m.name for m in self.models.values() if m.loaded or m.loading is not None]
        results = await asyncio.gather(*(self.unload(n) for n in names))
        return [n for n, done in zip(names, results, strict=True) if done]

    # -- lifecycle -----------------------------------------------------------------------------

    def plan_restore(self) -> dict[str, str]:
        """What ``restore`` will load, and why: set before the API answers, so that the
        `smackctl start` that waits for it can say so (``status.restoring``)."""
        self.restoring = self.registry.to_restore()
        return self.restoring

    async def restore(self) -> None:
        """Load again what was pinned or loaded when the last supervisor stopped."""
        for name, why in self.restoring.items():
            log.info("loading %s at start (%s)", name, why)
            self.spawn(self._quiet_load(name), f"restore-{name}")
        if not self.restoring:
            self.loader.refill_spare()  # else the reaper starts it once the loads are done

    async def _quiet_load(self, name: str) -> None:
        try:
            await self.ensure_ready(name)
        except Exception as exc:
            log.error("could not load %s at start: %s", name, exc)

    async def shutdown(self) -> None:
        self.accepting = False
        keep = {
            m.name: ("pinned" if m.spec.pinned else "loaded")
            for m in self.models.values()
            if m.loaded
        }
        self.store.set_restore(keep)
        await self.loader.drop_spare()
        await self.unload_all()
        for t in list(self._tasks):
            t.cancel()


def _cpu_cores(profile: Profile) -> int:
    return profile.cpu.cores or physical_cores()
