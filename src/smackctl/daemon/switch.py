"""Switching the active profile: a pure plan (``switch_plan.py``), then a state machine with
one owner.

    planning ──▶ draining ──▶ unloading ──▶ loading ──▶ active
        │            │             │            │
        └────────────┴─────────────┴────────────┴──▶ rolled back (the previous profile again)

``plan_switch`` is a pure function of the current profile, what is loaded, and the target.
While a switch runs, requests for models being unloaded or reloaded wait for it to end and are
served afterwards; requests for kept models are served throughout.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smackctl.config import ModelSpec, Profile
from smackctl.errors import InsufficientMemory, SmackError, SwitchFailed

from .registry import Managed
from .switch_plan import Action, ModelStep, SwitchPhase, SwitchPlan, plan_switch

if TYPE_CHECKING:
    from .scheduler import Scheduler

__all__ = [
    "Action",
    "ModelStep",
    "SwitchPhase",
    "SwitchPlan",
    "plan_for",
    "plan_switch",
    "run_switch",
]

log = logging.getLogger("smackctl.switch")


def plan_for(sched: Scheduler, target: Profile, target_path: Path) -> SwitchPlan:
    """The plan of a switch to ``target`` from what ``sched`` holds now."""
    loaded = {m.name: m.memory()[0] for m in sched.models.values() if m.loaded}

    def need(name: str, spec: ModelSpec) -> int | None:
        probe = Managed(name=name, spec=spec, origin="profile", base_dir=target_path.parent)
        path = sched.registry.model_file(probe)
        if not path.is_file():
            return None
        try:
            return sched.loader.estimate(probe, path).ram
        except SmackError:
            return None

    b = sched.budget(target.memory)
    return plan_switch(sched.profile, loaded, target, need, b.ram)


async def plan_off_loop(sched: Scheduler, target: Profile, target_path: Path) -> SwitchPlan:
    """``plan_for``, with the GGUF header of each of ``target``'s models read first on a
    thread: the plan's estimates then read no file on the event loop."""
    await asyncio.to_thread(sched.loader.read_headers, target, target_path)
    return plan_for(sched, target, target_path)


async def run_switch(sched: Scheduler, target: Profile, path: Path) -> SwitchPlan:
    """Carry out a switch; on failure roll back to the previous profile and raise. Switches
    take turns: one asked while another runs (a hot reload of the file just saved, say)
    waits for it, then plans from what it left."""
    async with sched.switches:
        return await _switch(sched, target, path)


async def _switch(sched: Scheduler, target: Profile, path: Path) -> SwitchPlan:
    old_profile, old_path = sched.profile, sched.profile_path

    def phase(p: SwitchPhase, **kw: Any) -> None:
        sched.switch_phase = p
        sched.events.publish({"event": "switch", "phase": str(p), "profile": target.name, **kw})

    phase(SwitchPhase.PLANNING)
    plan = await plan_off_loop(sched, target, path)
    if not plan.fits:
        sched.switch_phase = None
        raise InsufficientMemory(
            f"profile {target.name} does not fit: " + "; ".join(plan.problems),
            f"see `smackctl profile switch {target.name} --dry-run`",
        )
    replaced = plan.of(Action.UNLOAD, Action.RELOAD)
    to_load = plan.of(Action.LOAD, Action.RELOAD)
    unloaded: list[str] = []
    loaded_now: list[str] = []
    sched.hold(replaced)
    try:
        busy = {n: m.in_flight + (m.runner.slots.queued if m.runner else 0)
                for n in replaced if (m := sched.models.get(n)) is not None}  # fmt: skip
        # what the drain waits for, said (a switch that sat at "draining" said nothing)
        phase(SwitchPhase.DRAINING, models=replaced, waiting={n: k for n, k in busy.items() if k})
        await sched.drain_models(replaced)
        phase(SwitchPhase.UNLOADING, models=replaced)
        for name in replaced:
            sched.events.publish({"event": "progress", "model": name, "phase": "unloading"})
            if await sched.unload(name):
                unloaded.append(name)
            sched.events.publish({"event": "progress", "model": name, "phase": "unloaded"})
        sched.set_profile(target, path)
        phase(SwitchPhase.LOADING, models=to_load)
        for name in to_load:
            await sched.ensure_ready(name, switching=True)
            loaded_now.append(name)
        sched.store.set("active_profile_path", str(path))
        phase(SwitchPhase.ACTIVE)
        return plan
    except Exception as exc:
        log.error("switch to %s failed: %s; rolling back to %s", target.name, exc, old_profile.name)
        for name in loaded_now:
            await sched.unload(name)
        sched.set_profile(old_profile, old_path)
        for name in unloaded:  # best effort: put back what the old profile had loaded
            try:
                await sched.ensure_ready(name, switching=True)
            except Exception as again:
                log.error("rollback could not reload %s: %s", name, again)
        phase(SwitchPhase.ROLLED_BACK, error=str(exc))
        msg = exc.message if isinstance(exc, SmackError) else str(exc)
        raise SwitchFailed(
            f"switch to {target.name} failed, rolled back to {old_profile.name}: {msg}",
            "fix the profile, check it with `smackctl profile validate`, then switch again",
        ) from exc
    finally:
        sched.release_hold()


_DONE = (SwitchPhase.ACTIVE, SwitchPhase.ROLLED_BACK)
