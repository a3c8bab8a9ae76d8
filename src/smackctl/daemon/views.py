"""What `/api/status` and `/api/models` say of a model: a view of its entry, read-only."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from smackctl.hardware import tree_rss

from .registry import Managed
from .runner import RunnerState

__all__ = ["model_view"]


def model_view(m: Managed, path: Path) -> dict[str, Any]:
    """``path``: the model's file (``Registry.model_file``)."""
    r = m.runner
    est_ram, est_vram = (m.estimate.ram, m.estimate.vram) if m.estimate else (None, None)
    ready = r is not None and r.state == RunnerState.READY
    rss = tree_rss(r.pid) if r is not None and r.pid and ready else None
    ttl_left = None
    limit = m.idle_limit()
    if r is not None and ready and limit is not None:
        ttl_left = max(0.0, limit - (time.time() - max(m.last_used, r.ready_at or 0)))
    return {
        "name": m.name,
        "aliases": list(m.spec.aliases),
        "origin": m.origin,
        "backend": m.spec.backend,
        "state": m.state,
        "phase": m.phase,
        "pid": r.pid if r is not None and not r.exited.is_set() else None,
        "port": r.port if r is not None else None,
        "file": str(path),
        "on_disk": path.is_file(),
        "chat": m.spec.chat,  # the profile's word (false: a base model), None when silent
        "n_ctx": m.spec.n_ctx,
        "n_gpu_layers": m.spec.n_gpu_layers,
        "parallel": m.spec.parallel,
        "pinned": m.spec.pinned,
        "ttl": m.spec.ttl,
        "keep_alive": m.keep_alive,  # this load's own idle time (-1: kept), None: the ttl
        "ttl_left": ttl_left,
        "rss": rss,
        "estimated_ram": est_ram,
        "estimated_vram": est_vram,
        "measured_ram": m.measured_ram,
        "measured_vram": m.measured_vram,
        "loaded_since": r.ready_at if r is not None and ready else None,
        "last_used": m.last_used or None,
        "requests_served": m.requests_served,
        "tokens_out": m.tokens_out,
        "in_flight": m.in_flight,
        "queued": r.slots.queued if r is not None else 0,
        # interactive and batch waiting, and how long the next one to queue would wait
        "queued_by_priority": r.slots.queued_by_priority() if r is not None else {},
        "expected_wait": round(r.slots.expected_wait(), 3) if r is not None else 0.0,
        "failures": m.failures,
        "last_error": m.last_error,
        "crashes": m.crashes,
        "last_crash": m.last_crash,
        "last_crash_at": m.last_crash_at,
    }
