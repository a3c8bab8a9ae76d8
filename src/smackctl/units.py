"""The words of a setting: a model's name, a size (``512MiB``), a duration (``10m``), an
idle time as Ollama's clients send it (``keep_alive``). Pure functions; ValueError (or
UsageError, for a name) for what is not one."""

from __future__ import annotations

import json
import re

from smackctl.errors import UsageError

__all__ = [
    "name_problem",
    "parse_duration",
    "parse_keep_alive",
    "parse_size",
    "validate_model_name",
]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "ki": 1024,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mi": 1024**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gi": 1024**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ti": 1024**4,
    "tib": 1024**4,
}
_DURATION_RE = re.compile(r"^\s*(\d+)\s*(s|m|h|d)?\s*$")


def validate_model_name(name: str) -> str:
    """A model name never becomes a path: letters, digits, '.', '_', '-' and no '..'."""
    if not _NAME_RE.match(name) or ".." in name:
        raise UsageError(
            f"invalid model name {name!r}: use letters, digits, '.', '_' and '-' "
            "(at most 64, starting with a letter or digit, no '..')",
            "pick another name, e.g. `--name my-model`",
        )
    return name


def name_problem(name: str) -> str | None:
    """What is wrong with a model, alias or group name in a profile, or None."""
    try:
        validate_model_name(name)
    except UsageError as exc:
        return exc.message
    return None


def parse_size(value: int | float | str) -> int:
    """``12GiB`` → bytes. Plain numbers are bytes."""
    if isinstance(value, int | float):
        return int(value)
    m = _SIZE_RE.match(value)
    if not m or (m.group(2) or "").lower() not in _UNITS:
        raise ValueError(f"not a size: {value!r} (write e.g. 512MiB, 12GiB)")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])


def parse_duration(value: int | str) -> int:
    """``10m`` → 600 seconds. Plain numbers are seconds."""
    if isinstance(value, int):
        return value
    m = _DURATION_RE.match(value)
    if not m:
        raise ValueError(f"not a duration: {value!r} (write e.g. 300, 5m, 1h)")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2) or "s"]


def parse_keep_alive(value: object) -> float | None:
    """How long a model stays loaded once idle, as Ollama's clients send ``keep_alive``:
    seconds (a number or a string), a duration (``5m``, ``1h``), ``-1`` (any negative: never
    unload, returned as None) or ``0`` (unload once the answer is done). ValueError else."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"not a keep_alive: {json.dumps(value)[:40]} (write e.g. 300, 5m, -1, 0)")
    text = str(value).strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            seconds = float(parse_duration(text))
        except ValueError:
            raise ValueError(
                f"not a keep_alive: {text[:40]} (write e.g. 300, 5m, -1 to keep it, 0 to unload)"
            ) from None
    if seconds != seconds or seconds == float("inf"):
        raise ValueError(f"not a keep_alive: {text[:40]}")
    return None if seconds < 0 else seconds


def utc_minute(at: float) -> str:
    """A unix time as people read it, to the minute: ``2026-12-06 11:43 UTC``."""
    import time

    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))


def in_words(seconds: float) -> str:
    """A wait in words, rounded up (a client that waits as told is not refused again):
    ``45s``, ``12 min``, ``3 h 53 min``, ``2 days 8 h``."""
    import math

    s = max(1, math.ceil(seconds))
    if s < 60:
        return f"{s}s"
    minutes = math.ceil(s / 60)
    if minutes < 60:
        return f"{minutes} min"
    h, m = divmod(minutes, 60)
    if h < 24:
        return f"{h} h {m} min" if m else f"{h} h"
    d, h = divmod(math.ceil(s / 3600), 24)
    if d >= 7:  # a week or more: whole days
        d, h = math.ceil(s / 86400), 0
    days = f"{d} day{'s' if d != 1 else ''}"
    return f"{days} {h} h" if h else days
