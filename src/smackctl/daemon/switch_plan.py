"""The plan of a profile switch: a pure function of the current profile, what is loaded, and
the target (``plan_switch``), and the words of the switch's state machine. ``switch.py``
carries a plan out; the scheduler asks for a plan and never imports the module that acts.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from smackctl.config import ModelSpec, Profile

__all__ = ["Action", "ModelStep", "SwitchPhase", "SwitchPlan", "plan_switch"]


class SwitchPhase(enum.StrEnum):
    PLANNING = "planning"
    DRAINING = "draining"
    UNLOADING = "unloading"
    LOADING = "loading"
    ACTIVE = "active"
    ROLLED_BACK = "rolled back"


class Action(enum.StrEnum):
    KEEP = "keep"  # loaded, same parameters: untouched, served throughout
    LOAD = "load"  # preload/pinned in the target, not loaded now
    UNLOAD = "unload"  # loaded now, not in the target
    RELOAD = "reload"  # loaded now, parameters changed
    ADD = "add"  # in the target, loaded on demand later
    REMOVE = "remove"  # known now, not loaded, not in the target
    UPDATE = "update"  # not loaded, parameters changed: nothing to do now


@dataclass(frozen=True)
class ModelStep:
    model: str
    action: Action
    reason: str = ""
    ram: int = 0  # what the model will take after the switch (0 if not loaded then)


@dataclass(frozen=True)
class SwitchPlan:
    source: str
    target: str
    steps: tuple[ModelStep, ...]
    ram_before: int
    ram_after: int
    budget_ram: int
    fits: bool
    problems: tuple[str, ...] = field(default=())

    def of(self, *actions: Action) -> list[str]:
        return [s.model for s in self.steps if s.action in actions]

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["steps"] = [{**asdict(s), "action": str(s.action)} for s in self.steps]
        return d


_FIELDS = (
    "source",
    "path",
    "n_ctx",
    "n_gpu_layers",
    "threads",
    "parallel",
    "chat_format",
    "backend",
    "args",
)


def _changes(old: ModelSpec, new: ModelSpec) -> str:
    out = []
    for f in _FIELDS:
        a, b = getattr(old, f), getattr(new, f)
        if a != b:
            out.append(f"{f} {a} → {b}")
    return ", ".join(out)


def plan_switch(
    current: Profile,
    loaded: dict[str, int],
    target: Profile,
    estimate: Callable[[str, ModelSpec], int | None],
    budget_ram: int,
) -> SwitchPlan:
    """``loaded``: model → RAM it holds now. ``estimate``: RAM a target model would need
    (None when its file is not on disk yet: it will be pulled)."""
    steps: list[ModelStep] = []
    problems: list[str] = []
    after = 0
    for name in sorted(set(current.models) | set(target.models) | set(loaded)):
        old, new = current.models.get(name), target.models.get(name)
        is_loaded = name in loaded
        wanted = new is not None and (new.preload or new.pinned)
        if new is None:
            steps.append(
                ModelStep(
                    name, Action.UNLOAD if is_loaded else Action.REMOVE, f"not in {target.name}"
                )
            )
            continue
        changed = old is not None and old.load_key() != new.load_key()
        why = _changes(old, new) if (old is not None and changed) else ""
        if is_loaded and changed:
            need = estimate(name, new)
            after += need or 0
            steps.append(ModelStep(name, Action.RELOAD, why, need or 0))
        elif is_loaded:
            after += loaded[name]
            steps.append(ModelStep(name, Action.KEEP, "", loaded[name]))
        elif wanted:
            need = estimate(name, new)
            if need is None:
                problems.append(f"{name}: file not on disk yet; it is pulled during the switch")
            after += need or 0
            steps.append(
                ModelStep(name, Action.LOAD, "preload" if new.preload else "pinned", need or 0)
            )
        elif old is None:
            steps.append(ModelStep(name, Action.ADD, "loaded on first use"))
        else:
            steps.append(ModelStep(name, Action.UPDATE if changed else Action.KEEP, why))
    fits = after <= budget_ram
    if target.memory.max_loaded is not None:
        count = sum(
            1 for s in steps if s.action in (Action.KEEP, Action.LOAD, Action.RELOAD) and s.ram
        )
        if count > target.memory.max_loaded:
            fits = False
            problems.append(
                f"{count} models would be loaded, max_loaded is {target.memory.max_loaded}"
            )
    if after > budget_ram:
        problems.append(
            f"the loaded models would need {after / 2**20:,.0f} MiB, the budget is "
            f"{budget_ram / 2**20:,.0f} MiB"
        )
    return SwitchPlan(
        source=current.name,
        target=target.name,
        steps=tuple(steps),
        ram_before=sum(loaded.values()),
        ram_after=after,
        budget_ram=budget_ram,
        fits=fits,
        problems=tuple(problems),
    )
