"""``/api/models…``: the known models, each one's file and capabilities, adding and
discovering models, loading, unloading, pulling and benchmarking them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from smackctl.daemon.bench import BenchParams
from smackctl.daemon.capabilities import capabilities
from smackctl.daemon.registry import NEVER
from smackctl.daemon.streams import stream_task
from smackctl.errors import SmackError, UsageError
from smackctl.gguf import read_info

from .common import errors, json_body, keep_alive_of, services, whole

__all__ = ["ROUTES"]

#: what `models add` may set besides the path (the rest of an entry is the profile's to say)
_ADDABLE = ("n_ctx", "ttl", "aliases", "chat_format", "backend", "threads", "parallel")


async def index(request: Request) -> Response:
    s = services(request)
    views = [s.scheduler.model_view(m) for m in s.registry.models.values()]
    if request.query_params.get("details"):
        for v in views:
            info = None
            if v["on_disk"]:
                try:
                    info = await asyncio.to_thread(read_info, Path(v["file"]))
                    v["gguf"] = info.as_dict()
                except SmackError as exc:
                    v["gguf_error"] = exc.message
            v["capabilities"] = capabilities(s.registry.models[v["name"]].spec, info)
    return JSONResponse(views)


async def show(request: Request) -> Response:
    s = services(request)
    m = s.registry.resolve(request.path_params["name"])
    view = s.scheduler.model_view(m)
    path = s.registry.model_file(m)
    info = None
    if path.is_file():
        try:  # a file that is not a GGUF model still leaves the rest of the view to show
            info = await asyncio.to_thread(read_info, path)
            view["gguf"] = info.as_dict()
        except SmackError as exc:
            view["gguf_error"] = exc.message
    view["capabilities"] = capabilities(m.spec, info)
    return JSONResponse(view)


async def add(request: Request) -> Response:
    s = services(request)
    body = await json_body(request)
    path, name = body.get("path"), body.get("name")
    if not isinstance(path, str) or not isinstance(name, str):
        raise UsageError(
            "`path` and `name` are required strings", "smackctl models add PATH --name NAME"
        )
    settings = {k: body[k] for k in _ADDABLE if body.get(k) is not None}
    before = s.store.added_models().get(name)  # added before (not found in models_dir)
    m = s.registry.add(name, Path(path), settings)
    view = s.scheduler.model_view(m)
    if before is not None:  # an added model of that name is replaced: what it had is said
        now = m.spec.model_dump(exclude_defaults=True)
        view["replaced"] = {k: v for k, v in before.items() if k != "path" and now.get(k) != v}
    return JSONResponse(view, status_code=201)


async def discover(request: Request) -> Response:
    """``POST /api/models/discover {"dir": PATH}``: every GGUF model under the folder
    becomes a known model (as `models add` would), unless its name or file is known."""
    from smackctl.discover import scan

    s = services(request)
    body = await json_body(request)
    if not isinstance(body.get("dir"), str):
        raise UsageError("`dir`, the folder to look in, is required",
                         "smackctl models discover DIR")  # fmt: skip
    folder = Path(body["dir"]).expanduser().resolve()
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder", "give the folder the GGUF files are in")
    found = await asyncio.to_thread(scan, folder, frozenset(s.registry.models))
    files = {str(s.registry.model_file(m)): m.name for m in s.registry.models.values()}
    added, known = [], []
    for f in found.found:
        if str(f.path) in files:
            known.append(files[str(f.path)])  # by the name it has
            continue
        s.registry.add(f.name, f.path)
        added.append({"name": f.name, "file": str(f.path), "size": f.size, "parts": f.parts,
                      "projector": str(f.projector) if f.projector else None})  # fmt: skip
    return JSONResponse(
        {
            "added": added,
            "known": known,
            "duplicates": [{"file": str(p), "same_as": n} for p, n in found.duplicates],
            "notes": found.notes,
        }
    )


async def remove(request: Request) -> Response:
    await services(request).scheduler.remove_model(request.path_params["name"])
    return JSONResponse({"removed": request.path_params["name"]})


async def load(request: Request) -> Response:
    s = services(request)
    body = await json_body(request)
    m = s.registry.resolve(request.path_params["name"])
    force = bool(body.get("force"))
    if body.get("ttl") is not None:  # `models load --ttl`: this load's own idle time
        keep = keep_alive_of(body["ttl"], request)
        m.keep_alive = NEVER if keep is None else float(keep)
    if body.get("estimate_only"):
        return JSONResponse(await _estimate(request, m))

    def start() -> asyncio.Future[Any]:
        task = asyncio.ensure_future(s.scheduler.ensure_ready(m.name, force=force))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return task

    return stream_task(
        s.events,
        start,
        lambda ev: ev.get("model") == m.name and ev["event"] in ("progress", "state"),
        lambda runner: {"event": "ready", "model": m.name, "pid": runner.pid},
        model=m.name,
    )


async def _estimate(request: Request, m: Any) -> dict[str, Any]:
    """What `models load --estimate-only` prints: what the load needs and what it evicts."""
    s = services(request)
    path = s.registry.model_file(m)
    if not path.is_file():
        raise UsageError(
            f"{m.name} is not on disk yet", f"pull it first: `smackctl models pull {m.name}`"
        )
    est = await asyncio.to_thread(s.loader.estimate, m, path)
    plan = s.scheduler.plan_for(m, est)
    return {
        "model": m.name, "ram": est.ram, "vram": est.vram, "measured": est.measured,
        "weights": est.weights, "kv_cache": est.kv_cache, "compute": est.compute,
        "baseline": est.baseline, "fits": plan.fits, "evict": list(plan.evict),
        "wait": plan.wait, "free_ram": plan.free_ram, "free_vram": plan.free_vram,
        "loaded": m.state == "ready",
    }  # fmt: skip


async def unload(request: Request) -> Response:
    s = services(request)
    name = request.path_params["name"]
    if name == "--all":
        return JSONResponse({"unloaded": await s.scheduler.unload_all()})
    m = s.registry.resolve(name)
    done = await s.scheduler.unload(m.name)
    return JSONResponse({"unloaded": [m.name] if done else []})


async def pull(request: Request) -> Response:
    s = services(request)
    m = s.registry.resolve(request.path_params["name"])
    return stream_task(
        s.events,
        lambda: asyncio.ensure_future(s.loader.pull(m.name)),
        lambda ev: ev.get("model") == m.name and ev["event"] == "progress",
        lambda path: {"event": "pulled", "model": m.name, "path": str(path)},
        model=m.name,
    )


async def bench(request: Request) -> Response:
    s = services(request)
    params = BenchParams.from_body(await json_body(request))
    m = s.bench.check(request.path_params["name"], params)
    return stream_task(
        s.events,
        lambda: asyncio.ensure_future(s.bench.run(m.name, params)),
        lambda ev: ev.get("model") == m.name and ev["event"] in ("bench", "progress"),
        lambda result: {"event": "done", "model": m.name, "result": result},
        model=m.name,
    )


async def bench_history(request: Request) -> Response:
    s = services(request)
    name = request.query_params.get("model")
    limit = whole(request, "limit", 50)
    if name is not None and name in s.registry.known_names():
        name = s.registry.resolve(name).name
    return JSONResponse(s.store.bench_history(name, limit))


ROUTES = [
    Route("/api/models", errors(index), methods=["GET"]),
    Route("/api/models", errors(add), methods=["POST"]),
    Route("/api/models/discover", errors(discover), methods=["POST"]),
    Route("/api/models/{name}", errors(show), methods=["GET"]),
    Route("/api/models/{name}", errors(remove), methods=["DELETE"]),
    Route("/api/models/{name}/load", errors(load), methods=["POST"]),
    Route("/api/models/{name}/pull", errors(pull), methods=["POST"]),
    Route("/api/models/{name}/bench", errors(bench), methods=["POST"]),
    Route("/api/models/{name}/unload", errors(unload), methods=["POST"]),
    Route("/api/bench", errors(bench_history), methods=["GET"]),
]
