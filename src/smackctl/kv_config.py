"""A profile's ``kv_cache:``: the conversations' KV caches saved when their model goes and
restored when it comes back (issue 32), kept under the state dir's ``kv/`` up to
``max_size`` (the least recently used go first; ``0`` saves nothing)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from smackctl.units import parse_size

__all__ = ["KvCache"]


class KvCache(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the most the saved states may take on disk (``2GiB``); ``0``: none is saved
    max_size: int = Field(2 * 1024**3, ge=0)

    @field_validator("max_size", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        return parse_size(v) if isinstance(v, str) else v
