"""``/api/profiles…``: the active profile, a switch (its plan alone with ``dry_run``), a
reload of the active file; and ``/api/route``, what ``model: auto`` would decide."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from smackctl.daemon.streams import stream_task
from smackctl.daemon.switch import plan_off_loop, run_switch
from smackctl.errors import UsageError
from smackctl.profile_file import load_profile

from . import profile_edit as edit
from .common import errors, json_body, services

__all__ = ["ROUTES"]


async def active(request: Request) -> Response:
    s = services(request)
    profile, path = s.scheduler.profile, s.scheduler.profile_path
    text, available = await asyncio.to_thread(_text_and_others, path)
    return JSONResponse(
        {
            "active": profile.name,
            "path": str(path) if path else None,
            "text": text,  # the file as it is now (the page's editor)
            "available": available,
            "switch_phase": s.scheduler.switch_phase,
            # what a request that names no model gets, and the sampling it is given
            "default_model": profile.routing.default_model,
            "defaults": profile.defaults.model_dump(exclude_none=True),
            # the names a request may give that no runner here serves (servers elsewhere,
            # groups): the CLI asks no local model's view of them
            "not_local": sorted(set(s.registry.askable()) - set(s.registry.known_names())),
        }
    )


def _text_and_others(path: Path | None) -> tuple[str | None, list[dict[str, str]]]:
    from smackctl.paths import list_profile_files

    text = None
    if path is not None:
        with contextlib.suppress(OSError, ValueError):
            text = path.read_text()
    return text, [{"name": n, "path": str(p)} for n, p in list_profile_files().items()]


async def switch(request: Request) -> Response:
    s = services(request)
    body = await json_body(request)
    if not isinstance(body.get("path"), str):
        raise UsageError("`path` of the profile file is required", "smackctl profile switch NAME")
    path = Path(body["path"])
    target = await asyncio.to_thread(load_profile, path)
    if body.get("dry_run"):
        return JSONResponse((await plan_off_loop(s.scheduler, target, path)).as_dict())

    def start() -> asyncio.Future[Any]:
        return s.scheduler.spawn(run_switch(s.scheduler, target, path), f"switch-{target.name}")

    return stream_task(
        s.events,
        start,
        lambda ev: ev["event"] in ("switch", "progress", "ready", "unloaded", "error"),
        lambda plan: {"event": "done", "profile": target.name, "plan": plan.as_dict()},
    )


async def reload(request: Request) -> Response:
    reloader = services(request).reloader
    return JSONResponse(await reloader.reload("asked: `smackctl profile reload`"))


async def route(request: Request) -> Response:
    """``POST /api/route``: which model a ``model: auto`` request would go to, and why,
    without running it (``{"prompt": TEXT}`` or a chat request's body)."""
    body = await json_body(request)
    if isinstance(body.get("prompt"), str) and "messages" not in body:
        body = {"messages": [{"role": "user", "content": body["prompt"]}]}
    t = time.perf_counter()
    decision = await services(request).router.decide("/v1/chat/completions", body)
    took = (time.perf_counter() - t) * 1e6
    return JSONResponse(
        {"model": decision.model, "reason": decision.reason, "microseconds": round(took, 1)}
    )


ROUTES = [
    Route("/api/profiles", errors(active), methods=["GET"]),
    Route("/api/profiles/switch", errors(switch), methods=["POST"]),
    Route("/api/profiles/reload", errors(reload), methods=["POST"]),
    Route("/api/route", errors(route), methods=["POST"]),
    *edit.ROUTES,
]
