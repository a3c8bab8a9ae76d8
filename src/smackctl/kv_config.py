"""A profile's ``kv_cache:``: the conversations' KV caches saved when their model goes and
restored when it comes back (issue 32), kept under the state dir's ``kv/`` up to
``max_size`` (the least recently used go first; ``0`` saves nothing). A saved state belongs
to the key whose request made it (``owner_of``): another key's prompt restores nothing of
it, unless the profile says ``shared``."""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from smackctl.units import parse_size

__all__ = ["OWNER_HEADER", "KvCache", "owner_of"]

#: the request's owner as the supervisor tells a llama-cpp-python runner
OWNER_HEADER = "X-Smackctl-Kv-Owner"


class KvCache(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the most the saved states may take on disk (``2GiB``); ``0``: none is saved
    max_size: int = Field(2 * 1024**3, ge=0)
    #: one key's saved conversations restored for another key's prompt too (off: a state on
    #: disk is restored for its own key only; the prefix a runner holds in memory is reused
    #: for any prompt, as every server does)
    shared: bool = False

    @field_validator("max_size", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        return parse_size(v) if isinstance(v, str) else v


def owner_of(caller: Any, shared: bool) -> str:
    """Whose a saved state is, as a word fit for a file name: ``shared`` when the profile
    shares them, ``operator`` for the supervisor's token, else a digest of the key's name and
    creation (a key made anew under an old name is another key; its name stays off disk)."""
    if shared:
        return "shared"
    if caller is None:
        return "operator"
    name = f"{caller.name}@{caller.created}".encode()
    return hashlib.sha256(name).hexdigest()[:16]
