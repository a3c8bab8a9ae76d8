"""Plugins that fail on purpose, for tests/test_plugins.py: one hangs past its timeout on a
thread and one in ``async def run``, one raises, and ``broken`` names a class that does not
exist (it cannot be loaded)."""

from __future__ import annotations

import asyncio
import time

from smackctl.plugins import Context, Reply


class Hang:
    summary = "never answers in time"
    timeout = 0.5

    def run(self, args: str, ctx: Context) -> Reply:
        time.sleep(3)
        return Reply("too late")


class AsyncHang:
    summary = "never answers in time, on the event loop"
    timeout = 0.5

    async def run(self, args: str, ctx: Context) -> Reply:
        await asyncio.sleep(5)  # without its timeout, this answer would come back as a 200
        return Reply("too late")


class Boom:
    summary = "raises"

    def run(self, args: str, ctx: Context) -> Reply:
        raise RuntimeError("on purpose")
