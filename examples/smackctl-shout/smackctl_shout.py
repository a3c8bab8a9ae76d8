"""An example plugin package for smackctl (``pip install ./examples/smackctl-shout``, then
``plugins: {shout: {}, noop: {}}`` in a profile).

- ``/shout QUESTION``: the model answers QUESTION in capital letters (a rewrite: a system
  message is added before the question).
- ``/noop QUESTION``: the model answers QUESTION as if no command were there (what the
  plugin layer costs, measured in benchmarks/plugins.py).
"""

from __future__ import annotations

from smackctl.plugins import Context, PluginError, Rewrite


class Shout:
    summary = "the model answers in capital letters: /shout QUESTION"
    timeout = 1.0

    async def run(self, args: str, ctx: Context) -> Rewrite:
        if not args.strip():
            raise PluginError("what should the model shout about? usage: /shout QUESTION")
        system = {"role": "system", "content": "Answer in capital letters only."}
        return Rewrite([system, *ctx.messages])


class Noop:
    summary = "the model answers the question as it is: /noop QUESTION"
    timeout = 1.0

    async def run(self, args: str, ctx: Context) -> Rewrite:
        return Rewrite(ctx.messages)
