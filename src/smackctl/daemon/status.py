"""What ``GET /api/status`` says (and the ``/models`` plugin reads): the supervisor, its
memory, its models, and every warning of its parts."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from smackctl import __version__

if TYPE_CHECKING:
    from .services import Services

__all__ = ["status_view"]


def status_view(s: Services, url: str) -> dict[str, Any]:
    import psutil

    sched = s.scheduler
    b = sched.budget()
    models = [sched.model_view(m) for m in s.registry.models.values()]
    used = sum(m.memory()[0] for m in s.registry.models.values() if m.loaded)
    return {
        "pid": os.getpid(),
        "version": __version__,
        "url": url,
        "started_at": s.started,
        "uptime": time.time() - s.started,
        "rss": int(psutil.Process().memory_info().rss),
        "profile": sched.profile.name,
        "switch_phase": sched.switch_phase,
        "profile_path": str(sched.profile_path) if sched.profile_path else None,
        "accepting": sched.accepting,
        "memory": {
            "budget_ram": b.ram,
            "budget_vram": b.vram,
            "used_ram": used,
            "free_ram": b.ram - used,
            "max_loaded": b.max_loaded,
        },
        "cpu": sched.cores.view(),
        "restoring": sched.restoring,
        "warnings": [
            *sched.warnings(),
            *s.deployments.warnings(),
            *s.reloader.warnings(),
            *s.registry.scan_notes,  # the models_dir's duplicates, missing parts
            *([f"fleet: {s.fleet.error}"] if s.fleet is not None and s.fleet.error else []),
            *(s.fleet.members.refused.values() if s.fleet is not None else []),
            *([f"fleet: {s.fleet.members.clash}"] if s.fleet and s.fleet.members.clash else []),
        ],
        "models": models,
        "fleet": None if s.fleet is None else s.fleet.view(),
    }
