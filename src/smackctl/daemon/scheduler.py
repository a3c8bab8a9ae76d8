"""The scheduler: owns every model's state, on the event-loop thread.

All mutation happens on the one event loop, between awaits, so no lock guards the tables.
Callers never read ``state`` to decide what to do: they ask ``ensure_ready()``, which starts a
load, joins the one in progress, or waits for a crash restart, and returns a ready runner.
Slow work (pulls, process starts) runs in tasks that report back through futures and events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil

from smackctl import catalog
from smackctl.config import (
    MemoryBudget,
    ModelSpec,
    Profile,
    profiles_defining,
    validate_model_name,
)
from smackctl.errors import InsufficientMemory, ModelLoadError, ModelNotFound, SmackError
from smackctl.estimate import Estimate, estimate_for
from smackctl.gguf import GGUFInfo, check_magic, read_info
from smackctl.hardware import physical_cores, probe_gpus, process_tree_vram, tree_rss
from smackctl.paths import Paths
from smackctl.selftest import signal_name

from .backends import Backend, backend_for, runner_threads
from .cores import Cores
from .planner import Budget, Loaded, Plan, plan_evictions
from .runner import Runner, RunnerState, Spare, Vacated, rotate_log, signal_group
from .store import Store
from .switch import SwitchPhase, SwitchPlan, plan_switch

__all__ = ["Scheduler", "Managed", "ShuttingDown"]

log = logging.getLogger("smackctl.scheduler")

#: restart delays: 1 s, 2 s, 4 s … capped here
BACKOFF_CAP = 30.0
#: a runner that crashes this many times in a row without staying up is marked failed
MAX_QUICK_FAILURES = 5
#: a runner that stayed ready this long before crashing resets the failure count
STABLE_AFTER = 60.0
#: after a request, re-measure a runner's memory if the last measure is older than this
MEASURE_EVERY = 5.0
#: how long a swapped-in runner's process may keep the old model when no request comes
FREE_OLD_AFTER = 2.0


class ShuttingDown(SmackError):
    status = 503
    error_type = "shutting_down"


@dataclass
class Managed:
    """A known model and everything the scheduler tracks about it."""

    name: str
    spec: ModelSpec
    origin: str  # "profile" | "added"
    base_dir: Path
    runner: Runner | None = None
    loading: asyncio.Future[Runner] | None = None
    in_flight: int = 0
    last_used: float = 0.0
    use_count: int = 0
    requests_served: int = 0
    tokens_out: int = 0
    failures: int = 0
    failed: bool = False
    last_error: str | None = None
    #: crashes since the supervisor started, and the last one in words with its time
    crashes: int = 0
    last_crash: str | None = None
    last_crash_at: float | None = None
    phase: str | None = None
    estimate: Estimate | None = None
    measured_ram: int | None = None
    measured_vram: int | None = None
    measured_at: float = 0.0
    info: GGUFInfo | None = field(default=None, repr=False)

    @property
    def state(self) -> str:
        if self.runner is not None and self.runner.state != RunnerState.STOPPED:
            return str(self.runner.state)
        if self.loading is not None:
            return str(RunnerState.STARTING)
        return str(RunnerState.FAILED) if self.failed else str(RunnerState.STOPPED)

    @property
    def loaded(self) -> bool:
        return self.runner is not None and self.runner.state in (
            RunnerState.STARTING,
            RunnerState.READY,
            RunnerState.BACKOFF,
        )

    def memory(self) -> tuple[int, int]:
        """What the planner counts for this model: measured if known, else estimated; nothing
        while it waits to restart (its process is gone, and so is its memory)."""
        if self.runner is not None and self.runner.state in (
            RunnerState.BACKOFF,
            RunnerState.FAILED,
        ):
            return 0, 0
        if self.measured_ram is not None:
            return self.measured_ram, self.measured_vram or 0
        if self.estimate is not None:
            return self.estimate.ram, self.estimate.vram
        return 0, 0


#: what a waiting spare runner may hold: ~70-80 MB RSS measured, with headroom
SPARE_RAM = 128 * 2**20


class Scheduler:
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
        self.profile = profile
        self.profile_path = profile_path
        self.ready_timeout = ready_timeout
        self.stop_grace = stop_grace
        self.models: dict[str, Managed] = {}
        self.accepting = True
        self.started_at = time.time()
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        #: called with every event (metrics); must be quick and must not raise
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._budget_probe = budget_probe or _machine_budget
        #: models whose new requests wait while a profile switch replaces them
        self._held: set[str] = set()
        self._hold_released = asyncio.Event()
        self.switch_phase: SwitchPhase | None = None
        #: the CPU cores that requests of CPU-computing runners hold while they run
        self.cores = Cores(_cpu_cores(profile))
        self._gpu_present: bool | None = None
        #: a runner process with the imports done, for the next load (see daemon/spare.py)
        self.spare: Spare | None = None
        self._spare_starting = False
        #: models loaded again at start, and why: "loaded" (at the last stop), "pinned", "preload"
        self.restoring: dict[str, str] = {}
        self._rebuild_registry()

    # -- registry ------------------------------------------------------------------------------

    def _rebuild_registry(self) -> None:
        base = self.profile_path.parent if self.profile_path else Path.cwd()
        wanted: dict[str, tuple[ModelSpec, str, Path]] = {
            name: (spec, "profile", base) for name, spec in self.profile.models.items()
        }
        for name, raw in self.store.added_models().items():
            wanted.setdefault(name, (ModelSpec.model_validate(raw), "added", Path("/")))
        for name in list(self.models):
            if name not in wanted and not self.models[name].loaded:
                del self.models[name]
        for name, (spec, origin, b) in wanted.items():
            m = self.models.get(name)
            if m is None:
                self.models[name] = Managed(name=name, spec=spec, origin=origin, base_dir=b)
            else:
                m.spec, m.origin, m.base_dir = spec, origin, b

    def known_names(self) -> list[str]:
        names = set(self.models)
        for m in self.models.values():
            names.update(m.spec.aliases)
        names.update(self.profile.routing.aliases)
        return sorted(names)

    def resolve(self, name: str | None) -> Managed:
        if not name:
            name = self.profile.routing.default_model
            if not name:
                raise ModelNotFound("(none given)", self.known_names())
        target = self.profile.resolve(name)
        if target is None:
            for m in self.models.values():
                if name == m.name or name in m.spec.aliases:
                    target = m.name
                    break
        if target is None or target not in self.models:
            raise ModelNotFound(
                name, self.known_names(), profiles_defining(name, skip=self.profile.name)
            )
        return self.models[target]

    def add_model(self, name: str, path: Path, n_ctx: int | None = None) -> Managed:
        validate_model_name(name)
        path = path.expanduser().resolve()
        check_magic(path)
        if name in self.profile.models:
            raise SmackError(
                f"model {name!r} is defined by the active profile",
                "pick another name with `--name`",
            )
        raw: dict[str, Any] = {"path": str(path)}
        if n_ctx:
            raw["n_ctx"] = n_ctx
        spec = ModelSpec.model_validate(raw)
        self.store.add_model(name, spec.model_dump(exclude_defaults=True))
        self._rebuild_registry()
        return self.models[name]

    async def remove_model(self, name: str) -> None:
        m = self.resolve(name)
        if m.origin != "added":
            raise SmackError(
                f"model {m.name!r} comes from the profile, not `models add`",
                "remove it from the profile file instead",
            )
        await self.unload(m.name)
        self.store.remove_model(m.name)
        self._rebuild_registry()

    # -- events --------------------------------------------------------------------------------

    def publish(self, event: dict[str, Any]) -> None:
        event.setdefault("at", time.time())
        for listener in self.listeners:
            listener(event)
        for q in list(self._subscribers):
            q.put_nowait(event)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._subscribers.add(q)
        try:
            yield q
        finally:
            self._subscribers.discard(q)

    def _on_runner_state(self, runner: Runner, state: RunnerState) -> None:
        self.publish(
            {"event": "state", "model": runner.model, "state": str(state), "pid": runner.pid}
        )

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

    def model_file(self, m: Managed) -> Path:
        if m.spec.path is not None:
            p = Path(m.spec.path).expanduser()
            return p if p.is_absolute() else (m.base_dir / p).resolve()
        assert m.spec.source is not None
        return self.paths.models_dir / catalog.parse_source(m.spec.source).filename

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
                load = self._load(m, restart=False, force=force, fresh=fresh)
                self.spawn(load, f"load-{m.name}")
            await asyncio.shield(m.loading)

    async def _load(
        self, m: Managed, *, restart: bool, force: bool = False, fresh: bool = False
    ) -> None:
        fut = m.loading
        assert fut is not None
        try:
            runner = await self._start_runner(m, restart=restart, force=force, fresh=fresh)
        except BaseException as exc:
            m.loading = None
            m.phase = None
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # a load nobody waits for must not warn "never retrieved"
            if isinstance(exc, SmackError):
                m.last_error = exc.message
            self.publish({"event": "error", "model": m.name, "message": str(exc)})
            if not isinstance(exc, Exception):
                raise
            return
        m.loading = None
        m.phase = None
        m.failed = False
        m.last_error = None
        if not fut.done():
            fut.set_result(runner)
        self.publish({"event": "ready", "model": m.name, "pid": runner.pid})

    # -- the spare runner ----------------------------------------------------------------------

    def _take_spare(self) -> Spare | None:
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
            or not self.accepting
            or self._spare_starting
            or self.spare is not None
            or any(m.loading is not None or m.in_flight for m in self.models.values())
            or not self._room_for_spare()
        ):
            return
        self._spare_starting = True
        self.spawn(self._start_spare(), "spare")

    def _room_for_spare(self) -> bool:
        """A spare is a convenience: it never takes memory a model could use. Start one only
        when the machine has twice its size free beyond the profile's reserve."""
        avail_ram, _ = self._budget_probe()
        return avail_ram - self.profile.memory.reserve >= 2 * SPARE_RAM

    async def _start_spare(self) -> None:
        spare = Spare(self.paths.runner_log("spare"))
        try:
            await spare.start()
        finally:
            self._spare_starting = False
        if (
            self.spare is None
            and self.accepting
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

    def _progress(self, m: Managed, phase: str, done: int = 0, total: int | None = None) -> None:
        m.phase = phase
        self.publish(
            {"event": "progress", "model": m.name, "phase": phase, "done": done, "total": total}
        )

    async def _fetch(self, m: Managed) -> Path:
        path = self.model_file(m)
        if path.is_file() or m.spec.source is None:
            if not path.is_file():
                raise ModelLoadError(
                    f"model file for {m.name} not found: {path}",
                    "fix the path in the profile, or `smackctl models add` the right file",
                )
            return path
        self._progress(m, "pulling")  # only when the file is not on disk yet
        loop = asyncio.get_running_loop()
        source = catalog.parse_source(m.spec.source)

        def report(phase: str, done: int, total: int | None) -> None:
            loop.call_soon_threadsafe(self._progress, m, phase, done, total)

        return await asyncio.to_thread(
            catalog.pull, source, self.paths.models_dir, m.spec.sha256, report, name=m.name
        )

    async def pull(self, name: str) -> Path:
        m = self.resolve(name)
        path = await self._fetch(m)
        await asyncio.to_thread(check_magic, path)
        return path

    async def gguf_info(self, m: Managed) -> GGUFInfo | None:
        """The model file's metadata (read once, off the loop); None when it is not on disk
        yet or cannot be read (the load then says why)."""
        path = self.model_file(m)
        if m.info is None or m.info.path != str(path):
            if not path.is_file():
                return None
            try:
                m.info = await asyncio.to_thread(read_info, path)
            except SmackError:
                return None
        return m.info

    def estimate(self, m: Managed, path: Path) -> Estimate:
        """What the planner counts for loading ``m``: the last measurement when there is one."""
        if m.info is None or m.info.path != str(path):
            m.info = read_info(path)
        est = estimate_for(m.info, m.spec)
        m.estimate = est
        saved = self.store.measurement(m.name, _load_key(m.spec))
        if saved is not None and saved[0] is not None:
            return replace(est, ram=saved[0], vram=saved[1] or 0, measured=True)
        return est

    def budget(self, mem: MemoryBudget | None = None) -> Budget:
        """The RAM/VRAM budget of the active profile (or of ``mem``) given what is loaded."""
        mem = mem or self.profile.memory
        avail_ram, avail_vram = self._budget_probe()
        held_ram = sum(m.memory()[0] for m in self.models.values() if m.loaded)
        held_vram = sum(m.memory()[1] for m in self.models.values() if m.loaded)
        ram = mem.ram if mem.ram is not None else max(0, avail_ram + held_ram - mem.reserve)
        vram = mem.vram if mem.vram is not None else max(0, avail_vram + held_vram)
        return Budget(ram=ram, vram=vram, max_loaded=mem.max_loaded)

    def plan_for(self, m: Managed, est: Estimate) -> Plan:
        loaded = [
            Loaded(
                name=o.name,
                ram=o.memory()[0],
                vram=o.memory()[1],
                pinned=o.spec.pinned,
                in_flight=o.in_flight,
                last_used=o.last_used,
                use_count=o.use_count,
            )
            for o in self.models.values()
            if o.loaded and o is not m
        ]
        return plan_evictions(est.ram, est.vram, loaded, self.budget())

    async def _make_room(
        self, m: Managed, est: Estimate, force: bool, keep_process: bool = True
    ) -> Vacated | None:
        """Evict what the plan says, wait, or refuse. ``keep_process``: the first idle runner
        evicted keeps its process for ``m``'s load: a swap in a warm process, as
        llama_cpp.server's own ``--config_file`` does it (~0.1 s less than a new process)."""
        while True:
            plan = self.plan_for(m, est)
            # evictions for max_loaded alone: the new model does not need their memory,
            # so it loads while the kernel tears them down (~35 ms of a swap, measured)
            for_count = plan.need_ram <= plan.free_ram and plan.need_vram <= plan.free_vram
            if (
                self.spare is not None
                and plan.need_ram > plan.free_ram
                and self.profile.memory.ram is None
            ):
                # short of RAM in a budget taken from the machine's available memory: the
                # spare's goes before any model's, and before a refusal; the next plan
                # counts what it freed
                log.info("stopping the spare runner to make room for %s", m.name)
                await self.drop_spare()
                continue
            if plan.fits:
                reuse: Vacated | None = None
                for name in plan.evict:
                    log.info("evicting %s to make room for %s", name, m.name)
                    self.publish({"event": "evict", "model": name, "for": m.name})
                    if (
                        keep_process
                        and reuse is None
                        and (reuse := self._vacate(name, keep_old=for_count))
                    ):
                        continue
                    await self.unload(name, wait=not for_count)
                return reuse
            if plan.wait:
                self._progress(m, "waiting for memory")
                await self._wait_idle_change()
                continue
            if force:
                log.warning("loading %s despite the estimate (--force)", m.name)
                return None
            raise InsufficientMemory(_explain(m, plan), _fix(m, plan))

    async def _wait_idle_change(self) -> None:
        self._idle.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), 1.0)

    async def _start_runner(
        self, m: Managed, *, restart: bool, force: bool = False, fresh: bool = False
    ) -> Runner:
        while True:
            if restart:
                delay = min(BACKOFF_CAP, 2.0 ** max(0, m.failures - 1))
                self._progress(m, f"restarting in {delay:.0f}s")
                await asyncio.sleep(delay)
            path = await self._fetch(m)
            check_magic(path)
            est = await asyncio.to_thread(self.estimate, m, path)
            reuse = await self._make_room(m, est, force, keep_process=not fresh)
            self._progress(m, "starting")
            spec = m.spec
            backend = backend_for(spec, self.profile.llama_server)

            def argv(
                port: int,
                key: str,
                spec: ModelSpec = spec,
                path: Path = path,
                backend: Backend = backend,
            ) -> list[str]:
                return backend.argv(spec, path, port, key, m.name)

            runner = Runner(
                m.name,
                argv,
                self.paths.runner_log(m.name),
                parallel=m.spec.parallel,
                max_queue=m.spec.max_queue,
                ready_timeout=self.ready_timeout,
                on_state=self._on_state_and_record,
                take_spare=self._take_spare,
                reuse=reuse,
                ready_path=backend.ready_path,
                key_env=backend.key_env,
            )
            m.runner = runner
            try:
                await runner.start()
            except ModelLoadError:
                await runner.stop(grace=0.5)
                if not restart:
                    m.failed = True
                    raise
                m.failures += 1
                if m.failures >= MAX_QUICK_FAILURES:
                    m.failed = True
                    raise
                continue
            except BaseException:
                await runner.stop(grace=0.5)
                raise
            if runner.holds_old:
                self.spawn(self._free_old(m, runner), f"free-old-{m.name}")
            else:
                self.spawn(self._measure(m, runner), f"measure-{m.name}")
            self.spawn(self._supervise(m, runner), f"supervise-{m.name}")
            return runner

    def _on_state_and_record(self, runner: Runner, state: RunnerState) -> None:
        if runner.pid is not None:
            if state == RunnerState.STARTING or state == RunnerState.READY:
                with contextlib.suppress(psutil.Error):
                    p = psutil.Process(runner.pid)
                    self.store.record_runner(
                        runner.pid, runner.model, p.create_time(), " ".join(p.cmdline())
                    )
            elif state == RunnerState.STOPPED:
                self.store.forget_runner(runner.pid)
        self._on_runner_state(runner, state)

    async def _free_old(self, m: Managed, runner: Runner) -> None:
        """The runner's process still holds the model it had before (a swap, see
        ``_make_room``): free it once the request that asked for the swap is answered (or
        after FREE_OLD_AFTER for a load no request waits for), then measure."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(runner.used.wait(), FREE_OLD_AFTER)
        await runner.free_old()
        await self._measure(m, runner)

    async def _measure(self, m: Managed, runner: Runner) -> None:
        """Measure the runner's tree; keep the peak (weights are mmap'd and become resident
        as they are used, buffers as the context fills), and store it for the next plan."""
        if runner.pid is None or runner.holds_old:  # it would count the old model too
            return
        m.measured_at = time.monotonic()
        ram = await asyncio.to_thread(tree_rss, runner.pid)
        vram = await asyncio.to_thread(process_tree_vram, runner.pid)
        if ram is None or runner.state != RunnerState.READY or m.runner is not runner:
            return
        m.measured_ram = max(ram, m.measured_ram or 0)
        if vram is not None:
            m.measured_vram = max(vram, m.measured_vram or 0)
        if runner.reused:
            # what the process holds (the budget counts it), but not this model's need: glibc
            # keeps the heap the previous model freed (SmolLM2 after Gemma 3: +30-60%), so the
            # next plan keeps the need measured in a process of its own, or the estimate
            return
        self.store.save_measurement(m.name, _load_key(m.spec), m.measured_ram, m.measured_vram)

    async def _supervise(self, m: Managed, runner: Runner) -> None:
        """Restart a runner that exits without being asked to, with backoff."""
        await runner.exited.wait()
        if not runner.unexpected_exit or m.runner is not runner:
            return
        lived = time.time() - (runner.ready_at or time.time())
        m.failures = 1 if lived >= STABLE_AFTER else m.failures + 1
        what = " ".join(filter(None, [runner.exit_description(), runner.activity()]))
        m.crashes += 1
        m.last_crash, m.last_crash_at = what, time.time()
        m.last_error = f"the runner {what}"
        log.warning("runner %s (pid %s) %s; restart #%d", m.name, runner.pid, what, m.failures)
        self.publish(
            {
                "event": "crash",
                "model": m.name,
                "exit_code": runner.exit_code,
                "signal": signal_name(runner.exit_code),
                "what": what,
            }
        )
        with contextlib.suppress(Exception):  # a full disk must not stop the restart
            self.store.record_crash(m.name, what)
        if runner.pid is not None:
            self.store.forget_runner(runner.pid)
        runner.mark(RunnerState.BACKOFF)
        if m.failures >= MAX_QUICK_FAILURES:
            runner.mark(RunnerState.FAILED)
            m.failed = True
            m.last_error = f"crashed {m.failures} times in a row; the last time the runner {what}"
            log.error("runner %s marked failed: %s", m.name, m.last_error)
            return
        if m.loading is None and self.accepting:
            m.loading = asyncio.get_running_loop().create_future()
            self.spawn(self._load(m, restart=True), f"restart-{m.name}")

    # -- profile switch --------------------------------------------------------------------------

    def set_profile(self, profile: Profile, path: Path | None) -> None:
        self.profile, self.profile_path = profile, path
        self.cores.resize(_cpu_cores(profile))
        if not profile.memory.spare_runner:
            self.spawn(self.drop_spare(), "drop-spare")
        self._rebuild_registry()

    def hold(self, names: list[str]) -> None:
        self._held = set(names)
        self._hold_released.clear()

    def release_hold(self) -> None:
        self._held = set()
        self._hold_released.set()

    async def drain_models(self, names: list[str], timeout: float = 300.0) -> None:
        """Wait until the named models have nothing in flight or queued."""
        deadline = time.monotonic() + timeout

        def busy() -> bool:
            return any(
                (m := self.models.get(n)) is not None
                and (m.in_flight or (m.runner is not None and m.runner.slots.queued))
                for n in names
            )

        while busy() and time.monotonic() < deadline:
            await self._wait_idle_change()

    def plan_switch(self, target: Profile, target_path: Path) -> SwitchPlan:
        loaded = {m.name: m.memory()[0] for m in self.models.values() if m.loaded}

        def need(name: str, spec: ModelSpec) -> int | None:
            probe = Managed(name=name, spec=spec, origin="profile", base_dir=target_path.parent)
            path = self.model_file(probe)
            if not path.is_file():
                return None
            try:
                return self.estimate(probe, path).ram
            except SmackError:
                return None

        b = self.budget(target.memory)
        return plan_switch(self.profile, loaded, target, need, b.ram)

    # -- requests ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def slot(self, name: str | None) -> AsyncIterator[tuple[Managed, Runner]]:
        """A ready runner, one of its slots and its share of the CPU cores, held for the
        duration of a request."""
        m = self.resolve(name)
        while True:
            runner = await self.ensure_ready(m.name)
            await runner.slots.acquire()
            if runner.state == RunnerState.READY and not runner.exited.is_set():
                break
            runner.slots.release()  # it died while we queued: go round again
        # in flight from here: waiting for cores, the model must not be evicted or reaped
        m.in_flight += 1
        m.use_count += 1
        m.last_used = time.time()
        self._idle.clear()
        cores = self.cpu_units(m)
        try:
            await self.cores.acquire(cores, runner)
        except BaseException:
            self._end_request(m, runner, served=False)
            raise
        try:
            yield m, runner
        finally:
            self.cores.release(cores, runner)
            self._end_request(m, runner, served=True)

    def _end_request(self, m: Managed, runner: Runner, *, served: bool) -> None:
        runner.slots.release()
        runner.used.set()
        m.in_flight -= 1
        m.requests_served += served
        m.last_used = time.time()
        if served and time.monotonic() - m.measured_at > MEASURE_EVERY:
            self.spawn(self._measure(m, runner), f"measure-{m.name}")
        if m.in_flight == 0:
            self._idle.set()

    def cpu_units(self, m: Managed) -> int:
        """How many cores a request to ``m`` holds: its threads, or none when every layer is
        on a GPU (llama.cpp then computes there)."""
        layers = m.info.layers if m.info is not None else None
        all_on_gpu = m.spec.n_gpu_layers < 0 or (
            layers is not None and m.spec.n_gpu_layers > layers
        )
        if all_on_gpu:
            if self._gpu_present is None:
                self._gpu_present = bool(probe_gpus())
            if self._gpu_present:
                return 0
        return self.cores.units(runner_threads(m.spec))

    # -- unloading -----------------------------------------------------------------------------

    async def unload(self, name: str, wait: bool = True) -> bool:
        """Stop a model's runner. ``wait=False``: return once an idle runner has been sent
        SIGKILL, and let its exit be waited for in the background (for an eviction whose
        memory the next load does not need)."""
        m = self.resolve(name)
        if m.loading is not None and not m.loading.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(m.loading)
        r = m.runner
        if r is None or r.state == RunnerState.STOPPED:
            m.failed = False
            return False
        _forget_runner(m)
        # an idle runner has nothing to finish: SIGKILL frees its memory at once, where
        # uvicorn's graceful shutdown took ~200 ms of every swap (measured)
        idle = m.in_flight == 0 and not r.slots.queued
        if idle:
            r.kill()
        if wait or not idle:
            await self._reap(m, r)
        else:
            self.spawn(self._reap(m, r), f"reap-{m.name}")
        return True

    def _vacate(self, name: str, keep_old: bool) -> Vacated | None:
        """Unload an idle model but keep its process for the next load (``Runner.vacate``)."""
        m = self.resolve(name)
        vacated = m.runner.vacate(keep_old) if m.runner is not None else None  # ready, idle
        if vacated is None:
            return None
        _forget_runner(m)
        log.info("unloaded %s; its process (pid %s) takes the next model", name, vacated.proc.pid)
        self.publish({"event": "unloaded", "model": m.name})
        return vacated

    async def _reap(self, m: Managed, r: Runner) -> None:
        await r.stop(self.stop_grace)
        await asyncio.to_thread(_wait_gone, r.pid)
        self.publish({"event": "unloaded", "model": m.name})

    async def unload_all(self) -> list[str]:
        names = [m.name for m in self.models.values() if m.loaded or m.loading is not None]
        results = await asyncio.gather(*(self.unload(n) for n in names))
        return [n for n, done in zip(names, results, strict=True) if done]

    async def reap_idle(self, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        out = []
        for m in list(self.models.values()):
            if (
                m.runner is not None
                and m.runner.state == RunnerState.READY
                and not m.spec.pinned
                and m.spec.ttl > 0
                and m.in_flight == 0
                and m.runner.slots.queued == 0
                and now - max(m.last_used, m.runner.ready_at or 0) > m.spec.ttl
            ):
                log.info("unloading %s: idle for more than %ss", m.name, m.spec.ttl)
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
                self.refill_spare()
                if ticks % 30 == 0:
                    self.rotate_logs()
            except Exception:  # the reaper must survive anything one model does
                log.exception("idle reaper")

    # -- lifecycle -----------------------------------------------------------------------------

    def plan_restore(self) -> dict[str, str]:
        """What ``restore`` will load, and why: set before the API answers, so that the
        `smackctl start` that waits for it can say so (``status.restoring``)."""
        wanted = dict(self.store.restore())
        for m in self.models.values():
            if m.spec.pinned or m.spec.preload:
                wanted.setdefault(m.name, "pinned" if m.spec.pinned else "preload")
        self.restoring = {name: why for name, why in wanted.items() if name in self.models}
        return self.restoring

    async def restore(self) -> None:
        """Load again what was pinned or loaded when the last supervisor stopped."""
        for name, why in self.restoring.items():
            log.info("loading %s at start (%s)", name, why)
            self.spawn(self._quiet_load(name), f"restore-{name}")
        if not self.restoring:
            self.refill_spare()  # else the reaper starts it once the loads are done

    async def _quiet_load(self, name: str) -> None:
        try:
            await self.ensure_ready(name)
        except Exception as exc:
            log.error("could not load %s at start: %s", name, exc)

    async def drain(self, timeout: float) -> bool:
        """Stop admitting; wait until no request is in flight or queued. True if drained."""
        self.accepting = False
        deadline = time.monotonic() + timeout
        while any(
            m.in_flight or (m.runner and m.runner.slots.queued) for m in self.models.values()
        ):
            if time.monotonic() > deadline:
                return False
            await self._wait_idle_change()
        return True

    async def shutdown(self) -> None:
        self.accepting = False
        keep = {
            m.name: ("pinned" if m.spec.pinned else "loaded")
            for m in self.models.values()
            if m.loaded
        }
        self.store.set_restore(keep)
        await self.drop_spare()
        await self.unload_all()
        for t in list(self._tasks):
            t.cancel()

    def reap_stale_runners(self) -> list[int]:
        """Kill runners an earlier supervisor left behind (it crashed): pid + start + cmdline."""
        killed = []
        for pid, _model, create_time, cmdline in self.store.runners():
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                if abs(p.create_time() - create_time) < 1.0 and " ".join(p.cmdline()) == cmdline:
                    signal_group(pid, signal.SIGKILL)
                    killed.append(pid)
            self.store.forget_runner(pid)
        return killed

    # -- views ---------------------------------------------------------------------------------

    def model_view(self, m: Managed) -> dict[str, Any]:
        r = m.runner
        path = self.model_file(m)
        est_ram, est_vram = (m.estimate.ram, m.estimate.vram) if m.estimate else (None, None)
        rss = tree_rss(r.pid) if r is not None and r.pid and r.state == RunnerState.READY else None
        ttl_left = None
        if r is not None and r.state == RunnerState.READY and m.spec.ttl and not m.spec.pinned:
            ttl_left = max(0.0, m.spec.ttl - (time.time() - max(m.last_used, r.ready_at or 0)))
        return {
            "name": m.name,
            "aliases": list(m.spec.aliases),
            "origin": m.origin,
            "state": m.state,
            "phase": m.phase,
            "pid": r.pid if r is not None and not r.exited.is_set() else None,
            "port": r.port if r is not None else None,
            "file": str(path),
            "on_disk": path.is_file(),
            "n_ctx": m.spec.n_ctx,
            "n_gpu_layers": m.spec.n_gpu_layers,
            "pinned": m.spec.pinned,
            "ttl": m.spec.ttl,
            "ttl_left": ttl_left,
            "rss": rss,
            "estimated_ram": est_ram,
            "estimated_vram": est_vram,
            "measured_ram": m.measured_ram,
            "measured_vram": m.measured_vram,
            "loaded_since": r.ready_at if r is not None and r.state == RunnerState.READY else None,
            "last_used": m.last_used or None,
            "requests_served": m.requests_served,
            "tokens_out": m.tokens_out,
            "in_flight": m.in_flight,
            "queued": r.slots.queued if r is not None else 0,
            "failures": m.failures,
            "last_error": m.last_error,
            "crashes": m.crashes,
            "last_crash": m.last_crash,
            "last_crash_at": m.last_crash_at,
        }


def _forget_runner(m: Managed) -> None:
    m.runner = None
    m.measured_ram = m.measured_vram = None
    m.measured_at = 0.0
    m.failed = False


def _cpu_cores(profile: Profile) -> int:
    return profile.cpu.cores or physical_cores()


def _load_key(spec: ModelSpec) -> str:
    return json.dumps(spec.load_key(), default=str)


def _machine_budget() -> tuple[int, int]:
    from smackctl.hardware import probe_gpus

    vm = psutil.virtual_memory()
    return vm.available, sum(g.free for g in probe_gpus())


def _wait_gone(pid: int | None, timeout: float = 5.0) -> None:
    if pid is None:
        return
    with contextlib.suppress(psutil.Error):
        psutil.Process(pid).wait(timeout)


def _mib(n: int) -> str:
    return f"{n / 1024**2:,.0f} MiB"


def _explain(m: Managed, plan: Plan) -> str:
    parts = [f"{m.name} needs {_mib(plan.need_ram)} RAM"]
    if plan.need_vram:
        parts.append(f"and {_mib(plan.need_vram)} VRAM")
    parts.append(f"but only {_mib(max(0, plan.free_ram))} RAM")
    if plan.need_vram:
        parts.append(f"and {_mib(max(0, plan.free_vram))} VRAM")
    parts.append("is free within the budget, even after evicting every idle model")
    return " ".join(parts)


def _fix(m: Managed, plan: Plan) -> str:
    fixes = []
    if plan.blockers:
        fixes.append(f"unload {plan.blockers[0]} (`smackctl models unload {plan.blockers[0]}`)")
    fixes.append(f"lower n_ctx (now {m.spec.n_ctx})")
    if m.spec.n_gpu_layers:
        fixes.append("offload fewer GPU layers")
    fixes.append(
        "raise the profile's memory budget, or load anyway with "
        f"`smackctl models load {m.name} --force`"
    )
    return "; ".join(fixes)
