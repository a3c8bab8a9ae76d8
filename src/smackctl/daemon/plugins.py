"""Slash commands in chat requests, run by the plugins the active profile enables
(``smackctl.plugins``: what a plugin is and how one registers).

The check costs one look at the last message: a request without a command passes on as it
came, the same object, untouched. With a command of an installed plugin that the profile
enables, the plugin runs (cut off at its timeout) and either answers (an OpenAI response
built here, streamed when the request streams) or rewrites the messages the model answers.
A command no plugin has passes on too ("/usr/bin is a path" is not a command); one whose
plugin is installed but not enabled is a 400 that says how to enable it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from starlette.responses import Response, StreamingResponse

from smackctl.errors import PluginFailed, PluginTimedOut, UsageError
from smackctl.plugins import Context, PluginError, Reply, Rewrite
from smackctl.wire import DONE, sse

__all__ = ["GROUP", "Installed", "Plugins", "discover", "slash_command"]

GROUP = "smackctl.plugins"
_COMMAND = re.compile(r"/([a-z][a-z0-9_-]{0,31})(?:\s+|$)")

log = logging.getLogger("smackctl.plugins")


@dataclass
class Installed:
    name: str
    source: str  # the distribution that registers it, or the entry point's value
    summary: str
    obj: Any | None  # None: it failed to load (``error`` says why)
    error: str = ""

    def view(self, enabled: bool) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "summary": self.summary,
                "enabled": enabled, "error": self.error or None}  # fmt: skip


def discover() -> dict[str, Installed]:
    """The plugins installed in this Python, by command name (a broken one is listed with
    its error, never fatal)."""
    found: dict[str, Installed] = {}
    for ep in entry_points(group=GROUP):
        source = ep.dist.name if ep.dist is not None else ep.value
        try:
            obj = ep.load()
            if inspect.isclass(obj):
                obj = obj()
            summary = str(getattr(obj, "summary", "") or (obj.__doc__ or "").strip())
            if not callable(getattr(obj, "run", None)):
                raise TypeError("it has no run(args, ctx)")
            found[ep.name] = Installed(
                ep.name, source, summary.splitlines()[0] if summary else "", obj
            )
        except Exception as exc:  # a broken plugin must not stop the supervisor
            log.error("plugin %s (%s) cannot be loaded: %s", ep.name, ep.value, exc)
            found[ep.name] = Installed(ep.name, source, "", None, f"{type(exc).__name__}: {exc}")
    return found


def _text_of(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content and isinstance(content[0], dict):
        first = content[0]
        if first.get("type") == "text" and isinstance(first.get("text"), str):
            return str(first["text"])
    return None


def slash_command(body: dict[str, Any]) -> tuple[str, str] | None:
    """(name, args) when the last message is the user's and starts with ``/name``."""
    messages = body.get("messages")
    if not messages or not isinstance(messages, list):
        return None
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        return None
    text = _text_of(last.get("content"))
    if not text or text[0] != "/":
        return None
    m = _COMMAND.match(text)
    if m is None:
        return None
    return m.group(1), text[m.end() :]


