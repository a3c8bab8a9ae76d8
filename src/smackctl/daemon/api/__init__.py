"""The supervisor's HTTP API, by noun: ``inference`` (the APIs clients speak), ``models``,
``profiles``, ``ops`` (the supervisor's own routes); ``guard`` at the door, ``common`` for
what the routes share. Each module's ``ROUTES`` is a plain table: listing the routes needs
no scheduler. ``create_app`` only assembles them with the services and the guard.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp

from smackctl.daemon.keys import Key, Operator
from smackctl.daemon.ui import live, pages
from smackctl.wire import new_request_id

from . import inference, keys, models, ops, profiles
from .common import err
from .guard import BODY_TIMEOUT, Guard

if TYPE_CHECKING:
    from smackctl.daemon.services import Services

__all__ = ["BODY_TIMEOUT", "ROUTES", "Guard", "create_app"]

_audit_log = logging.getLogger("smackctl.audit")

ROUTES: list[BaseRoute] = [
    *ops.ROUTES, *inference.ROUTES, *models.ROUTES, *profiles.ROUTES, *keys.ROUTES,
    *pages.ROUTES, *live.ROUTES,
]  # fmt: skip


async def _not_found(request: Request, exc: Exception) -> Response:
    return err(404, f"no route {request.method} {request.url.path}", "invalid_request_error",
               "not_found")  # fmt: skip


async def _bad_method(request: Request, exc: Exception) -> Response:
    return err(405, f"method {request.method} not allowed on {request.url.path}",
               "invalid_request_error", "method_not_allowed")  # fmt: skip


def create_app(
    services: Services,
    *,
    token: str | None,
    extra_hosts: set[str] | None = None,
    body_timeout: float = BODY_TIMEOUT,
) -> ASGIApp:
    app = Starlette(routes=ROUTES, exception_handlers={404: _not_found, 405: _bad_method})
    app.state.services = services
    services.operator = Operator(token)

    def refused(path: str, status: int, reason: str) -> None:
        services.usage.record(None, path, status, new_request_id(), reason=reason, refused=True)

    def audit(key: Key, method: str, path: str, status: int) -> None:
        rid = new_request_id()
        _audit_log.info("key=%s %s %s status=%d id=%s", key.name, method, path, status, rid)
        services.store.audit(key.name, method, path, status, rid)

    guard = Guard(
        app,
        token,
        extra_hosts or set(),
        body_timeout=body_timeout,
        profile_hosts=lambda: services.scheduler.profile.allowed_hosts,
        on_reject=refused,
        keys=services.keys,
        on_audit=audit,
        operator=services.operator,
        sessions=services.sessions,
    )
    services.serve_as = guard.serve_as  # the WebSocket's chats go through the same door
    return guard
