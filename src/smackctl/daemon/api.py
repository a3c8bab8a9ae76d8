"""The supervisor's HTTP API: OpenAI routes, control routes, health.

Every route but ``/health`` needs the bearer token. A ``Host`` header that is not a loopback
name is refused (DNS rebinding), and no CORS header is ever sent, so a web page in a browser
cannot read answers from the supervisor even if it guesses the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
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
from smackctl.config import parse_keep_alive
from smackctl.errors import SmackError, UsageError

from .bench import Bench, BenchParams
from .capabilities import capabilities
from .extras import COUNT
from .plugins import Plugins
from .proxy import CHAT, Proxy, error_body, new_request_id
from .registry import NEVER
from .reload import Reloader
from .scheduler import Scheduler
from .schemas import QUERY_BOUNDS, REQUEST_SCHEMAS
from .streams import sse, stream_task
from .translate import MESSAGES, error_for

__all__ = ["create_app", "Guard"]

log = logging.getLogger("smackctl.api")
requests_log = logging.getLogger("smackctl.requests")

MAX_BODY = 16 * 1024 * 1024
#: seconds a request's whole body may take to arrive (a client that sends a byte now and then
#: would hold the request, its memory and its connection for good)
BODY_TIMEOUT = 60.0
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
    """ASGI middleware: Host check, bearer token, body size cap. Cheap on the hot path.

    Without a token (``--no-auth``) a web page could still make a browser send "simple"
    requests (a POST of ``text/plain``, no preflight) to the supervisor: such a request that
    says it comes from another origin (``Origin``, ``Sec-Fetch-Site: cross-site``) is
    refused, and a POST must be ``application/json``, which no page can send without a
    preflight, and preflights are refused."""

    def __init__(
        self,
        app: ASGIApp,
        token: str | None,
        extra_hosts: set[str],
        max_body: int = MAX_BODY,
        body_timeout: float = BODY_TIMEOUT,
        profile_hosts: Callable[[], tuple[str, ...]] = tuple,
        on_reject: Rejections | None = None,
    ) -> None:
        """``extra_hosts``: Host names admitted besides loopback ones (a LAN bind's own, the
        ``--allowed-host`` ones); ``profile_hosts``: the active profile's ``allowed_hosts``."""
        self.app = app
        self.token = token.encode() if token else None
        self.hosts = _LOOPBACK_HOSTS | {h.lower() for h in extra_hosts}
        self.max_body = max_body
        self.body_timeout = body_timeout
        self._profile_hosts = profile_hosts
        self._reject = on_reject
        self._from_profile: tuple[tuple[str, ...], frozenset[str]] = ((), frozenset())

    def _allowed(self, hostname: str) -> bool:
        if hostname in self.hosts:
            return True
        names = self._profile_hosts()
        if names is not self._from_profile[0]:  # a new profile: its names, once
            self._from_profile = (names, frozenset(n.lower() for n in names))
        return hostname in self._from_profile[1]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        refusal = self._refusal(scope, headers)
        if refusal is None:
            await self.app(scope, _capped(receive, self.max_body, self.body_timeout), send)
            return
        if self._reject is not None:
            message = json.loads(bytes(refusal.body))["error"]["message"]
            self._reject(scope["path"], refusal.status_code, message)
        await refusal(scope, receive, send)

    def _refusal(self, scope: Scope, headers: dict[bytes, bytes]) -> Response | None:
        """The answer to a request refused at the door, or None to let it in."""
        host = headers.get(b"host", b"").decode("latin-1")
        hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if not self._allowed(hostname.lower()):
            return _err(
                403,
                f"Host '{host}' is not a name this supervisor answers to (DNS rebinding "
                "guard); to allow it: `smackctl start --allowed-host NAME`, "
                "SMACKCTL_ALLOWED_HOSTS, or `allowed_hosts:` in the profile",
                "forbidden",
                "bad_host",
            )
        if scope["method"] == "OPTIONS":  # CORS preflight: never allow a foreign origin
            return _err(403, "cross-origin requests are not allowed", "forbidden", "cors")
        if self.token is None:
            if (cross := self._cross_site(scope["method"], headers, host)) is not None:
                return cross
        elif scope["path"] != "/health":
            auth = headers.get(b"authorization", b"")
            # Anthropic's clients send the key as `x-api-key`
            given = auth[7:] if auth[:7].lower() == b"bearer " else headers.get(b"x-api-key", b"")
            if not hmac.compare_digest(given, self.token):
                return _err(
                    401,
                    "missing or wrong API token: send `Authorization: Bearer TOKEN` (or "
                    "`x-api-key: TOKEN`); `smackctl env` prints it",
                    "authentication_error",
                    "invalid_api_key",
                    {"WWW-Authenticate": "Bearer"},
                )
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return _err(
                413,
                f"request body of {int(length)} bytes is over the limit of {self.max_body} bytes",
                "invalid_request_error",
                "body_too_large",
            )
        return None

    def _cross_site(self, method: str, headers: dict[bytes, bytes], host: str) -> Response | None:
        """The refusal of a request a web page of another origin made a browser send."""
        origin = headers.get(b"origin", b"").decode("latin-1")
        site = headers.get(b"sec-fetch-site", b"").lower()
        if site == b"cross-site" or (origin and not self._same_origin(origin, host)):
            return _err(
                403,
                f"a request from another origin ({origin or 'a cross-site page'}) is not "
                "allowed: without a token the supervisor answers its own clients only",
                "forbidden",
                "cross_origin",
            )
        kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if method == "POST" and kind != b"application/json":
            return _err(
                415,
                "a POST to the supervisor must be sent as `Content-Type: application/json`",
                "invalid_request_error",
                "unsupported_media_type",
            )
        return None

    def _same_origin(self, origin: str, host: str) -> bool:
        """``Origin`` names this supervisor: an allowed host name and the port asked."""
        from urllib.parse import urlsplit

        try:
            o = urlsplit(origin)
            port = o.port
        except ValueError:
            return False
        asked = host.rsplit(":", 1)[1] if ":" in host and not host.endswith("]") else None
        return (o.hostname or "").lower() in self.hosts and str(port) == str(asked)


