"""The fleet's members as heard from their heartbeats, and where a request goes. Pure: the
clock is given.

A member that has not been heard for ``MISSED`` heartbeats is dropped. Placement: the
members that have the model loaded first (NATS's queue group spreads among them), else the
member whose own estimate says the model fits now, the least busy first; a member that is
draining takes nothing new, and one already tried is not tried again."""

from __future__ import annotations

import time
from dataclasses import dataclass

from .protocol import Heartbeat

__all__ = ["MISSED", "RECENT", "Members", "Place"]

#: heartbeats a member may miss before it is dropped
MISSED = 3
#: a model the fleet served this recently and nobody serves now is a 503, not a 404
RECENT = 3600.0


@dataclass(frozen=True)
class Place:
    """Where to send a request: ``member`` (None: whichever member has it loaded, through
    the queue group) and why."""

    member: str | None
    why: str


class Members:
    def __init__(self, own: str, interval: float) -> None:
        self.own, self.interval = own, interval
        self.table: dict[str, Heartbeat] = {}
        self._heard: dict[str, float] = {}
        #: when each model was last served by a member (for 503 rather than 404)
        self.served: dict[str, float] = {}
        #: members refused for speaking another version: name → the message
        self.refused: dict[str, str] = {}
        #: another member with this one's name, in words (None: none seen)
        self.clash: str | None = None
        #: what a member's model costs, as it last said: ``MEMBER/MODEL`` → USD per million
        #: tokens in and out (kept after it leaves: an answer it began is charged)
        self.prices: dict[str, tuple[float, float]] = {}

    def heard(self, hb: Heartbeat, now: float | None = None, instance: str = "") -> None:
        """``instance``: this member's own: a heartbeat of its name from another instance
        is a second member of the same name (a cloned machine), said in ``clash``."""
        if hb.name == self.own:
            if instance and hb.instance != instance:
                self.clash = f"another member is named {hb.name} too: give one a fleet.name"
            return
        self.refused.pop(hb.name, None)  # it speaks this version now
        now = time.monotonic() if now is None else now
        if hb.leaving:
            self.table.pop(hb.name, None)
            self._heard.pop(hb.name, None)
            return
        self.table[hb.name] = hb
        self._heard[hb.name] = now
        for name, model in hb.models.items():
            self.served[name] = time.time()
            price = _price(model.get("price") if isinstance(model, dict) else None)
            deployment = f"{hb.name}/{name}"
            if price is None:  # a price no longer said is no longer charged
                self.prices.pop(deployment, None)
            elif deployment in self.prices or len(self.prices) < 10_000:
                self.prices[deployment] = price

    def sweep(self, now: float | None = None) -> list[str]:
        """Drop the members not heard for ``MISSED`` heartbeats; their names."""
        now = time.monotonic() if now is None else now
        gone = [n for n, t in self._heard.items() if now - t > MISSED * self.interval]
        for name in gone:
            self.table.pop(name, None)
            self._heard.pop(name, None)
        return gone

    def models(self) -> dict[str, list[str]]:
        """Every model a member serves → the members that serve it."""
        found: dict[str, list[str]] = {}
        for hb in self.table.values():
            for name in hb.models:
                found.setdefault(name, []).append(hb.name)
        return found

    def loaded(self, model: str) -> list[Heartbeat]:
        return sorted(
            (hb for hb in self.live() if hb.models.get(model, {}).get("loaded")),
            key=lambda hb: hb.load,
        )

    def live(self) -> list[Heartbeat]:
        return [hb for hb in self.table.values() if not hb.draining]

    def place(self, model: str, tried: set[str], queue_tried: bool) -> Place | None:
        """Where the next attempt for ``model`` goes, or None: nobody can take it."""
        loaded = [hb for hb in self.loaded(model) if hb.name not in tried]
        if loaded and not queue_tried:
            return Place(None, f"loaded on {', '.join(hb.name for hb in loaded)}")
        if loaded:
            return Place(loaded[0].name, "loaded there")
        fits = sorted(
            (hb for hb in self.live()
             if hb.name not in tried and hb.models.get(model, {}).get("fits")),
            key=lambda hb: (hb.load, -hb.memory.get("free", 0)),
        )  # fmt: skip
        if fits:
            return Place(fits[0].name, "it fits there")
        return None

    def why_not(self, model: str) -> str:
        """Why no member can take ``model`` now, in words."""
        serving = [hb.name for hb in self.table.values() if model in hb.models]
        if not serving:
            return f"no member of the fleet serves {model} now"
        draining = [hb.name for hb in self.table.values() if hb.draining and model in hb.models]
        if draining and len(draining) == len(serving):
            return f"the members that serve {model} are draining ({', '.join(draining)})"
        return f"no member that serves {model} has room to load it ({', '.join(serving)})"

    def price(self, deployment: str) -> tuple[float, float] | None:
        """What ``MEMBER/MODEL`` costs (USD per million tokens in, out), if its member said."""
        return self.prices.get(deployment)

    def recently_served(self, model: str) -> bool:
        return time.time() - self.served.get(model, -RECENT - 1) <= RECENT


def _price(said: object) -> tuple[float, float] | None:
    """A heartbeat's ``price``: ``[input, output]``, each 0 to 1e6 (anything else: none)."""
    if not isinstance(said, list) or len(said) != 2:
        return None
    if not all(isinstance(x, int | float) and not isinstance(x, bool) and 0 <= x <= 1e6
               for x in said):  # fmt: skip
        return None
    return float(said[0]), float(said[1])
