"""What a smackctl plugin is: a slash command that runs in the supervisor before the model.

A chat request whose last user message starts with ``/NAME ARGS`` runs the plugin registered
as ``NAME`` in the ``smackctl.plugins`` entry-point group, when the active profile enables it
(``plugins: {NAME: {settings…}}``; none is enabled by default: a plugin runs code, so the
operator chooses, never a request). In a package's ``pyproject.toml``::

    [project.entry-points."smackctl.plugins"]
    shout = "smackctl_shout:Shout"

The entry point names a class (made with no arguments) or an object with:

- ``summary``: one line for ``smackctl plugins list``;
- ``timeout``: seconds it may take (default 5); past them the request gets a 504;
- ``run(args, ctx)``, plain or async: return ``Reply(text)`` to answer by itself (sent as a
  normal OpenAI response, streamed when the request streams), or ``Rewrite(messages)`` to
  let the model answer those messages instead. ``raise PluginError(message, hint)`` for a
  request it cannot serve (a 400 naming the plugin); any other exception is a 500 that names
  it too. Neither harms the supervisor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Context", "PluginError", "Reply", "Rewrite"]


@dataclass
class Context:
    """What a plugin gets besides its arguments."""

    #: the request's `model` field (None: the profile's default)
    model: str | None
    #: the request's messages, a copy (the last is the user's, with the command in it)
    messages: list[dict[str, Any]]
    #: the active profile's settings for this plugin (``plugins: {NAME: {…}}``)
    settings: dict[str, Any] = field(default_factory=dict)
    #: the supervisor's status, as ``GET /api/status`` answers it (loaded models, memory…)
    status: Callable[[], dict[str, Any]] = dict


@dataclass
class Reply:
    """The plugin's own answer: the model is not asked."""

    text: str


@dataclass
class Rewrite:
    """The messages the model answers instead of the request's."""

    messages: list[dict[str, Any]]


class PluginError(Exception):
    """A request the plugin cannot serve; ``hint`` says how to fix it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint
