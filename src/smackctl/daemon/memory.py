"""The memory side of the scheduler's rules, without I/O but the machine's probe: the budget
given what is loaded, the eviction plan for one load, and the words of a refusal."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable

import psutil

from smackctl.config import MemoryBudget, ModelSpec
from smackctl.estimate import Estimate, flash_attention

from .planner import Budget, Loaded, Plan, plan_evictions
from .registry import Managed

__all__ = [
    "SWAP_PATIENCE", "budget_of", "explain", "fix", "load_key", "machine_budget", "plan_for",
    "queued_ahead", "wait_gone",
]  # fmt: skip


def machine_budget() -> tuple[int, int]:
    """(RAM, VRAM) the machine has available now."""
    from smackctl.hardware import probe_gpus

    vm = psutil.virtual_memory()
    return vm.available, sum(g.free for g in probe_gpus())


def budget_of(
    models: Iterable[Managed], mem: MemoryBudget, probe: Callable[[], tuple[int, int]]
) -> Budget:
    """The RAM/VRAM budget of ``mem`` given what is loaded: the profile's figures, else what
    is available plus what the loaded models hold, less the reserve."""
    avail_ram, avail_vram = probe()
    loaded = [m for m in models if m.loaded]
    held_ram = sum(m.memory()[0] for m in loaded)
    held_vram = sum(m.memory()[1] for m in loaded)
    ram = mem.ram if mem.ram is not None else max(0, avail_ram + held_ram - mem.reserve)
    vram = mem.vram if mem.vram is not None else max(0, avail_vram + held_vram)
    return Budget(ram=ram, vram=vram, max_loaded=mem.max_loaded)


def plan_for(
    m: Managed,
    est: Estimate,
    models: Iterable[Managed],
    budget: Budget,
    waited: float | None = None,
) -> Plan:
    """Which models to evict for ``m``. ``waited``: seconds a load has waited to make room;
    for ``SWAP_PATIENCE`` a model's requests waiting for a slot keep it as busy as those it
    answers (its queue goes before the swap: that saves one back), then they no longer do."""
    queued = waited is not None and waited < SWAP_PATIENCE
    loaded = [
        Loaded(
            name=o.name,
            ram=o.memory()[0],
            vram=o.memory()[1],
            pinned=o.spec.pinned,
            in_flight=o.in_flight + (o.runner.slots.queued if queued and o.runner else 0),
            last_used=o.last_used,
            use_count=o.use_count,
        )
        for o in models
        if o.loaded and o is not m
    ]
    return plan_evictions(est.ram, est.vram, loaded, budget)


#: seconds a load that needs a swap lets the loaded models' queued requests go first
SWAP_PATIENCE = 30.0


def queued_ahead(m: Managed, models: dict[str, Managed]) -> str:
    """The queued requests of other loaded models, in words (empty: none)."""
    waiting = {o.name: o.runner.slots.queued for o in models.values()
               if o.runner is not None and o is not m and o.runner.slots.queued}  # fmt: skip
    return ", ".join(f"the {n} queued request(s) of {name}" for name, n in waiting.items())


def load_key(spec: ModelSpec) -> str:
    """The parameters a measurement of a model's memory holds for, as a key (llama-server's
    flash attention too: without it, it holds a scratch of scores)."""
    key = spec.load_key()
    if spec.backend == "llama-server" and not flash_attention(spec):
        key = (*key, "flash-attn off")
    return json.dumps(key, default=str)


def wait_gone(pid: int | None, timeout: float = 5.0) -> None:
    if pid is None:
        return
    with contextlib.suppress(psutil.Error):
        psutil.Process(pid).wait(timeout)


def _mib(n: int) -> str:
    return f"{n / 1024**2:,.0f} MiB"


def explain(m: Managed, plan: Plan) -> str:
    parts = [f"{m.name} needs {_mib(plan.need_ram)} RAM"]
    if plan.need_vram:
        parts.append(f"and {_mib(plan.need_vram)} VRAM")
    parts.append(f"but only {_mib(max(0, plan.free_ram))} RAM")
    if plan.need_vram:
        parts.append(f"and {_mib(max(0, plan.free_vram))} VRAM")
    parts.append("is free within the budget, even after evicting every idle model")
    return " ".join(parts)


def fix(m: Managed, plan: Plan) -> str:
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
