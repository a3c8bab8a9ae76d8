"""Starting, watching and measuring runners: the scheduler's hands.

The scheduler decides (which model, when, what to evict: ``make_room``, given to the
loader); the loader does: fetch the file, estimate, start the runner (in a spare or an
evicted runner's process when it can), wait for it, measure it, and restart it with backoff
when it exits by itself. Everything runs on the event loop's thread, as the scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil

from smackctl import catalog
from smackctl.config import ModelSpec, Profile
from smackctl.errors import ModelLoadError, SmackError
from smackctl.estimate import Estimate, estimate_for
from smackctl.gguf import GGUFInfo, check_magic, read_info
from smackctl.hardware import process_tree_vram, tree_rss
from smackctl.paths import Paths
from smackctl.selftest import signal_name

from .backends.base import Backend, backend_for
from .backends.llama_cpp_python.kvstore import identity_of
from .backends.llama_server import slot_folder
from .events import Events
from .memory import load_key
from .process import signal_group
from .registry import Managed, Registry
from .runner import Runner, RunnerState
from .slot_states import SlotStates
from .slots import QueueBudget
from .spare import Spare, Vacated
from .spare_keeping import SPARE_RAM, SpareKeeping
from .store import Store

__all__ = ["BACKOFF_CAP", "MAX_QUICK_FAILURES", "SPARE_RAM", "Loader", "MakeRoom"]

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
#: the scheduler's rule for a load: evict what the plan says (keeping one evicted runner's
#: process for the load when ``keep_process``), wait, or refuse
MakeRoom = Callable[[Managed, Estimate, bool, bool], Awaitable[Vacated | None]]


class Loader(SpareKeeping):
    def __init__(
        self,
        paths: Paths,
        store: Store,
        registry: Registry,
        events: Events,
        spawn: Callable[[Any, str], asyncio.Task[Any]],
        budget_probe: Callable[[], tuple[int, int]],
        accepting: Callable[[], bool],
        *,
        ready_timeout: float,
    ) -> None:
        self.paths = paths
        self.store = store
        self.registry = registry
        self.events = events
        self.spawn = spawn
        self.budget_probe = budget_probe
        self.accepting = accepting
        self.ready_timeout = ready_timeout
        #: set by the scheduler: its eviction rule
        self.make_room: MakeRoom | None = None
        #: a runner process with the imports done, for the next load
        self.spare: Spare | None = None
        self.spare_starting = False
        #: the memory every runner's waiting requests may hold together
        self.queue_budget = QueueBudget(lambda: self.profile.memory.queue)

    @property
    def profile(self) -> Profile:
        return self.registry.profile

    def publish(self, event: dict[str, Any]) -> None:
        self.events.publish(event)

    def model_file(self, m: Managed) -> Path:
        return self.registry.model_file(m)

    def resolve(self, name: str | None) -> Managed:
        return self.registry.resolve(name)

    async def load(
        self, m: Managed, *, restart: bool, force: bool = False, fresh: bool = False
    ) -> None:
        fut = m.loading
        assert fut is not None
        began = time.monotonic()
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
        self.publish(
            {"event": "ready", "model": m.name, "pid": runner.pid,
             "seconds": round(time.monotonic() - began, 3), "restart": restart}
        )  # fmt: skip

    def progress(self, m: Managed, phase: str, done: int = 0, total: int | None = None) -> None:
        m.phase = phase
        self.publish(
            {"event": "progress", "model": m.name, "phase": phase, "done": done, "total": total}
        )

    async def fetch(self, m: Managed) -> Path:
        """The model's file, pulled when not on disk yet; one there is checked against the
        profile's sha256 first (once per file as it is: ``catalog.verified_sha256``)."""
        path = self.model_file(m)
        if m.spec.source is None:
            if not path.is_file():
                raise ModelLoadError(
                    f"model file for {m.name} not found: {path}",
                    "fix the path in the profile, or `smackctl models add` the right file",
                )
            return path
        if not path.is_file():
            return await self._pull(m)
        expected = m.spec.sha256
        if expected is not None and catalog.hashed_sha256(path) != expected:
            self.progress(m, "verifying")
            actual = await asyncio.to_thread(catalog.verified_sha256, path, self._reporter(m))
            if actual != expected:
                # not fetched again here: a load should not start a download of gigabytes
                # unasked, and a file that changed under the store is worth knowing about
                raise ModelLoadError(
                    f"the file of {m.name} on disk ({path}) is not the one the profile names: "
                    f"sha256 {actual}, expected {expected}",
                    f"fetch it again with `smackctl models pull {m.name}`",
                )
        return path

    def _reporter(self, m: Managed) -> catalog.Progress:
        """A pull's or a hash's progress, reported from its thread to the loop's events."""
        loop = asyncio.get_running_loop()

        def report(phase: str, done: int, total: int | None) -> None:
            loop.call_soon_threadsafe(self.progress, m, phase, done, total)

        return report

    async def _pull(self, m: Managed) -> Path:
        assert m.spec.source is not None
        self.progress(m, "pulling")
        source = catalog.parse_source(m.spec.source)
        pull = functools.partial(catalog.pull, name=m.name)
        dest = self.paths.models_dir
        return await asyncio.to_thread(pull, source, dest, m.spec.sha256, self._reporter(m))

    async def pull(self, name: str) -> Path:
        """``smackctl models pull``: fetch the file, or fetch it again when the one on disk
        fails its sha256 (``catalog.pull`` checks it)."""
        m = self.resolve(name)
        path = await (self.fetch(m) if m.spec.source is None else self._pull(m))
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

    def read_headers(self, profile: Profile, path: Path) -> None:
        """Read the GGUF header of each local model of ``profile`` (the file at ``path``)
        that is on disk, into ``read_info``'s memory: called on a thread, so that the plan of
        a switch to it (``estimate`` on the loop, for each model) reads no file there."""
        for name, spec in profile.models.items():
            if spec.remote:
                continue
            with contextlib.suppress(SmackError):
                probe = Managed(name=name, spec=spec, origin="profile", base_dir=path.parent)
                file = self.registry.model_file(probe)
                if file.is_file():
                    read_info(file)

    def estimate(self, m: Managed, path: Path) -> Estimate:
        """What the planner counts for loading ``m``: the last measurement when there is one."""
        if m.info is None or m.info.path != str(path):
            m.info = read_info(path)
        est = estimate_for(m.info, m.spec)
        m.estimate = est
        saved = self.store.measurement(m.name, load_key(m.spec))
        if saved is not None and saved[0] is not None:
            # a measurement may be of caches not full yet: their whole cap is counted on top
            ram = saved[0] + m.spec.cache_ram
            return replace(est, ram=ram, vram=saved[1] or 0, measured=True)
        return est

    async def _start_runner(
        self, m: Managed, *, restart: bool, force: bool = False, fresh: bool = False
    ) -> Runner:
        while True:
            if restart:
                delay = min(BACKOFF_CAP, 2.0 ** max(0, m.failures - 1))
                self.progress(m, f"restarting in {delay:.0f}s")
                await asyncio.sleep(delay)
            path = await self.fetch(m)
            check_magic(path)
            est = await asyncio.to_thread(self.estimate, m, path)
            assert self.make_room is not None
            reuse = await self.make_room(m, est, force, not fresh)
            self.progress(m, "starting")
            spec = m.spec
            backend = backend_for(spec, self.profile.llama_server)

            def argv(
                port: int, spec: ModelSpec = spec, path: Path = path, backend: Backend = backend
            ) -> list[str]:
                return backend.argv(spec, path, port, m.name)

            runner = Runner(
                m.name,
                argv,
                self.paths.runner_log(m.name),
                parallel=m.spec.parallel,
                max_queue=m.spec.max_queue,
                queue_budget=self.queue_budget,
                ready_timeout=self.ready_timeout,
                on_state=self._on_state_and_record,
                take_spare=self.take_spare,
                reuse=reuse,
                ready_path=backend.ready_path,
                key_env=backend.key_env,
            )
            if backend.name == "llama-server":  # its conversations kept across swaps
                runner.kv = slot_states_for(spec, path)
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
                self.spawn(self.measure(m, runner), f"measure-{m.name}")
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
        self.publish(
            {"event": "state", "model": runner.model, "state": str(state), "pid": runner.pid}
        )

    async def _free_old(self, m: Managed, runner: Runner) -> None:
        """The runner's process still holds the model it had before (a swap, see
        ``_make_room``): free it once the request that asked for the swap is answered (or
        after FREE_OLD_AFTER for a load no request waits for), then measure."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(runner.used.wait(), FREE_OLD_AFTER)
        await runner.free_old()
        await self.measure(m, runner)

    async def measure(self, m: Managed, runner: Runner) -> None:
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
        self.store.save_measurement(m.name, load_key(m.spec), m.measured_ram, m.measured_vram)

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
        if m.loading is None and self.accepting():
            m.loading = asyncio.get_running_loop().create_future()
            self.spawn(self.load(m, restart=True), f"restart-{m.name}")

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


def slot_states_for(spec: ModelSpec, path: Path) -> SlotStates | None:
    """The saved slots of a llama-server model (slot_states.py), by its identity."""
    found = identity_of(str(path), spec.n_ctx, parallel=spec.parallel, args=spec.args)
    if found is None:
        return None
    return SlotStates(slot_folder(), found[0], spec.parallel)
