"""The machine's CPU cores, shared by every runner that computes on the CPU.

llama.cpp's worker threads spin at a barrier after every operation of the graph. When two
runners' threads together outnumber the cores, a spinning thread waits for one the kernel has
descheduled, and both models slow to a crawl: on 2 cores, SmolLM2 and Gemma 3 270M with 2
threads each, under load, took 15 s for 16 tokens that take 0.3 s alone (BENCHMARKS.md, line 7).

So a runner holds ``threads`` of the cores while it computes, and a request waits (first
come, first served) while they are taken. A runner whose layers all sit on a GPU holds none.
The cores are held per runner (``key``), not per request: a llama-server with ``parallel``
slots decodes the requests it has in one batch on the same threads, so a request that joins
a runner already computing takes no more cores and does not wait, unless another runner's
request is waiting for cores: then it waits its turn behind that one. Without that rule a
llama-server kept busy by its own clients never let the cores go, and another model's
requests waited for as long as those clients kept asking (the soak benchmark saw Gemma's
first requests wait 110 s behind SmolLM2's 16 clients).
"""

from __future__ import annotations

import asyncio
from collections import deque

from smackctl.config import ModelSpec
from smackctl.gguf import GGUFInfo
from smackctl.hardware import probe_gpus

from .backends.base import runner_threads

__all__ = ["Cores"]


class Cores:
    """``capacity`` cores; ``acquire(n)`` waits in a FIFO queue until ``n`` of them are free.

    A waiter that is cancelled (its client went away) leaves the queue and holds nothing.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self.busy = 0
        self._waiters: deque[tuple[int, object, asyncio.Future[None]]] = deque()
        #: requests holding each key's cores
        self._held: dict[object, int] = {}
        self._gpu_present: bool | None = None

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def units(self, threads: int) -> int:
        """What a runner with ``threads`` threads holds: all the cores at most."""
        return max(0, min(threads, self.capacity))

    def units_for(self, spec: ModelSpec, info: GGUFInfo | None) -> int:
        """How many cores a request to a model holds: its runner's threads, or none when
        every layer is on a GPU (llama.cpp then computes there)."""
        layers = info.layers if info is not None else None
        if spec.n_gpu_layers < 0 or (layers is not None and spec.n_gpu_layers > layers):
            if self._gpu_present is None:
                self._gpu_present = bool(probe_gpus())
            if self._gpu_present:
                return 0
        return self.units(runner_threads(spec))

    async def acquire(self, n: int, key: object = None) -> None:
        """Hold ``n`` cores for ``key`` (a runner; None: this request alone). A key that holds
        them already is let in at once while nobody waits; else first come, first served."""
        if n <= 0:
            return
        if not self._waiters and (self._held.get(key) or self._fits(n)):
            self._grant(n, key)
            return
        entry = (n, key, asyncio.get_running_loop().create_future())
        self._waiters.append(entry)
        try:
            await entry[2]
        except asyncio.CancelledError:
            if entry in self._waiters:
                self._waiters.remove(entry)
                self._wake()  # it may have been first in line, holding back those behind it
            elif not entry[2].cancelled():
                self.release(n, key)  # the cores were handed to us as we were cancelled
            raise

    def _grant(self, n: int, key: object) -> None:
        if key is not None and self._held.get(key):
            self._held[key] += 1
            return
        self.busy += n
        if key is not None:
            self._held[key] = 1

    def release(self, n: int, key: object = None) -> None:
        if n <= 0:
            return
        if key is not None:
            self._held[key] -= 1
            if self._held[key]:
                return
            del self._held[key]
        self.busy -= n
        self._wake()

    def _fits(self, n: int) -> bool:
        # more than all the cores (the capacity shrank under a waiter): it runs alone
        return self.busy + n <= self.capacity or self.busy == 0

    def resize(self, capacity: int) -> None:
        """A new profile's ``cpu.cores``: requests running keep what they hold."""
        self.capacity = max(1, capacity)
        self._wake()

    def _wake(self) -> None:
        # first come, first served: a large request at the head is not overtaken by small ones
        while self._waiters:
            n, key, fut = self._waiters[0]
            if not (self._held.get(key) or self._fits(n)):
                return
            self._waiters.popleft()
            self._grant(n, key)
            fut.set_result(None)

    def view(self) -> dict[str, int]:
        return {"cores": self.capacity, "busy": self.busy, "waiting": self.waiting}
