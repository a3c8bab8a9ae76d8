"""The supervisor's HTTP API: OpenAI routes, control routes, health.

Every route but ``/health`` needs the bearer token. A ``Host`` header that is not a loopback
name is refused (DNS rebinding), and no CORS header is ever sent, so a web page in a browser
cannot read answers from the supervisor even if it guesses the port.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from smackctl import __version__
from smackctl.errors import SmackError, UsageError

from .bench import Bench, BenchParams
from .capabilities import capabilities
from .extras import COUNT
from .plugins import Plugins
from .proxy import CHAT, Proxy, error_body, new_request_id
from .reload import Reloader
from .scheduler import Scheduler
from .schemas import QUERY_BOUNDS, REQUEST_SCHEMAS
from .streams import sse, stream_task
from .translate import MESSAGES, error_for

__all__ = ["create_app", "Guard"]

log = logging.getLogger("smackctl.api")

MAX_BODY = 16 * 1024 * 1024
_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}


def _err(
    status: int,
    message: str,
    error_type: str,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    return Response(
        error_body(message, error_type, code),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


class Guard:
    """ASGI middleware: Host check, bearer token, body size cap. Cheap on the hot path."""

    def __init__(
        self, app: ASGIApp, token: str | None, extra_hosts: set[str], max_body: int = MAX_BODY
    ) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.hosts = _LOOPBACK_HOSTS | extra_hosts
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")
        hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if hostname.lower() not in self.hosts:
            resp = _err(
                403,
                f"Host {host!r} is not allowed: the supervisor answers loopback "
                "names only (DNS rebinding guard)",
                "forbidden",
                "bad_host",
            )
            await resp(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":  # CORS preflight: never allow a foreign origin
            await _err(403, "cross-origin requests are not allowed", "forbidden", "cors")(
                scope, receive, send
            )
            return
        if self.token is not None and scope["path"] != "/health":
            auth = headers.get(b"authorization", b"")
            # Anthropic's clients send the key as `x-api-key`
            given = auth[7:] if auth[:7].lower() == b"bearer " else headers.get(b"x-api-key", b"")
            if not hmac.compare_digest(given, self.token):
                await _err(
                    401,
                    "missing or wrong API token: send `Authorization: Bearer TOKEN` (or "
                    "`x-api-key: TOKEN`); `smackctl env` prints it",
                    "authentication_error",
                    "invalid_api_key",
                    {"WWW-Authenticate": "Bearer"},
                )(scope, receive, send)
                return
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await _err(
                413,
                f"request body of {int(length)} bytes is over the limit of {self.max_body} bytes",
                "invalid_request_error",
                "body_too_large",
            )(scope, receive, send)
            return
        await self.app(scope, _capped(receive, self.max_body), send)


class BodyTooLarge(Exception):
    pass


def _capped(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def wrapped() -> Any:
        nonlocal seen
        msg = await receive()
        if msg["type"] == "http.request":
            seen += len(msg.get("body", b""))
            if seen > limit:
                raise BodyTooLarge()
        return msg

    return wrapped


def _smack_error(exc: SmackError) -> Response:
    # OpenAI clients show `message` only, so the fix goes in it too; `hint` is for smackctl
    message = exc.message + (f" (fix: {exc.hint})" if exc.hint else "")
    headers = {"Retry-After": "1"} if exc.status == 503 else None
    body = {
        "error": {
            "message": message,
            "type": exc.error_type,
            "code": type(exc).__name__,
            "hint": exc.hint,
        }
    }
    return JSONResponse(body, status_code=exc.status, headers=headers)


Handler = Callable[[Request], Awaitable[Response]]


def _errors(fn: Handler) -> Handler:
    async def wrapper(request: Request) -> Response:
        try:
            return await fn(request)
        except SmackError as exc:
            return _smack_error(exc)
        except BodyTooLarge:
            return _err(
                413,
                f"request body is over the limit of {MAX_BODY} bytes",
                "invalid_request_error",
                "body_too_large",
            )

    return wrapper


def _number(request: Request, name: str, default: float) -> float:
    """A query parameter that must be a number within its QUERY_BOUNDS: else a 400 naming it."""
    low, high = QUERY_BOUNDS[name]
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:  # NaN fails too
        raise UsageError(
            f"query parameter `{name}` must be a number from {low:g} to {high:g}, not {raw[:40]}"
        )
    return value


def _whole(request: Request, name: str, default: int) -> int:
    low, high = (int(b) for b in QUERY_BOUNDS[name])
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.strip().isdigit() or not low <= int(raw) <= high:
        raise UsageError(
            f"query parameter `{name}` must be a whole number from {low} to {high}, not {raw[:40]}"
        )
    return int(raw)


async def _json_body(request: Request, max_depth: int = 100) -> dict[str, Any]:
    """The body as a JSON object. Nesting past ``max_depth`` is refused here (json.loads
    raises RecursionError near 1,000 levels; below that, a later step that walks the body,
    validation or the forwarded copy's json.dumps, could still meet the recursion limit)."""
    raw = await request.body()
    if not raw.strip():
        return {}
    too_deep = UsageError(
        f"request body nests too deeply (more than {max_depth} levels of arrays and objects)",
        "send a flatter JSON object",
    )
    try:
        data = json.loads(raw)
    except RecursionError:
        raise too_deep from None
    except ValueError as exc:
        raise UsageError(
            f"request body is not valid JSON: {exc}",
            "send a JSON object with Content-Type: application/json",
        ) from exc
    if not isinstance(data, dict):
        raise UsageError("request body must be a JSON object", "wrap the fields in {…}")
    below: list[tuple[Any, int]] = [(data, 1)]  # containers only, without recursion
    while below:
        node, depth = below.pop()
        if depth > max_depth:
            raise too_deep
        values = node.values() if isinstance(node, dict) else node
        below += [(v, depth + 1) for v in values if isinstance(v, dict | list)]
    return data


def create_app(
    scheduler: Scheduler,
    *,
    token: str | None,
    extra_hosts: set[str] | None = None,
    on_shutdown_request: Callable[[float, bool], None] | None = None,
) -> ASGIApp:
    from .metrics import Metrics

    metrics = Metrics(scheduler)
    proxy = Proxy(scheduler, metrics)
    bench = Bench(scheduler)
    reloader = Reloader(scheduler)
    started = time.time()

    async def health(request: Request) -> Response:
        return JSONResponse(
            {
                "status": "ok",
                "version": __version__,
                "pid": os.getpid(),
                "accepting": scheduler.accepting,
            }
        )

    async def openai(request: Request) -> Response:
        if request.url.path not in (MESSAGES, COUNT):
            return await openai_shaped(request)
        # Anthropic clients read errors in Anthropic's shape
        try:
            answer = await openai_shaped(request)
        except SmackError as exc:
            answer = _smack_error(exc)
        if answer.status_code < 400 or isinstance(answer, StreamingResponse):
            return answer
        return Response(
            error_for(MESSAGES, answer.status_code, bytes(answer.body)),
            status_code=answer.status_code,
            media_type="application/json",
            headers={k: v for k, v in answer.headers.items() if k.lower() == "retry-after"},
            background=answer.background,
        )

    async def openai_shaped(request: Request) -> Response:
        body = await _json_body(request)
        schema = REQUEST_SCHEMAS[request.url.path]
        try:
            schema.model_validate(body)
        except ValidationError as exc:
            e = exc.errors()[0]
            field = ".".join(str(p) for p in e["loc"]) or "body"
            msg = e["msg"]
            if e["type"] == "extra_forbidden":
                msg = "unknown field; the supervisor refuses fields it does not know"
            return _err(
                400,
                f"invalid field `{field}`: {msg}",
                "invalid_request_error",
                "invalid_" + (str(e["loc"][0]) if e["loc"] else "body"),
            )
        if request.url.path == CHAT:
            applied = await plugins.apply(body)
            if isinstance(applied, Response):
                return applied  # a plugin answered
            body = applied
        no_cache = "no-cache" in request.headers.get("cache-control", "").lower()
        return await proxy.forward(request.url.path, body, new_request_id(), no_cache)

    spec: dict[str, Any] = {}

    async def openapi_route(request: Request) -> Response:
        if not spec:
            from .openapi import openapi

            spec.update(openapi(__version__))
        return JSONResponse(spec)

    async def list_models(request: Request) -> Response:
        data = []
        for m in scheduler.models.values():
            data.append(
                {
                    "id": m.name,
                    "object": "model",
                    "created": int(started),
                    "owned_by": "smackctl",
                    "aliases": list(m.spec.aliases),
                    "state": m.state,
                }
            )
        if scheduler.profile.routing.auto is not None:
            data.append(
                {"id": "auto", "object": "model", "created": int(started),
                 "owned_by": "smackctl", "aliases": [], "state": "routing"}
            )  # fmt: skip
        gw = proxy.gateway.view()
        for d in gw["deployments"]:
            if d["kind"] == "remote":
                data.append(
                    {"id": d["name"], "object": "model", "created": int(started),
                     "owned_by": d["url"], "aliases": [], "state": d["breaker"]["state"]}
                )  # fmt: skip
        for name, g in gw["groups"].items():
            data.append(
                {"id": name, "object": "model", "created": int(started),
                 "owned_by": "smackctl", "aliases": g["aliases"], "state": "group"}
            )  # fmt: skip
        return JSONResponse({"object": "list", "data": data})

    async def events_route(request: Request) -> Response:
        """``GET /api/events`` (SSE): the kept events after ``after`` (an event id, or the
        ``Last-Event-ID`` a reconnecting client sends) and since ``since`` (a unix time),
        then each new one as it happens (``follow=0``: only the kept ones); ``types``: only
        these (comma-separated)."""
        after = _whole(request, "after", int(request.headers.get("last-event-id") or 0))
        since = _number(request, "since", 0.0)
        types = {t for t in request.query_params.get("types", "").split(",") if t}
        follow = bool(_whole(request, "follow", 1))
        return StreamingResponse(
            sse(scheduler.events, after, since, types, follow),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def cache_stats(request: Request) -> Response:
        if proxy.cached.cache is None and not scheduler.store.path.with_name("cache.db").is_file():
            return JSONResponse({"hits": 0, "misses": 0, "entries": 0, "bytes": 0, "models": [],
                                 "path": None})  # fmt: skip
        return JSONResponse(proxy.cached.open().stats())

    async def cache_clear(request: Request) -> Response:
        model = request.query_params.get("model") or None
        if model is not None:
            model = scheduler.resolve(model).name
        return JSONResponse({"cleared": proxy.cached.open().clear(model)})

    async def route(request: Request) -> Response:
        """``POST /api/route``: which model a ``model: auto`` request would go to, and why,
        without running it (``{"prompt": TEXT}`` or a chat request's body)."""
        body = await _json_body(request)
        if isinstance(body.get("prompt"), str) and "messages" not in body:
            body = {"messages": [{"role": "user", "content": body["prompt"]}]}
        t = time.perf_counter()
        decision = await proxy.router.decide(CHAT, body)
        took = (time.perf_counter() - t) * 1e6
        return JSONResponse(
            {"model": decision.model, "reason": decision.reason, "microseconds": round(took, 1)}
        )

    async def backends(request: Request) -> Response:
        return JSONResponse(proxy.gateway.view())

    async def status(request: Request) -> Response:
        return JSONResponse(status_of(str(request.base_url).rstrip("/")))

    def status_of(url: str) -> dict[str, Any]:
        b = scheduler.budget()
        models = [scheduler.model_view(m) for m in scheduler.models.values()]
        used = sum(m.memory()[0] for m in scheduler.models.values() if m.loaded)
        return {
            "pid": os.getpid(),
            "version": __version__,
            "url": url,
            "started_at": started,
            "uptime": time.time() - started,
            "rss": _self_rss(),
            "profile": scheduler.profile.name,
            "switch_phase": scheduler.switch_phase,
            "profile_path": str(scheduler.profile_path) if scheduler.profile_path else None,
            "accepting": scheduler.accepting,
            "memory": {
                "budget_ram": b.ram,
                "budget_vram": b.vram,
                "used_ram": used,
                "free_ram": b.ram - used,
                "max_loaded": b.max_loaded,
            },
            "cpu": scheduler.cores.view(),
            "restoring": scheduler.restoring,
            "warnings": [
                *scheduler.warnings(),
                *proxy.gateway.warnings(),
                *reloader.warnings(),
                *scheduler.registry.scan_notes,  # the models_dir's duplicates, missing parts
            ],
            "models": models,
        }

    plugins = Plugins(
        lambda: {k: v or {} for k, v in scheduler.profile.plugins.items()},
        lambda: status_of(""),
    )

    async def plugins_route(request: Request) -> Response:
        return JSONResponse(plugins.view())

    async def models_index(request: Request) -> Response:
        views = [scheduler.model_view(m) for m in scheduler.models.values()]
        if request.query_params.get("details"):
            from smackctl.gguf import read_info

            for v in views:
                info = None
                if v["on_disk"]:
                    try:
                        info = await asyncio.to_thread(read_info, Path(v["file"]))
                        v["gguf"] = info.as_dict()
                    except SmackError as exc:
                        v["gguf_error"] = exc.message
                v["capabilities"] = capabilities(scheduler.models[v["name"]].spec, info)
        return JSONResponse(views)

    async def model_pull(request: Request) -> Response:
        m = scheduler.resolve(request.path_params["name"])
        return stream_task(
            scheduler,
            lambda: asyncio.ensure_future(scheduler.loader.pull(m.name)),
            lambda ev: ev.get("model") == m.name and ev["event"] == "progress",
            lambda path: {"event": "pulled", "model": m.name, "path": str(path)},
            model=m.name,
        )

    async def model_bench(request: Request) -> Response:
        params = BenchParams.from_body(await _json_body(request))
        m = bench.check(request.path_params["name"], params)
        return stream_task(
            scheduler,
            lambda: asyncio.ensure_future(bench.run(m.name, params)),
            lambda ev: ev.get("model") == m.name and ev["event"] in ("bench", "progress"),
            lambda result: {"event": "done", "model": m.name, "result": result},
            model=m.name,
        )

    async def bench_history(request: Request) -> Response:
        name = request.query_params.get("model")
        limit = _whole(request, "limit", 50)
        if name is not None:
            name = (
                scheduler.resolve(name).name if name in scheduler.registry.known_names() else name
            )
        return JSONResponse(scheduler.store.bench_history(name, limit))

    async def model_show(request: Request) -> Response:
        m = scheduler.resolve(request.path_params["name"])
        view = scheduler.model_view(m)
        path = scheduler.registry.model_file(m)
        info = None
        if path.is_file():
            from smackctl.gguf import read_info

            info = await asyncio.to_thread(read_info, path)
            view["gguf"] = info.as_dict()
        view["capabilities"] = capabilities(m.spec, info)
        return JSONResponse(view)

    async def model_add(request: Request) -> Response:
        body = await _json_body(request)
        path, name = body.get("path"), body.get("name")
        if not isinstance(path, str) or not isinstance(name, str):
            raise UsageError(
                "`path` and `name` are required strings", "smackctl models add PATH --name NAME"
            )
        n_ctx = body.get("n_ctx")
        m = scheduler.registry.add(name, Path(path), n_ctx if isinstance(n_ctx, int) else None)
        return JSONResponse(scheduler.model_view(m), status_code=201)

    async def models_discover(request: Request) -> Response:
        """``POST /api/models/discover {"dir": PATH}``: every GGUF model under the folder
        becomes a known model (as `models add` would), unless its name or file is known."""
        from smackctl.discover import scan

        body = await _json_body(request)
        if not isinstance(body.get("dir"), str):
            raise UsageError("`dir`, the folder to look in, is required",
                             "smackctl models discover DIR")  # fmt: skip
        folder = Path(body["dir"]).expanduser().resolve()
        if not folder.is_dir():
            raise UsageError(f"{folder} is not a folder", "give the folder the GGUF files are in")
        found = await asyncio.to_thread(scan, folder, frozenset(scheduler.models))
        files = {str(scheduler.registry.model_file(m)): m.name for m in scheduler.models.values()}
        added, known = [], []
        for f in found.found:
            if str(f.path) in files:
                known.append(files[str(f.path)])  # by the name it has
                continue
            scheduler.registry.add(f.name, f.path)
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

    async def model_remove(request: Request) -> Response:
        await scheduler.remove_model(request.path_params["name"])
        return JSONResponse({"removed": request.path_params["name"]})

    async def model_load(request: Request) -> Response:
        name = request.path_params["name"]
        body = await _json_body(request)
        m = scheduler.resolve(name)
        force = bool(body.get("force"))
        if body.get("estimate_only"):
            path = scheduler.registry.model_file(m)
            if not path.is_file():
                raise UsageError(
                    f"{m.name} is not on disk yet",
                    f"pull it first: `smackctl models pull {m.name}`",
                )
            est = await asyncio.to_thread(scheduler.loader.estimate, m, path)
            plan = scheduler.plan_for(m, est)
            return JSONResponse(
                {
                    "model": m.name,
                    "ram": est.ram,
                    "vram": est.vram,
                    "measured": est.measured,
                    "weights": est.weights,
                    "kv_cache": est.kv_cache,
                    "compute": est.compute,
                    "baseline": est.baseline,
                    "fits": plan.fits,
                    "evict": list(plan.evict),
                    "wait": plan.wait,
                    "free_ram": plan.free_ram,
                    "free_vram": plan.free_vram,
                    "loaded": m.state == "ready",
                }
            )

        def start() -> asyncio.Future[Any]:
            task = asyncio.ensure_future(scheduler.ensure_ready(m.name, force=force))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            return task

        return stream_task(
            scheduler,
            start,
            lambda ev: ev.get("model") == m.name and ev["event"] in ("progress", "state"),
            lambda runner: {"event": "ready", "model": m.name, "pid": runner.pid},
            model=m.name,
        )

    async def model_unload(request: Request) -> Response:
        name = request.path_params["name"]
        if name == "--all":
            return JSONResponse({"unloaded": await scheduler.unload_all()})
        m = scheduler.resolve(name)
        done = await scheduler.unload(m.name)
        return JSONResponse({"unloaded": [m.name] if done else []})

    async def profiles(request: Request) -> Response:
        return JSONResponse(
            {
                "active": scheduler.profile.name,
                "path": str(scheduler.profile_path) if scheduler.profile_path else None,
                "switch_phase": scheduler.switch_phase,
            }
        )

    async def profile_switch(request: Request) -> Response:
        from smackctl.config import load_profile

        from .switch import plan_for, run_switch

        body = await _json_body(request)
        if not isinstance(body.get("path"), str):
            raise UsageError(
                "`path` of the profile file is required", "smackctl profile switch NAME"
            )
        path = Path(body["path"])
        target = await asyncio.to_thread(load_profile, path)
        if body.get("dry_run"):
            return JSONResponse(plan_for(scheduler, target, path).as_dict())

        def start() -> asyncio.Future[Any]:
            return scheduler.spawn(run_switch(scheduler, target, path), f"switch-{target.name}")

        return stream_task(
            scheduler,
            start,
            lambda ev: ev["event"] in ("switch", "progress", "ready", "unloaded", "error"),
            lambda plan: {"event": "done", "profile": target.name, "plan": plan.as_dict()},
        )

    async def profile_reload(request: Request) -> Response:
        return JSONResponse(await reloader.reload("asked: `smackctl profile reload`"))

    async def metrics_route(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def usage(request: Request) -> Response:
        since = _number(request, "since", 0.0)
        return JSONResponse(scheduler.store.usage(since))

    async def shutdown(request: Request) -> Response:
        body = await _json_body(request)
        timeout = float(body.get("timeout", 30.0))
        force = bool(body.get("force", False))
        if on_shutdown_request is not None:
            on_shutdown_request(timeout, force)
        return JSONResponse({"stopping": True, "pid": os.getpid()}, status_code=202)

    async def logs(request: Request) -> Response:
        model = request.query_params.get("model")
        lines = _whole(request, "lines", 200)
        if model:
            path = scheduler.paths.runner_log(scheduler.resolve(model).name)
        else:
            path = scheduler.paths.supervisor_log
        if not path.is_file():
            return PlainTextResponse("")
        text = await asyncio.to_thread(_tail, path, lines)
        return PlainTextResponse(text)

    async def not_found(request: Request, exc: Exception) -> Response:
        return _err(
            404,
            f"no route {request.method} {request.url.path}",
            "invalid_request_error",
            "not_found",
        )

    async def bad_method(request: Request, exc: Exception) -> Response:
        return _err(
            405,
            f"method {request.method} not allowed on {request.url.path}",
            "invalid_request_error",
            "method_not_allowed",
        )

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/openapi.json", _errors(openapi_route), methods=["GET"]),
        Route("/v1/models", _errors(list_models), methods=["GET"]),
        Route("/v1/chat/completions", _errors(openai), methods=["POST"]),
        Route("/v1/completions", _errors(openai), methods=["POST"]),
        Route("/v1/embeddings", _errors(openai), methods=["POST"]),
        Route("/v1/messages", _errors(openai), methods=["POST"]),
        Route("/v1/responses", _errors(openai), methods=["POST"]),
        Route("/v1/messages/count_tokens", _errors(openai), methods=["POST"]),
        Route("/v1/rerank", _errors(openai), methods=["POST"]),
        Route("/infill", _errors(openai), methods=["POST"]),
        Route("/tokenize", _errors(openai), methods=["POST"]),
        Route("/api/status", _errors(status), methods=["GET"]),
        Route("/api/models", _errors(models_index), methods=["GET"]),
        Route("/api/models", _errors(model_add), methods=["POST"]),
        Route("/api/models/discover", _errors(models_discover), methods=["POST"]),
        Route("/api/models/{name}", _errors(model_show), methods=["GET"]),
        Route("/api/models/{name}", _errors(model_remove), methods=["DELETE"]),
        Route("/api/models/{name}/load", _errors(model_load), methods=["POST"]),
        Route("/api/models/{name}/pull", _errors(model_pull), methods=["POST"]),
        Route("/api/models/{name}/bench", _errors(model_bench), methods=["POST"]),
        Route("/api/bench", _errors(bench_history), methods=["GET"]),
        Route("/api/models/{name}/unload", _errors(model_unload), methods=["POST"]),
        Route("/api/profiles", _errors(profiles), methods=["GET"]),
        Route("/api/profiles/switch", _errors(profile_switch), methods=["POST"]),
        Route("/api/profiles/reload", _errors(profile_reload), methods=["POST"]),
        Route("/api/shutdown", _errors(shutdown), methods=["POST"]),
        Route("/api/usage", _errors(usage), methods=["GET"]),
        Route("/api/backends", _errors(backends), methods=["GET"]),
        Route("/api/route", _errors(route), methods=["POST"]),
        Route("/api/cache", _errors(cache_stats), methods=["GET"]),
        Route("/api/cache", _errors(cache_clear), methods=["DELETE"]),
        Route("/api/events", _errors(events_route), methods=["GET"]),
        Route("/api/plugins", _errors(plugins_route), methods=["GET"]),
        Route("/metrics", _errors(metrics_route), methods=["GET"]),
        Route("/api/logs", _errors(logs), methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: bad_method})
    app.state.proxy = proxy
    app.state.reloader = reloader
    return Guard(app, token, extra_hosts or set())


def _self_rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _tail(path: Path, lines: int) -> str:
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 256 * 1024))
        text = f.read().decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:]) + "\n"
