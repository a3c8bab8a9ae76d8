"""Which loaded models to evict so that another fits: a pure decision, no I/O, no logging."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

__all__ = ["Budget", "Loaded", "Plan", "plan_evictions", "priority"]

#: seconds of recency that each doubling of a model's use count is worth
FREQUENCY_WEIGHT = 60.0


@dataclass(frozen=True)
class Loaded:
    name: str
    ram: int
    vram: int = 0
    pinned: bool = False
    in_flight: int = 0
    last_used: float = 0.0
    use_count: int = 0


@dataclass(frozen=True)
class Budget:
    ram: int
    vram: int = 0
    max_loaded: int | None = None


@dataclass(frozen=True)
class Plan:
    fits: bool
    evict: tuple[str, ...] = ()
    #: True when it would fit once busy models are idle: wait, then plan again
    wait: bool = False
    need_ram: int = 0
    need_vram: int = 0
    free_ram: int = 0
    free_vram: int = 0
    #: what could be unloaded by the user to make room (pinned and busy models included)
    blockers: tuple[str, ...] = field(default=())


def priority(m: Loaded) -> float:
    """Higher stays longer: least recently used goes first, frequent use buys time."""
    return m.last_used + FREQUENCY_WEIGHT * math.log2(1 + m.use_count)


def _fits(
    need_ram: int, need_vram: int, free_ram: int, free_vram: int, count: int, max_loaded: int | None
) -> bool:
    return (
        need_ram <= free_ram
        and need_vram <= free_vram
        and (max_loaded is None or count < max_loaded)
    )


def plan_evictions(need_ram: int, need_vram: int, loaded: Sequence[Loaded], budget: Budget) -> Plan:
    free_ram = budget.ram - sum(m.ram for m in loaded)
    free_vram = budget.vram - sum(m.vram for m in loaded)
    base = Plan(
        fits=False, need_ram=need_ram, need_vram=need_vram, free_ram=free_ram, free_vram=free_vram
    )
    count = len(loaded)
    if _fits(need_ram, need_vram, free_ram, free_vram, count, budget.max_loaded):
        return replace(base, fits=True)
    idle = sorted((m for m in loaded if not m.pinned and m.in_flight == 0), key=priority)
    evict: list[str] = []
    r, v, c = free_ram, free_vram, count
    for m in idle:
        evict.append(m.name)
        r, v, c = r + m.ram, v + m.vram, c - 1
        if _fits(need_ram, need_vram, r, v, c, budget.max_loaded):
            return replace(base, fits=True, evict=tuple(evict))
    blockers = tuple(m.name for m in sorted(loaded, key=lambda m: -m.ram))
    busy = [m for m in loaded if not m.pinned and m.in_flight > 0]
    for m in busy:
        r, v, c = r + m.ram, v + m.vram, c - 1
    if busy and _fits(need_ram, need_vram, r, v, c, budget.max_loaded):
        return replace(base, wait=True, blockers=blockers)
    return replace(base, blockers=blockers)
