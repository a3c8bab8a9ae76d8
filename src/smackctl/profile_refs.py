"""The checks of a profile that span its sections, on its plain data, each with its key path.

A name that routing, a group or a fallback uses must name a model (or a group) of the same
profile; aliases must not collide. These run on the data as read from the file, whatever the
rest of it holds, so that one pass reports every problem at the line of the key that names
the bad model (config.py gives each key path its line), and again on a validated ``Profile``.
Pure: plain data in, ``(key path, message)`` pairs out; "did you mean" from difflib.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter, ValidationError

__all__ = ["Loc", "Problem", "cross_references", "fields_at", "suggest"]

Loc = tuple[str | int, ...]
Problem = tuple[Loc, str]

#: how many known names an error lists when none is close to the bad one
_LISTED = 8


def suggest(word: str, candidates: Iterable[str], kind: str = "") -> str:
    """ ": did you mean `x`?" for the closest candidate; else the candidates (``kind``: what
    they are, e.g. "models"), or "" when there is none or no kind to list them as."""
    known = sorted({c for c in candidates if isinstance(c, str)})
    close = [c for c in known if c.casefold() == word.casefold()]  # difflib tells case apart
    close = close or difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    if close:
        return f": did you mean `{close[0]}`?"
    if not kind or not known:
        return ""
    more = f", … ({len(known)} in all)" if len(known) > _LISTED else ""
    return f" ({kind}: {', '.join(known[:_LISTED])}{more})"


def _mapping(value: Any) -> dict[str, Any]:
    """A section as a dict; {} for anything else (its own check says what is wrong)."""
    return {str(k): v for k, v in value.items()} if isinstance(value, Mapping) else {}


def _items(value: Any) -> list[tuple[int, str]]:
    """The names of a list, with their index; a value that is no list of names has none."""
    if not isinstance(value, list | tuple):
        return []
    return [(i, v) for i, v in enumerate(value) if isinstance(v, str)]


def _true(value: Any) -> bool:
    """Whether ``value`` reads as true the way the schema reads a bool."""
    try:
        return bool(TypeAdapter(bool).validate_python(value))
    except ValidationError:
        return False


def cross_references(
    data: Mapping[str, Any],
    auto_keys: Iterable[str],
    bad_name: Callable[[str], str | None] = lambda _: None,
) -> list[Problem]:
    """Every name of ``data`` (a profile as plain data) that names nothing of the profile or
    that two entries claim. ``auto_keys``: the keys of ``routing.auto`` that name a model;
    ``bad_name``: what is wrong with a model or group name, or None."""
    models = _mapping(data.get("models"))
    groups = _mapping(data.get("groups"))
    routing = _mapping(data.get("routing"))
    route_aliases = _mapping(routing.get("aliases"))
    out: list[Problem] = []
    seen: dict[str, str] = {}  # a name or alias → the model or group it stands for

    for name, raw in models.items():
        if (why := bad_name(name)) is not None:
            out.append((("models", name), why))
        for loc, alias in _names_of("models", name, raw):
            if seen.setdefault(alias, name) != name:
                out.append((loc, f"alias {alias!r} is used by both {seen[alias]!r} and {name!r}"))
    for alias, target in route_aliases.items():
        where: Loc = ("routing", "aliases", alias)
        if not isinstance(target, str):
            continue  # the schema says what it should be
        if target not in models:
            why = suggest(target, models, "models")
            out.append((where, f"{target!r} is not a model of this profile{why}"))
        elif seen.get(alias, target) != target:
            out.append((where, f"alias {alias!r} is used by both {seen[alias]!r} and {target!r}"))
    for gname, raw in groups.items():
        group = _mapping(raw)
        if (why := bad_name(gname)) is not None:
            out.append((("groups", gname), why))
        for loc, alias in _names_of("groups", gname, group):
            if alias in seen:
                out.append((loc, f"the name {alias!r} is {seen[alias]!r}'s already"))
            else:
                seen[alias] = gname
        for i, d in _items(group.get("deployments")):
            if d not in models:
                out.append(
                    (
                        ("groups", gname, "deployments", i),
                        f"{d!r} is not a model of this profile{suggest(d, models, 'models')}",
                    )
                )
    out += _fallbacks(models, groups)
    out += _auto(_mapping(routing.get("auto")), auto_keys, models, groups)
    dm = routing.get("default_model")
    if (
        isinstance(dm, str)
        and not (dm == "auto" and routing.get("auto") is not None)
        and dm not in seen
        and dm not in route_aliases
    ):
        names = [*seen, *route_aliases]
        out.append(
            (
                ("routing", "default_model"),
                f"{dm!r} is not a model of this profile{suggest(dm, names, 'models and aliases')}",
            )
        )
    return out


def _names_of(kind: str, name: str, raw: Any) -> list[tuple[Loc, str]]:
    """A model's or group's name and aliases, each with where it is written."""
    named: list[tuple[Loc, str]] = [((kind, name), name)]
    return named + [
        ((kind, name, "aliases", i), a) for i, a in _items(_mapping(raw).get("aliases"))
    ]


def _fallbacks(models: dict[str, Any], groups: dict[str, Any]) -> list[Problem]:
    out: list[Problem] = []
    for kind, table in (("models", models), ("groups", groups)):
        for owner, raw in table.items():
            for i, n in _items(_mapping(raw).get("fallbacks")):
                if n not in models and n not in groups:
                    why = suggest(n, [*models, *groups], "models and groups")
                    msg = f"{n!r} is neither a model nor a group{why}"
                    out.append(((kind, owner, "fallbacks", i), msg))
    return out


def _auto(
    auto: dict[str, Any], keys: Iterable[str], models: dict[str, Any], groups: dict[str, Any]
) -> list[Problem]:
    out: list[Problem] = []
    for key in keys:
        target = auto.get(key)
        if isinstance(target, str) and target not in models and target not in groups:
            why = suggest(target, [*models, *groups], "models and groups")
            out.append(
                (("routing", "auto", key), f"{target!r} is not a model of this profile{why}")
            )
    classifier = auto.get("classifier")
    if isinstance(classifier, str) and classifier in models:
        if not _true(_mapping(models[classifier]).get("pinned", False)):
            out.append(
                (
                    ("routing", "auto", "classifier"),
                    f"set `pinned: true` for {classifier}, so that asking it never evicts the "
                    "models it routes to",
                )
            )
    return out


def fields_at(model: type[BaseModel], loc: Loc) -> list[str]:
    """The keys the schema ``model`` allows at ``loc`` (a mapping's path in the data): what an
    unknown key there may have meant. [] where the path leads to no schema of its own."""
    t: Any = model
    for part in (*loc, None):
        t = _unwrap(t)
        if part is None:
            break
        if isinstance(t, type) and issubclass(t, BaseModel):
            field = t.model_fields.get(str(part))
            if field is None:
                return []
            t = field.annotation
        elif get_origin(t) is dict:
            t = get_args(t)[1]
        elif get_origin(t) in (list, tuple):
            t = get_args(t)[0]
        else:
            return []
    return list(t.model_fields) if isinstance(t, type) and issubclass(t, BaseModel) else []


def _unwrap(t: Any) -> Any:
    """``X | None`` → X (the first member that is no None)."""
    if get_origin(t) in (Union, types.UnionType):
        members = [a for a in get_args(t) if a is not type(None)]
        return members[0] if members else t
    return t
