"""The supervisor's own routes: health, status, metrics, usage, logs, the event stream, the
response cache, the deployments, the plugins, the OpenAPI description, and shutdown."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from smackctl import __version__
from smackctl.daemon.schemas import QUERY_BOUNDS
from smackctl.daemon.status import status_view
from smackctl.daemon.streams import event_stream
from smackctl.errors import Forbidden, UsageError
from smackctl.wire import usage_csv

from .common import caller, errors, json_body, number, services, whole

__all__ = ["ROUTES"]


async def health(request: Request) -> Response:
    return JSONResponse(
        {
            "status": "ok",
            "version": __version__,
            "pid": os.getpid(),
            "accepting": services(request).scheduler.accepting,
        }
    )


async def status(request: Request) -> Response:
    return JSONResponse(status_view(services(request), str(request.base_url).rstrip("/")))


async def metrics(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(services(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def usage(request: Request) -> Response:
    """Per day and model (``?by=key``: per key); a key that is not an admin's sees its own."""
    by = request.query_params.get("by", "model")
    if by not in ("model", "key", "deployment"):
        raise UsageError(
            f"query parameter `by` must be `model`, `key` or `deployment`, not {by[:40]}"
        )
    bucket = request.query_params.get("bucket", "day")
    if bucket not in ("day", "hour"):
        raise UsageError(f"query parameter `bucket` must be `day` or `hour`, not {bucket[:40]}")
    key = caller(request)
    own = request.query_params.get("key") or None  # one key's (an admin may ask any)
    if not key.may("admin"):
        if own not in (None, key.name):
            raise Forbidden(
                f"key {key.name} may see its own usage only, not key {own[:64]}'s",
                "ask an admin, or leave out `key`",
            )
        own = key.name
    rows = services(request).store.usage(number(request, "since", 0.0), by, own, bucket)
    if request.query_params.get("format") == "csv":
        return PlainTextResponse(
            usage_csv(rows, by, bucket), media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="usage-by-{by}.csv"'},
        )  # fmt: skip
    return JSONResponse(rows)


async def fleet(request: Request) -> Response:
    """``GET /api/fleet``: this member, its connection, and the members heard."""
    joined = services(request).fleet
    return JSONResponse({"enabled": False} if joined is None else {"enabled": True,
                        **joined.view()})  # fmt: skip


async def activity(request: Request) -> Response:
    """``GET /api/activity``: the requests in flight and the last ``limit`` (a key: its own)."""
    key = caller(request)
    own = None if key.may("metrics") else key.name
    return JSONResponse(services(request).usage.activity.view(whole(request, "limit", 300), own))


async def logs(request: Request) -> Response:
    s = services(request)
    model = request.query_params.get("model")
    lines = whole(request, "lines", 200)
    if model:
        path = s.scheduler.paths.runner_log(s.registry.resolve(model).name)
    else:
        path = s.scheduler.paths.supervisor_log
    if not path.is_file():
        return PlainTextResponse("")
    return PlainTextResponse(await asyncio.to_thread(_tail, path, lines))


def _tail(path: Path, lines: int) -> str:
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 256 * 1024))
        text = f.read().decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:]) + "\n"


async def events(request: Request) -> Response:
    """``GET /api/events`` (SSE): the kept events after ``after`` (an event id, or the
    ``Last-Event-ID`` a reconnecting client sends) and since ``since`` (a unix time), then
    each new one as it happens (``follow=0``: only the kept ones); ``types``: only these
    (comma-separated)."""
    last = request.headers.get("last-event-id", "").strip()
    top = QUERY_BOUNDS["after"][1]
    if last and not (last.isascii() and last.isdigit() and int(last) <= top):
        # int() of it was a 500: a client's header is input like any other
        raise UsageError(
            "header `Last-Event-ID` must be an event id (a whole number), "
            f"not {json.dumps(last[:40])}",
            "send the `id:` of the last event received, or no Last-Event-ID header",
        )
    after = whole(request, "after", int(last or 0))
    since = number(request, "since", 0.0)
    types = {t for t in request.query_params.get("types", "").split(",") if t}
    follow = bool(whole(request, "follow", 1))
    return StreamingResponse(
        event_stream(services(request).events, after, since, types, follow),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def cache_stats(request: Request) -> Response:
    cached = services(request).cached
    if cached.cache is None and not cached.path.is_file():
        return JSONResponse({"hits": 0, "misses": 0, "entries": 0, "bytes": 0, "models": [],
                             "path": None})  # fmt: skip
    return JSONResponse(cached.open().stats())


async def cache_clear(request: Request) -> Response:
    s = services(request)
    model = request.query_params.get("model") or None
    if model is not None:
        model = s.registry.resolve(model).name
    return JSONResponse(await s.cached.clear(model))


async def backends(request: Request) -> Response:
    return JSONResponse(services(request).deployments.view())


async def plugins(request: Request) -> Response:
    return JSONResponse(services(request).plugins.view())


_SPEC: dict[str, Any] = {}


async def openapi(request: Request) -> Response:
    if not _SPEC:
        from smackctl.daemon.openapi import openapi as describe

        _SPEC.update(describe(__version__))
    return JSONResponse(_SPEC)


async def shutdown(request: Request) -> Response:
    body = await json_body(request)
    timeout, force = body.get("timeout", 30.0), body.get("force", False)
    # float() of "abc" or a list was a 500, and NaN or -1 reached the drain: refuse them
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 <= timeout <= 86_400  # NaN fails too
    ):
        raise UsageError(
            "`timeout` must be a number of seconds from 0 to 86400, "
            f"not {json.dumps(timeout)[:40]}",
            'send e.g. {"timeout": 30}, or `smackctl stop --timeout 30`',
        )
    if not isinstance(force, bool):
        raise UsageError(
            f"`force` must be true or false, not {json.dumps(force)[:40]}",
            'send {"force": true} or `smackctl stop --force`',
        )
    services(request).stop(float(timeout), force)
    return JSONResponse({"stopping": True, "pid": os.getpid()}, status_code=202)


ROUTES = [
    Route("/health", health, methods=["GET"]),
    Route("/openapi.json", errors(openapi), methods=["GET"]),
    Route("/api/status", errors(status), methods=["GET"]),
    Route("/api/shutdown", errors(shutdown), methods=["POST"]),
    Route("/api/usage", errors(usage), methods=["GET"]),
    Route("/api/activity", errors(activity), methods=["GET"]),
    Route("/api/fleet", errors(fleet), methods=["GET"]),
    Route("/api/backends", errors(backends), methods=["GET"]),
    Route("/api/cache", errors(cache_stats), methods=["GET"]),
    Route("/api/cache", errors(cache_clear), methods=["DELETE"]),
    Route("/api/events", errors(events), methods=["GET"]),
    Route("/api/plugins", errors(plugins), methods=["GET"]),
    Route("/metrics", errors(metrics), methods=["GET"]),
    Route("/api/logs", errors(logs), methods=["GET"]),
]
