"""Profiles that reload themselves: the active profile's file is watched (inotify, through
watchfiles; no polling), and a change is applied as a profile switch to the same file.

A valid change: the plan is logged first (what a ``--dry-run`` would print), then it is
carried out with the switch's rules (requests for kept models are served throughout, those for
models being reloaded wait and are served after; a failure rolls back). An invalid one
(bad YAML, an unknown key, a missing file…) is reported with ``file:line key.path`` in the log,
as a ``reload`` event and in ``status``, and the running configuration stays. ``smackctl
profile reload`` does the same on demand (``POST /api/profiles/reload``).

The directory is watched, not the file: editors save by writing a new file and renaming it
over the old one. After a switch to a profile elsewhere the watch follows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smackctl.discover import Scan, scan
from smackctl.errors import SmackError
from smackctl.profile_file import validate_profile_file

from .switch import SwitchPhase, plan_off_loop, run_switch

if TYPE_CHECKING:
    from .scheduler import Scheduler

__all__ = ["Reloader"]

log = logging.getLogger("smackctl.reload")

#: changes closer together than this are one change (an editor's write, rename and chmod)
DEBOUNCE_MS = 300


class Reloader:
    def __init__(self, scheduler: Scheduler, scan: Callable[..., Scan] = scan) -> None:
        self.sched = scheduler
        #: how a models_dir is read (``discover.scan``), on a thread
        self.scan = scan
        #: the problems of the file as it is now, when it is invalid (``status`` shows them)
        self.issues: list[str] = []
        self._retarget = asyncio.Event()
        self._dir_retarget = asyncio.Event()
        self._dir_task: asyncio.Task[None] | None = None
        self._watched: Path | None = None  # the file and folder watched now
        self._watched_dir: Path | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        scheduler.events.listeners.append(self._on_event)

    def _on_event(self, ev: dict[str, Any]) -> None:
        if ev.get("event") != "switch" or ev.get("phase") != str(SwitchPhase.ACTIVE):
            return
        # another file or folder to watch: only then is the watch begun anew (a watch that
        # stays keeps every change made meanwhile, one begun anew would miss them)
        path = self.sched.profile_path
        if (path.resolve() if path else None) != self._watched:
            self._retarget.set()
        if self.sched.registry.models_dir(self.sched.profile, path) != self._watched_dir:
            self._dir_retarget.set()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._watch(), name="profile-watch")
        self._dir_task = loop.create_task(self._watch_models_dir(), name="models-dir-watch")
        # the other profiles' model names, for the hint of an unknown model, read on a thread
        self.sched.registry.read_profiles()

    async def stop(self) -> None:
        for task in (self._task, self._dir_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _watch_models_dir(self) -> None:
        """The profile's ``models_dir``: a GGUF file added or removed there is a model added
        or removed, with no restart (a loaded one stays until it is unloaded)."""
        from watchfiles import awatch

        while True:
            self._dir_retarget.clear()
            folder = self.sched.registry.models_dir(self.sched.profile, self.sched.profile_path)
            self._watched_dir = folder
            if folder is None or not folder.is_dir():
                await self._dir_retarget.wait()
                continue
            log.info("watching %s for models", folder)
            try:
                async for _ in awatch(
                    folder,
                    # a new folder too: a file written into it at once can come before
                    # its watch does, and the rescan walks the whole tree
                    watch_filter=lambda _c, p: p.lower().endswith(".gguf") or Path(p).is_dir(),
                    stop_event=self._dir_retarget,
                    debounce=DEBOUNCE_MS,
                ):
                    await self._logged(self.rescan(), "rescan of the models_dir")
            except (OSError, RuntimeError) as exc:
                log.warning("cannot watch %s (%s)", folder, exc)
                await self._dir_retarget.wait()

    async def rescan(self) -> dict[str, list[str]]:
        """Read the models_dir again (on a thread: it walks folders and hashes same-size
        files): the models it added and removed."""
        sched, registry = self.sched, self.sched.registry
        found = None
        for _ in range(3):  # the registry changed while the thread scanned: scan again
            profile, path = sched.profile, sched.profile_path
            asked = registry.scan_request(profile, path)
            if asked is None:
                break
            found = await asyncio.to_thread(self.scan, *asked)
            if sched.profile is profile and registry.scan_request(profile, path) == asked:
                break
            found = None  # after three tries, rebuild() scans on the loop
        before = {n for n, m in sched.models.items() if m.origin == "discovered"}
        registry.rebuild(sched.profile, sched.profile_path, found)
        after = {n for n, m in sched.models.items() if m.origin == "discovered"}
        change = {"added": sorted(after - before), "removed": sorted(before - after)}
        if change["added"] or change["removed"]:
            log.info("models_dir: added %s, removed %s", change["added"] or "none",
                     change["removed"] or "none")  # fmt: skip
            sched.events.publish({"event": "discovered", **change})
        return change

    async def _logged(self, work: Awaitable[Any], what: str) -> None:
        """``work``, its failure logged: a change the watch could not apply must never end
        the watch (the next change is applied)."""
        try:
            await work
        except Exception:
            log.exception("%s failed; the watch goes on", what)

    def warnings(self) -> list[str]:
        if not self.issues:
            return []
        return [
            f"the profile file changed but is invalid, so the running configuration stays "
            f"({len(self.issues)} problem(s)): " + "; ".join(self.issues)
        ]

    async def _watch(self) -> None:
        from watchfiles import Change, awatch

        while True:
            path = self.sched.profile_path
            self._retarget.clear()
            self._watched = path.resolve() if path else None
            if path is None:  # the built-in default profile: no file to watch
                await self._retarget.wait()
                continue
            path = path.resolve()

            def ours(change: Change, changed: str, path: Path = path) -> bool:
                return Path(changed) == path and change != Change.deleted

            log.info("watching %s for changes", path)
            try:
                async for _ in awatch(
                    path.parent,
                    watch_filter=ours,
                    stop_event=self._retarget,
                    debounce=DEBOUNCE_MS,
                    recursive=False,
                ):
                    await self._logged(self.reload("the file changed"), "profile reload")
            except (OSError, RuntimeError) as exc:  # the folder went away, say
                log.warning("cannot watch %s (%s): reload it with `smackctl profile reload`",
                            path, exc)  # fmt: skip
                await self._retarget.wait()

    async def reload(self, why: str) -> dict[str, Any]:
        """Read the active profile's file again and apply it; what happened, as a dict."""
        async with self._lock:
            return await self._reload(why)

    async def _reload(self, why: str) -> dict[str, Any]:
        sched = self.sched
        path = sched.profile_path
        if path is None:
            return {"ok": False, "issues": ["the active profile is the built-in one: no file"]}
        profile, problems = await asyncio.to_thread(validate_profile_file, path)
        if profile is None:
            self.issues = [str(p) for p in problems]
            log.error(
                "profile reload (%s): %s is invalid, the running configuration stays:\n  %s",
                why, path, "\n  ".join(self.issues),
            )  # fmt: skip
            sched.events.publish(
                {"event": "reload", "ok": False, "profile": sched.profile.name,
                 "issues": self.issues}
            )  # fmt: skip
            return {"ok": False, "issues": self.issues}
        self.issues = []
        if profile == sched.profile:
            return {"ok": True, "changed": False, "profile": profile.name}
        plan = await plan_off_loop(sched, profile, path)
        steps = [f"{s.model}: {s.action}" + (f" ({s.reason})" if s.reason else "")
                 for s in plan.steps]  # fmt: skip
        log.info("profile reload (%s): plan for %s: %s", why, path, "; ".join(steps) or "none")
        sched.events.publish(
            {"event": "reload", "phase": "planned", "profile": profile.name, "steps": steps}
        )
        try:
            await run_switch(sched, profile, path)
        except SmackError as exc:
            log.error("profile reload (%s) failed: %s", why, exc.message)
            sched.events.publish(
                {"event": "reload", "ok": False, "profile": profile.name, "error": exc.message}
            )
            return {"ok": False, "error": exc.message, "plan": plan.as_dict()}
        sched.events.publish({"event": "reload", "ok": True, "profile": profile.name})
        return {"ok": True, "changed": True, "profile": profile.name, "plan": plan.as_dict()}