class Plugins:
    def __init__(
        self,
        enabled: Callable[[], dict[str, dict[str, Any]]],
        status: Callable[[], dict[str, Any]],
        installed: dict[str, Installed] | None = None,
    ) -> None:
        self.enabled, self.status = enabled, status
        self._installed = installed

    @property
    def installed(self) -> dict[str, Installed]:
        """What is installed, read on the first slash command or listing (loading the
        entry points, ~10 ms here, is not the supervisor's start's to pay)."""
        if self._installed is None:
            self._installed = discover()
        return self._installed

    def view(self) -> list[dict[str, Any]]:
        on = self.enabled()
        names = sorted(set(self.installed) | set(on))
        out = []
        for name in names:
            p = self.installed.get(name)
            if p is None:
                out.append({"name": name, "source": None, "summary": "", "enabled": True,
                            "error": "enabled in the profile but not installed"})  # fmt: skip
            else:
                out.append(p.view(name in on))
        return out

    async def apply(self, body: dict[str, Any]) -> dict[str, Any] | Response:
        """The request to pass on (``body`` itself when it has no command), or the plugin's
        own answer."""
        command = slash_command(body)
        if command is None:
            return body
        name, args = command
        plugin = self.installed.get(name)
        if plugin is None:
            return body  # no plugin has this name: the message is the user's words
        settings = self.enabled().get(name)
        if settings is None:
            raise UsageError(
                f"/{name} is the command of a plugin this profile does not enable",
                f"enable it in the profile (`plugins: {{{name}: {{}}}}`), or start the "
                f"message with a space to send '/{name}' to the model as it is",
            )
        if plugin.obj is None:
            raise PluginFailed(
                f"plugin {name} cannot be loaded: {plugin.error}",
                f"reinstall {plugin.source}, or remove {name} from the profile's `plugins`",
            )
        timeout = float(getattr(plugin.obj, "timeout", 5.0))
        ctx = Context(
            model=body.get("model"),
            messages=[dict(m) for m in body["messages"]],
            settings=dict(settings or {}),
            status=_on_loop(self.status, asyncio.get_running_loop(), timeout),
        )
        ctx.messages[-1]["content"] = args  # the command's own words are not the prompt
        result = await self._run(name, plugin.obj, args, ctx, timeout)
        if isinstance(result, Rewrite):
            log.info("plugin %s rewrote the request (%d messages)", name, len(result.messages))
            return {**body, "messages": result.messages}
        if isinstance(result, Reply):
            log.info("plugin %s answered (%d characters)", name, len(result.text))
            return _answer(body, name, result.text)
        raise PluginFailed(
            f"plugin {name} returned {type(result).__name__}, not a Reply or a Rewrite",
            f"fix the plugin ({plugin.source})",
        )

    async def _run(self, name: str, obj: Any, args: str, ctx: Context, timeout: float) -> Any:
        try:
            if inspect.iscoroutinefunction(obj.run):
                return await asyncio.wait_for(obj.run(args, ctx), timeout)
            # a plain function runs on a thread: the loop keeps serving meanwhile (a thread
            # past its timeout cannot be stopped; its answer is thrown away)
            return await asyncio.wait_for(asyncio.to_thread(obj.run, args, ctx), timeout)
        except TimeoutError:
            raise PluginTimedOut(
                f"plugin {name} did not answer within its {timeout:g} s",
                "send the request again, or ask whoever maintains the plugin",
            ) from None
        except PluginError as exc:
            raise UsageError(f"plugin {name}: {exc.message}", exc.hint) from None
        except Exception as exc:
            log.exception("plugin %s failed", name)
            raise PluginFailed(
                f"plugin {name} failed: {type(exc).__name__}: {exc}",
                "the supervisor log has its traceback; ask whoever maintains the plugin",
            ) from None


def _on_loop(
    read: Callable[[], dict[str, Any]], loop: asyncio.AbstractEventLoop, timeout: float
) -> Callable[[], dict[str, Any]]:
    """``read`` as a plain plugin may call it from its worker thread: run on the loop's own
    thread, which owns the supervisor's state (the status reads the scheduler's models and
    the gateway's deployments, and the gateway's ``sync()`` changes them: from another thread
    that is a race with every request)."""

    def call() -> dict[str, Any]:
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:  # an async plugin: already where the state lives
            return read()
        answer: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()

        def run() -> None:
            try:
                answer.set_result(read())
            except BaseException as exc:  # the plugin's thread gets it, as if called there
                answer.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return answer.result(timeout)  # bounded: a stopped loop never answers

    return call


def _answer(body: dict[str, Any], name: str, text: str) -> Response:
    """A plugin's answer as OpenAI's chat completion, or its stream of chunks."""
    rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    model = body.get("model") or f"plugin:{name}"
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    headers = {"X-Smackctl-Plugin": name}
    if not body.get("stream"):
        answer = {
            "id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": text}}],
            "usage": usage,
        }  # fmt: skip
        return Response(json.dumps(answer), media_type="application/json", headers=headers)

    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        c = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
        return sse(c)

    async def events() -> AsyncIterator[bytes]:
        yield chunk({"role": "assistant", "content": ""}, None)
        yield chunk({"content": text}, None)
        yield chunk({}, "stop")
        if (body.get("stream_options") or {}).get("include_usage"):
            c: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk", "created": created,
                 "model": model, "choices": [], "usage": usage}  # fmt: skip
            yield sse(c)
        yield DONE

    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