class BodyTooLarge(Exception):
    pass


class BodyTooSlow(Exception):
    def __init__(self, timeout: float) -> None:
        super().__init__(timeout)
        self.timeout = timeout


def _capped(receive: Receive, limit: int, timeout: float = BODY_TIMEOUT) -> Receive:
    seen = 0
    deadline: float | None = None
    done = False

    async def wrapped() -> Any:
        nonlocal seen, deadline, done
        if done:  # the body is in; a stream's wait for the client's disconnect has no limit
            return await receive()
        loop = asyncio.get_running_loop()
        deadline = deadline or loop.time() + timeout
        try:
            msg = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            raise BodyTooSlow(timeout) from None
        if msg["type"] == "http.request":
            seen += len(msg.get("body", b""))
            if seen > limit:
                raise BodyTooLarge()
            done = not msg.get("more_body", False)
        else:
            done = True
        return msg

    return wrapped


def _smack_error(exc: SmackError) -> Response:
    # OpenAI clients show `message` only, so the fix goes in it too; `hint` is for smackctl
    message = exc.message + (f" (fix: {exc.hint})" if exc.hint else "")
    wait = exc.retry_after if exc.retry_after is not None else 1 if exc.status == 503 else None
    headers = {"Retry-After": str(max(1, math.ceil(wait)))} if wait is not None else None
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

#: the routes whose requests are counted in the usage log (inference), refused ones too
_COUNTED = ("/v1/", "/infill", "/tokenize")


