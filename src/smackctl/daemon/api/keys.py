"""``/api/keys``: the keys beside the operator's token (``keys.py``), and ``/api/audit``, what
admins changed. Admin scope (the door says so); a key's token is in an answer once, when it
is made or rotated."""

from __future__ import annotations

import difflib
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from smackctl.daemon import prefs
from smackctl.daemon.keys import SCOPES, Key, expiry
from smackctl.daemon.limits import Limits
from smackctl.daemon.startup import new_token
from smackctl.errors import Forbidden, UsageError

from .common import caller, errors, json_body, number, services

__all__ = ["ROUTES"]

DAY = 86400


async def index(request: Request) -> Response:
    return JSONResponse([k.public() for k in services(request).keys.all()])


async def create(request: Request) -> Response:
    s = services(request)
    body = await json_body(request)
    name, scope = body.get("name"), body.get("scope", "inference")
    models, expires = body.get("models", ["*"]), body.get("expires")
    if isinstance(models, str):
        models = models.split(",")
    if (
        not isinstance(name, str)
        or not isinstance(scope, str)
        or not (isinstance(models, list) and all(isinstance(m, str) for m in models))
        or not (expires is None or isinstance(expires, str))
    ):
        raise UsageError(
            "`name` (a string) is required; `scope` is one of "
            f"{', '.join(SCOPES)}, `models` a list of names, `expires` like 30d",
            "smackctl keys create NAME [--scope inference] [--models a,b] [--expires 30d]",
        )
    limits, priority = body.get("limits") or {}, body.get("priority", "interactive")
    if not isinstance(limits, dict) or not isinstance(priority, str):
        raise UsageError("`limits` is an object (rpm, tpm, …), `priority` a string")
    key, token = s.keys.create(
        name, scope, models, expiry(expires, time.time()), priority, Limits.of(limits)
    )
    return JSONResponse({**key.public(), "key": token, "unknown_models": _unknown(s, key)}, 201)


def _unknown(s: Any, key: Key) -> list[dict[str, str | None]]:
    """The key's model names nothing here answers to (a typo most often; or a model of
    another profile): the key is made as asked, and the CLI says which, with the closest
    name. Known: every name a request may give here (``Registry.askable``), `auto`, and what
    the fleet's members serve."""
    known = {"*", "auto", *s.registry.askable()}
    if s.fleet is not None:
        known.update(s.fleet.members.models())
    return [
        {"name": m, "did_you_mean": next(iter(difflib.get_close_matches(m, known, 1)), None)}
        for m in key.models
        if m not in known
    ]


async def show(request: Request) -> Response:
    """The key, and what it used: today (UTC) and the last 30 days."""
    s = services(request)
    key = s.keys.get(request.path_params["name"])
    view = {**key.public(), "used": used(s.store.usage, key)}
    if key.limits.any() and s.usage.meter is not None:
        view["counters"] = s.usage.meter.used(key.name, key.limits, key.created)
    return JSONResponse(view)


def used(usage: Any, key: Key) -> dict[str, dict[str, int]]:
    now = time.time()
    out = {}
    for label, since in (("today", now // DAY * DAY), ("last_30_days", now - 30 * DAY)):
        rows = usage(since, "key", key.name)
        out[label] = {
            f: sum(r[f] for r in rows) for f in ("requests", "tokens_in", "tokens_out", "errors")
        }
    return out


async def revoke(request: Request) -> Response:
    keys = services(request).keys
    already = keys.get(request.path_params["name"]).revoked is not None
    key = keys.revoke(request.path_params["name"])
    return JSONResponse({**key.public(), "already": already})  # revoked before: said so


async def rotate(request: Request) -> Response:
    key, token = services(request).keys.rotate(request.path_params["name"])
    return JSONResponse({**key.public(), "key": token})


async def rotate_token(request: Request) -> Response:
    """A new operator's token, written where the CLI reads it; the old one gets 401 from now."""
    s = services(request)
    if s.operator.token is None:
        raise UsageError(
            "this supervisor runs without a token (--no-auth)", "start it without --no-auth"
        )
    token = new_token(s.scheduler.paths)
    s.operator.token = token.encode()
    return JSONResponse({"name": "operator", "key": token})


def _own(request: Request) -> Key:
    """The key named in the path: the caller's own, or any for an admin."""
    name, who = request.path_params["name"], caller(request)
    if not who.may("admin") and name != who.name:
        raise Forbidden(
            f"key {who.name} may read and set its own preferences only, not {name}'s",
            f"use /api/keys/{who.name}/preferences",
        )
    return services(request).keys.get(name)


async def preferences(request: Request) -> Response:
    return JSONResponse(_own(request).preferences)


async def prefer(request: Request) -> Response:
    key = _own(request)
    wanted = prefs.check(await json_body(request))
    return JSONResponse(services(request).keys.prefer(key.name, wanted).preferences)


async def export(request: Request) -> Response:
    """Every key as `config export` writes it (digests: no key can be read back from one)."""
    return JSONResponse(services(request).keys.exported())


async def import_keys(request: Request) -> Response:
    """``{"keys": [...], "dry_run": bool}``: what would change (new, changed, same), and,
    unless a dry run, the change made; nothing is applied unless every key is valid."""
    s = services(request)
    body = await json_body(request)
    plan = s.keys.plan_import(body.get("keys"))
    if not body.get("dry_run"):
        s.keys.apply_import(plan)
    return JSONResponse([{"name": name, "change": what} for name, what, _ in plan])


async def audit(request: Request) -> Response:
    since = number(request, "since", 0.0)
    return JSONResponse(services(request).store.audit_log(since))


ROUTES = [
    Route("/api/keys", errors(index), methods=["GET"]),
    Route("/api/keys", errors(create), methods=["POST"]),
    Route("/api/keys/export", errors(export), methods=["GET"]),
    Route("/api/keys/import", errors(import_keys), methods=["POST"]),
    Route("/api/keys/{name}", errors(show), methods=["GET"]),
    Route("/api/keys/{name}", errors(revoke), methods=["DELETE"]),
    Route("/api/keys/{name}/rotate", errors(rotate), methods=["POST"]),
    Route("/api/keys/{name}/preferences", errors(preferences), methods=["GET"]),
    Route("/api/keys/{name}/preferences", errors(prefer), methods=["PUT"]),
    Route("/api/audit", errors(audit), methods=["GET"]),
    Route("/api/token/rotate", errors(rotate_token), methods=["POST"]),
]
