"""A key's preferences: a default model and sampling defaults, and the same per context (a
request names its context with ``X-Smackctl-Context``: ``code``, ``chat``…).

    {"model": "smollm2", "sampling": {"temperature": 0.7},
     "contexts": {"code": {"model": "qwen-coder", "sampling": {"temperature": 0.1}}}}

A request whose ``model`` is absent, empty or ``default`` gets its context's model, else the
key's, else the profile's default; a sampling field the request leaves out gets its
context's value, else the key's (chat and completions only: the other APIs name their
fields otherwise). A context's model may be a group or ``auto``: its routing policy.
"""

from __future__ import annotations

import math
import re
from typing import Any

from smackctl.errors import UsageError

__all__ = ["SAMPLING", "apply", "check"]

#: the sampling fields a preference may set, and the values each takes
SAMPLING: dict[str, tuple[float, float]] = {
    "temperature": (0, 5),
    "top_p": (0, 1),
    "top_k": (0, 10_000),
    "min_p": (0, 1),
    "max_tokens": (1, 1_000_000),
    "presence_penalty": (-2, 2),
    "frequency_penalty": (-2, 2),
    "repeat_penalty": (0, 10),
    "seed": (0, 2**63 - 1),
}
_SAMPLED = ("/v1/chat/completions", "/v1/completions")
_CONTEXT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HINT = (
    'send {"model": NAME, "sampling": {"temperature": 0.2, …}, "contexts": {"code": {…}}}; '
    f"sampling fields: {', '.join(SAMPLING)}"
)


def _one(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise UsageError(f"{where} must be an object", _HINT)
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if name == "model":
            if not (isinstance(value, str) and 0 < len(value) <= 128):
                raise UsageError(f"{where}.model must be a model's name", _HINT)
            out["model"] = value
        elif name == "sampling":
            if not isinstance(value, dict):
                raise UsageError(f"{where}.sampling must be an object", _HINT)
            out["sampling"] = {}
            for field, v in value.items():
                bounds = SAMPLING.get(field)
                if bounds is None:
                    raise UsageError(f"{where}.sampling.{str(field)[:40]} is not known", _HINT)
                low, high = bounds
                if isinstance(v, bool) or not isinstance(v, int | float) or not low <= v <= high:
                    raise UsageError(
                        f"{where}.sampling.{field} must be a number from {low:g} to {high:g}",
                        _HINT,
                    )
                if math.isnan(v):
                    raise UsageError(f"{where}.sampling.{field} must be a number", _HINT)
                out["sampling"][field] = v
        elif name != "contexts" or where != "preferences":
            raise UsageError(f"{where}.{str(name)[:40]} is not a preference", _HINT)
    return out


def check(raw: Any) -> dict[str, Any]:
    """The preferences as given, checked: a 400 that names what is wrong, else them."""
    out = _one(raw, "preferences")
    contexts = raw.get("contexts", {})
    if not isinstance(contexts, dict):
        raise UsageError("preferences.contexts must be an object", _HINT)
    if contexts:
        out["contexts"] = {}
    for name, ctx in contexts.items():
        if not _CONTEXT.match(name):
            raise UsageError(
                f"context name {name[:40]!r} is not allowed",
                "use letters, digits, '.', '_' or '-'",
            )
        out["contexts"][name] = _one(ctx, f"preferences.contexts.{name}")
    return out


def apply(body: dict[str, Any], prefs: dict[str, Any], context: str | None, path: str) -> None:
    """Fill ``body`` in place from the key's preferences for ``context``."""
    own = prefs.get("contexts", {}).get(context, {}) if context else {}
    if body.get("model") in (None, "", "default"):
        model = own.get("model") or prefs.get("model")
        if model:
            body["model"] = model
        elif body.get("model") is not None:
            del body["model"]  # the profile's default
    if path in _SAMPLED:
        for field, value in {**prefs.get("sampling", {}), **own.get("sampling", {})}.items():
            body.setdefault(field, value)
