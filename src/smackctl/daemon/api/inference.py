"""The routes of the APIs clients speak: OpenAI's (chat, completions, embeddings, responses,
models), Anthropic's Messages, and llama-server's own (rerank, infill, tokenize). A request
is validated, given to the plugins (a chat), and handed to the gateway."""

from __future__ import annotations

import asyncio
import math

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from smackctl.daemon import prefs
from smackctl.daemon.extras import COUNT
from smackctl.daemon.fleet.worker import FROM_FLEET
from smackctl.daemon.gateway import Call
from smackctl.daemon.keys import OPERATOR, PRIORITIES
from smackctl.daemon.schemas import REQUEST_SCHEMAS
from smackctl.daemon.slots import DEADLINE, PRIORITY
from smackctl.daemon.translate import MESSAGES, error_for
from smackctl.errors import Forbidden, SmackError, UsageError
from smackctl.wire import new_request_id

from .common import caller, errors, invalid, json_body, keep_alive_of, services, smack_error

__all__ = ["INFERENCE_PATHS", "ROUTES"]

CHAT = "/v1/chat/completions"
#: the longest deadline a request may ask for (a day)
MAX_DEADLINE = 86400.0


async def inference(request: Request) -> Response:
    if request.url.path not in (MESSAGES, COUNT):
        return await _openai_shaped(request)
    # Anthropic's clients read errors in Anthropic's shape
    try:
        answer = await _openai_shaped(request)
    except SmackError as exc:
        request.state.logged = getattr(exc, "logged", False)
        answer = smack_error(exc)
    if answer.status_code < 400 or isinstance(answer, StreamingResponse):
        return answer
    return Response(
        error_for(MESSAGES, answer.status_code, bytes(answer.body)),
        status_code=answer.status_code,
        media_type="application/json",
        headers={
            k: v
            for k, v in answer.headers.items()
            if k.lower() == "retry-after" or k.lower().startswith("x-ratelimit-")
        },
        background=answer.background,
    )


async def _openai_shaped(request: Request) -> Response:
    s = services(request)
    body = await json_body(request)
    keep_alive = keep_alive_of(body.pop("keep_alive", None), request)
    prefs.apply(body, caller(request).preferences, request.headers.get("x-smackctl-context"),
                request.url.path)  # fmt: skip
    if isinstance(body.get("model"), str):
        request.state.model = body["model"][:100]  # named in a refusal's log line
    if (refusal := invalid(REQUEST_SCHEMAS[request.url.path], body)) is not None:
        return refusal
    _may_use(request, body.get("model"))
    _priority_and_deadline(request)  # a bad header is refused before the key is counted
    key = caller(request)
    from_fleet = request.scope["state"].get(FROM_FLEET, False)
    if s.fleet is not None and key is not OPERATOR and not from_fleet:
        await s.fleet.shared.admit(key.name, key.limits)  # the fleet's one count (JetStream)
    _admit(request)
    if request.url.path == CHAT:
        applied = await s.plugins.apply(body)
        if isinstance(applied, Response):
            return applied  # a plugin answered
        body = applied
    no_cache = "no-cache" in request.headers.get("cache-control", "").lower()
    call = Call(request.url.path, body, new_request_id(), no_cache, keep_alive)
    model = body.get("model")
    activity, rid = s.usage.activity, call.request_id
    activity.begin(rid, getattr(request.state, "model", None), request.url.path,
                   None if key is OPERATOR else key.name)  # fmt: skip
    request.scope["state"]["abandon"] = lambda status: activity.abandon(rid, status)
    request.scope["state"]["activity_id"] = rid  # a refusal after this is counted as it
    fleet = s.fleet
    if fleet is not None and not from_fleet and fleet.front.takes(request.url.path, model):
        return await fleet.front.forward(request.url.path, body, rid)
    return await s.gateway.handle(call)


