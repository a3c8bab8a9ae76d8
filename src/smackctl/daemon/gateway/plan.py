"""The attempts for a request, decided as pure functions of the profile, a snapshot of the
deployments and the request (as ``planner.plan_evictions`` decides evictions): no I/O, no
clock, no randomness; the gateway carries them out.

A name resolves to a chain of deployments:

- a model of the profile or one added with `models add` (local or ``backend: openai``):
  itself, then its ``fallbacks``;
- a group: its deployments in the order of its ``policy`` (``priority``: as listed;
  ``round-robin``: from the group's turn; ``least-busy``: fewest requests in flight and
  queued; ``latency``: the lowest moving average of time to first byte, untried first;
  ``cost``: the cheapest ``price`` first, a local model free; ``quality``: the highest
  ``quality`` first), then its ``fallbacks``;

at most ``MAX_HOPS`` of them. Along the chain one is skipped when its context cannot hold the
prompt, when its health check fails, or when it serves only the OpenAI routes and the
request is for another; a circuit breaker's word is asked when its turn comes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from smackctl.config import Profile

__all__ = [
    "MAX_HOPS",
    "Attempt",
    "Deployed",
    "attempts",
    "chain",
    "estimated_tokens",
    "final_status",
    "target",
]

MAX_HOPS = 5


@dataclass(frozen=True)
class Deployed:
    """What the plan needs to know of a deployment, at the moment of the request."""

    name: str
    remote: bool = False
    context: int | None = None
    healthy: bool = True
    health_error: str = ""
    busy: int = 0  # requests in flight and queued
    ttfb: float | None = None  # moving average of the time to first byte, seconds
    price: float = 0.0  # USD per million tokens, in and out (a local model: 0)
    quality: int = 0


@dataclass(frozen=True)
class Attempt:
    name: str
    #: why it is passed over (None: tried)
    skip: str | None = None


def estimated_tokens(body: Mapping[str, Any]) -> int:
    """A prompt's tokens, estimated before sending: its text's characters over 4 (what
    English takes in the common tokenizers), so a fallback is chosen without a tokenizer."""
    text = json.dumps(
        [body.get(k) for k in ("messages", "prompt", "input", "system", "tools", "instructions")]
    )
    return len(text) // 4


def target(profile: Profile, name: str) -> str | None:
    """The group or model of the profile a name stands for (an alias too); None for one the
    profile does not know (an added model keeps its own name)."""
    for gname, group in profile.groups.items():
        if name == gname or name in group.aliases:
            return gname
    return profile.resolve(name)


def chain(
    profile: Profile,
    name: str,
    deployed: Mapping[str, Deployed],
    turns: Mapping[str, int],
) -> list[str]:
    """The deployments to try for ``name`` (a group or model of the profile, or an added
    model), in order; ``turns``: each round-robin group's count of requests so far."""
    out: list[str] = []
    _expand(profile, target(profile, name) or name, deployed, turns, out, set())
    return out[:MAX_HOPS]


def _expand(
    profile: Profile,
    name: str,
    deployed: Mapping[str, Deployed],
    turns: Mapping[str, int],
    out: list[str],
    seen: set[str],
) -> None:
    if name in seen:
        return
    seen.add(name)
    if name in profile.groups:
        group = profile.groups[name]
        ordered = order(list(group.deployments), group.policy, deployed, turns.get(name, 0))
        out.extend(d for d in ordered if d not in out)
        fallbacks: tuple[str, ...] = group.fallbacks
    else:
        if name not in out:
            out.append(name)
        spec = profile.models.get(name)
        fallbacks = spec.fallbacks if spec is not None else ()
    for f in fallbacks:
        _expand(profile, f, deployed, turns, out, seen)


def order(names: list[str], policy: str, deployed: Mapping[str, Deployed], turn: int) -> list[str]:
    """A group's deployments in the order its policy tries them."""
    if policy == "round-robin":
        k = turn % len(names)
        return names[k:] + names[:k]
    known = [deployed.get(n, Deployed(n)) for n in names]
    if policy == "least-busy":
        return [d.name for d in sorted(known, key=lambda d: d.busy)]
    if policy == "latency":
        return [d.name for d in sorted(known, key=lambda d: d.ttfb or 0.0)]
    if policy == "cost":  # the cheapest first: the first healthy one that fits answers
        return [d.name for d in sorted(known, key=lambda d: d.price)]
    if policy == "quality":
        return [d.name for d in sorted(known, key=lambda d: -d.quality)]
    return names


def attempts(
    names: list[str], deployed: Mapping[str, Deployed], path: str, tokens: int
) -> list[Attempt]:
    """Each deployment of the chain, with why it is passed over before its breaker is asked."""
    return [Attempt(n, _skip(deployed.get(n, Deployed(n)), path, tokens)) for n in names]


def _skip(d: Deployed, path: str, tokens: int) -> str | None:
    if d.remote and not path.startswith("/v1/"):
        return f"{path} is llama-server's own route, not sent to a server elsewhere"
    if d.context is not None and tokens > d.context:
        return f"the prompt (~{tokens} tokens) does not fit its context of {d.context}"
    if d.remote and not d.healthy:
        return f"its health check fails ({d.health_error})"
    return None


def final_status(statuses: list[int]) -> int:
    """The status of a request no deployment answered: 502 when every one tried answered
    what cannot be passed on (too large, undecodable), 504 when every one ran past its
    deadline; else 503 (down, refusing, skipped: try again later)."""
    if statuses and len(set(statuses)) == 1 and statuses[0] in (502, 504):
        return statuses[0]
    return 503