class Rejections:
    """Every refused request in the log, one line: status, route, model, the reason (the
    error's message: never a body or a secret); an inference route's refusal is also a row
    of the usage log, so `smackctl usage` counts it as an error."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def __call__(self, route: str, status: int, reason: str, model: str | None = None) -> None:
        request_id = new_request_id()
        reason = " ".join(reason.split())[:300]
        requests_log.info(
            "refused id=%s model=%s route=%s status=%d reason=%s",
            request_id,
            model or "-",
            route,
            status,
            reason,
        )
        if route.startswith(_COUNTED):
            with contextlib.suppress(Exception):
                self.store.log_request(model or "-", route, status, None, None, 0.0, request_id)

    def answer(self, request: Request, answer: Response) -> None:
        reason = ""
        with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
            reason = json.loads(bytes(answer.body))["error"]["message"]
        model = getattr(request.state, "model", None) or request.path_params.get("name")
        self(request.url.path, answer.status_code, reason or "(no reason)", model)


def _errors(fn: Handler, reject: Rejections | None = None) -> Handler:
    """SmackError and body faults as error answers; ``reject``: every refusal not logged on the
    way (by the proxy) is logged and counted."""

    async def wrapper(request: Request) -> Response:
        answer = await _answer(request)
        if reject is not None and answer.status_code >= 400 and not request.state.logged:
            reject.answer(request, answer)
        return answer

    async def _answer(request: Request) -> Response:
        request.state.logged = False
        try:
            return await fn(request)
        except SmackError as exc:
            request.state.logged = getattr(exc, "logged", False)
            return _smack_error(exc)
        except BodyTooLarge:
            return _err(
                413,
                f"request body is over the limit of {MAX_BODY} bytes",
                "invalid_request_error",
                "body_too_large",
            )
        except BodyTooSlow as exc:
            return _err(
                408,
                f"the request's body did not arrive within {exc.timeout:g}s",
                "invalid_request_error",
                "body_timeout",
            )

    return wrapper


#: what `models add` may set besides the path (the rest of an entry is the profile's to say)
_ADDABLE = ("n_ctx", "ttl", "aliases", "chat_format", "backend", "threads", "parallel")

#: ``keep_alive`` not given (None means "keep it loaded")
KEEP = object()


def _keep_alive(value: object, request: Request) -> object:
    """A request's ``keep_alive`` (Ollama's clients send it in the body) or its header
    ``X-Smackctl-Keep-Alive``: seconds idle before the model is unloaded (None: never), or
    ``KEEP`` when neither says."""
    if value is None:
        value = request.headers.get("x-smackctl-keep-alive")
    if value is None:
        return KEEP
    try:
        return parse_keep_alive(value)
    except ValueError as exc:
        raise UsageError(str(exc), "send keep_alive as seconds, 5m, -1 or 0") from None


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
    if not (raw.strip().isascii() and raw.strip().isdigit()) or not low <= int(raw) <= high:
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
    body_timeout: float = BODY_TIMEOUT,
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
            request.state.logged = getattr(exc, "logged", False)
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
        keep_alive = _keep_alive(body.pop("keep_alive", None), request)
        if isinstance(body.get("model"), str):
            request.state.model = body["model"][:100]  # named in a refusal's log line
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
        return await proxy.forward(request.url.path, body, new_request_id(), no_cache, keep_alive)

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
        last = request.headers.get("last-event-id", "").strip()
        top = QUERY_BOUNDS["after"][1]
        if last and not (last.isascii() and last.isdigit() and int(last) <= top):
            # int() of it was a 500: a client's header is input like any other
            raise UsageError(
                "header `Last-Event-ID` must be an event id (a whole number), "
                f"not {json.dumps(last[:40])}",
                "send the `id:` of the last event received, or no Last-Event-ID header",
            )
        after = _whole(request, "after", int(last or 0))
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
        settings = {k: body[k] for k in _ADDABLE if body.get(k) is not None}
        m = scheduler.registry.add(name, Path(path), settings)
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
        if body.get("ttl") is not None:  # `models load --ttl`: this load's own idle time
            keep = _keep_alive(body["ttl"], request)
            m.keep_alive = NEVER if keep is None else float(keep)  # type: ignore[arg-type]
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
                # what a request that names no model gets, and the sampling it is given
                "default_model": scheduler.profile.routing.default_model,
                "defaults": scheduler.profile.defaults.model_dump(exclude_none=True),
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
        if on_shutdown_request is not None:
            on_shutdown_request(float(timeout), force)
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

    rejections = Rejections(scheduler.store)

    def E(fn: Handler) -> Handler:  # noqa: N802 - a short name for the table below
        return _errors(fn, rejections)

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/openapi.json", E(openapi_route), methods=["GET"]),
        Route("/v1/models", E(list_models), methods=["GET"]),
        Route("/v1/chat/completions", E(openai), methods=["POST"]),
        Route("/v1/completions", E(openai), methods=["POST"]),
        Route("/v1/embeddings", E(openai), methods=["POST"]),
        Route("/v1/messages", E(openai), methods=["POST"]),
        Route("/v1/responses", E(openai), methods=["POST"]),
        Route("/v1/messages/count_tokens", E(openai), methods=["POST"]),
        Route("/v1/rerank", E(openai), methods=["POST"]),
        Route("/infill", E(openai), methods=["POST"]),
        Route("/tokenize", E(openai), methods=["POST"]),
        Route("/api/status", E(status), methods=["GET"]),
        Route("/api/models", E(models_index), methods=["GET"]),
        Route("/api/models", E(model_add), methods=["POST"]),
        Route("/api/models/discover", E(models_discover), methods=["POST"]),
        Route("/api/models/{name}", E(model_show), methods=["GET"]),
        Route("/api/models/{name}", E(model_remove), methods=["DELETE"]),
        Route("/api/models/{name}/load", E(model_load), methods=["POST"]),
        Route("/api/models/{name}/pull", E(model_pull), methods=["POST"]),
        Route("/api/models/{name}/bench", E(model_bench), methods=["POST"]),
        Route("/api/bench", E(bench_history), methods=["GET"]),
        Route("/api/models/{name}/unload", E(model_unload), methods=["POST"]),
        Route("/api/profiles", E(profiles), methods=["GET"]),
        Route("/api/profiles/switch", E(profile_switch), methods=["POST"]),
        Route("/api/profiles/reload", E(profile_reload), methods=["POST"]),
        Route("/api/shutdown", E(shutdown), methods=["POST"]),
        Route("/api/usage", E(usage), methods=["GET"]),
        Route("/api/backends", E(backends), methods=["GET"]),
        Route("/api/route", E(route), methods=["POST"]),
        Route("/api/cache", E(cache_stats), methods=["GET"]),
        Route("/api/cache", E(cache_clear), methods=["DELETE"]),
        Route("/api/events", E(events_route), methods=["GET"]),
        Route("/api/plugins", E(plugins_route), methods=["GET"]),
        Route("/metrics", E(metrics_route), methods=["GET"]),
        Route("/api/logs", E(logs), methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: bad_method})
    app.state.proxy = proxy
    app.state.reloader = reloader
    return Guard(
        app,
        token,
        extra_hosts or set(),
        body_timeout=body_timeout,
        profile_hosts=lambda: scheduler.profile.allowed_hosts,
        on_reject=rejections,
    )


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