def _may_use(request: Request, model: object) -> None:
    """A key with a list of models asks for one of them (by name, alias or group; a local
    model by any of its names), or is refused with a 403 that lists its own."""
    key = caller(request)
    if "*" in key.models:
        return
    s = services(request)
    name = model if isinstance(model, str) and model else s.scheduler.profile.routing.default_model
    names = [name or ""]
    if name and name in s.registry.known_names():
        names += s.registry.names_of(s.registry.resolve(name))
    if not key.may_use(*names):
        raise Forbidden(
            f"key {key.name} may not use model {name!r}",
            f"use one of its models: {', '.join(key.models)}",
        )


def _admit(request: Request) -> None:
    """A key with limits is let in by its counters (a 429 with when to ask again), and its
    request counted in flight until the door sees its answer over."""
    key = caller(request)
    if key is OPERATOR or not key.limits.any():
        return
    meter = services(request).usage.meter
    if meter is None:
        return
    meter.admit(key.name, key.limits, key.created)
    request.scope["state"]["release"] = lambda: meter.release(key.name)


def _priority_and_deadline(request: Request) -> None:
    """The request's priority (``X-Smackctl-Priority``, within its key's: a batch key's
    requests stay batch) and deadline (``X-Smackctl-Deadline``: seconds from now)."""
    asked = request.headers.get("x-smackctl-priority")
    if asked is not None and asked not in PRIORITIES:
        raise UsageError(
            f"X-Smackctl-Priority must be interactive or batch, not {asked[:40]}",
            "send X-Smackctl-Priority: batch for work that may wait",
        )
    if caller(request).priority == "batch" or asked == "batch":
        PRIORITY.set("batch")
    raw = request.headers.get("x-smackctl-deadline")
    if raw is not None:
        try:
            seconds = float(raw)
        except ValueError:
            seconds = math.nan
        if not 0 < seconds <= MAX_DEADLINE:  # NaN too
            raise UsageError(
                f"X-Smackctl-Deadline must be seconds from now, above 0 and at most "
                f"{MAX_DEADLINE:g}, not {raw[:40]}",
                "send X-Smackctl-Deadline: 30 for an answer within 30 seconds",
            )
        DEADLINE.set(asyncio.get_running_loop().time() + seconds)


async def list_models(request: Request) -> Response:
    s = services(request)
    created = int(s.started)

    def entry(name: str, owner: str, aliases: list[str], state: str) -> dict[str, object]:
        return {"id": name, "object": "model", "created": created, "owned_by": owner,
                "aliases": aliases, "state": state}  # fmt: skip

    data = [
        entry(m.name, "smackctl", list(m.spec.aliases), m.state) for m in s.registry.models.values()
    ]
    known_as = {m.name: s.registry.names_of(m) for m in s.registry.models.values()}
    if s.scheduler.profile.routing.auto is not None:
        data.append(entry("auto", "smackctl", [], "routing"))
    view = s.deployments.view()
    for d in view["deployments"]:
        if d["kind"] == "remote":
            data.append(entry(d["name"], d["url"], [], d["breaker"]["state"]))
    for name, g in view["groups"].items():
        data.append(entry(name, "smackctl", g["aliases"], "group"))
    if s.fleet is not None:  # what the fleet's members serve that this one does not
        ours = {str(d["id"]) for d in data} | {a for d in data for a in d["aliases"]}  # type: ignore[attr-defined]
        for name, members in sorted(s.fleet.members.models().items()):
            if name not in ours:
                data.append(entry(name, "fleet:" + ",".join(sorted(members)), [], "fleet"))
    key = caller(request)  # a key sees the models it may use
    data = [d for d in data if key.may_use(*known_as.get(str(d["id"]), [str(d["id"])]))]
    return JSONResponse({"object": "list", "data": data})


#: the POST routes of the APIs clients speak: what a key of scope ``inference`` reaches
INFERENCE_PATHS = (
    CHAT, "/v1/completions", "/v1/embeddings", MESSAGES, "/v1/responses", COUNT, "/v1/rerank",
    "/infill", "/tokenize",
)  # fmt: skip

ROUTES = [
    Route("/v1/models", errors(list_models), methods=["GET"]),
    *(Route(path, errors(inference), methods=["POST"]) for path in INFERENCE_PATHS),
]
