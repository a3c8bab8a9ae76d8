"""One request on its way through the gateway: what the API route handed down."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["KEEP", "Call"]

#: ``Call.keep_alive`` when the request says nothing of it
KEEP = "keep"


@dataclass(frozen=True)
class Call:
    #: the route the client asked (``/v1/chat/completions``, ``/v1/messages``…)
    path: str
    #: the request's JSON body, validated
    body: dict[str, Any]
    request_id: str
    #: ``Cache-Control: no-cache``: the response cache is not read
    no_cache: bool = False
    #: seconds the model stays loaded once idle after this request (None: kept), or ``KEEP``
    keep_alive: float | str | None = KEEP
    #: what ``model: auto`` decided, for the answer's ``X-Smackctl-Route``
    route: str | None = field(default=None)

    @property
    def model(self) -> str | None:
        name = self.body.get("model")
        return name if isinstance(name, str) and name else None

    def to(self, model: str, route: str | None = None) -> Call:
        """The same request for ``model``."""
        return replace(self, body={**self.body, "model": model}, route=route or self.route)
