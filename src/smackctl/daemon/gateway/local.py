"""Requests to the models whose runners the supervisor runs: what a model cannot serve is
refused first (naming one that can), a deterministic request is answered from the response
cache when it can be, an Anthropic or Responses request is asked of a runner that speaks only
chat as a chat request and answered in its own API's shape, and the request goes to the
runner (``Runners``)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any, cast

from starlette.responses import Response, StreamingResponse

from smackctl.config import ModelSpec
from smackctl.daemon.answers import wants_tools, with_defaults
from smackctl.daemon.backends.base import backend_for
from smackctl.daemon.capabilities import capabilities
from smackctl.daemon.extras import COUNT, for_runner, is_extra
from smackctl.daemon.loader import Loader
from smackctl.daemon.registry import NEVER, Managed, Registry
from smackctl.daemon.scheduler import Scheduler
from smackctl.daemon.shape import chat_for_runner, unusable
from smackctl.daemon.translate import MESSAGES, RESPONSES, from_chat, stream_from_chat, to_chat
from smackctl.daemon.usage import Usage
from smackctl.errors import SmackError, UsageError

from .cached import Cached
from .call import KEEP, Call
from .relay import CHAT, COMPLETIONS, Runners

__all__ = ["LocalModels"]


class LocalModels:
    def __init__(
        self,
        scheduler: Scheduler,
        loader: Loader,
        registry: Registry,
        runners: Runners,
        cached: Cached,
        usage: Usage,
    ) -> None:
        self.scheduler, self.loader, self.registry = scheduler, loader, registry
        self.runners, self.cached, self.usage = runners, cached, usage

    def spec_of(self, name: str) -> ModelSpec:
        return self.registry.resolve(name).spec

    def busy(self, name: str) -> int:
        """Requests in flight and queued, for a group's ``least-busy`` policy."""
        m = self.registry.models.get(name)
        if m is None:
            return 0
        return m.in_flight + (m.runner.slots.queued if m.runner is not None else 0)

    async def send(self, name: str, call: Call) -> Response:
        """``call`` to the model ``name``: from the cache when it holds the answer, else from
        its runner (the answer kept in the cache when it may be)."""
        m = self.registry.resolve(name)
        if call.keep_alive != KEEP:  # the last request's word wins, Ollama's way
            m.keep_alive = NEVER if call.keep_alive is None else float(call.keep_alive)
        key = None if call.no_cache else await self.cached.key(m, call.path, call.body)
        if key is None:
            return await self.forward(m, call.path, call.body, call.request_id)
        hit = await self.cached.hit(key, m)
        if hit is not None:
            self.usage.record(m.name, call.path, 200, call.request_id)
            return hit
        answer = await self.forward(m, call.path, call.body, call.request_id)
        self.cached.keep(answer, key, m)
        return answer

    async def forward(
        self, m: Managed, path: str, body: dict[str, Any], request_id: str
    ) -> Response:
        """A request to ``m``'s runner (refused first when ``m`` cannot serve it)."""
        started = time.perf_counter()
        try:
            await self._refuse_what_it_cannot_serve(m, path, body)
            if is_extra(path, body):
                info = await self.loader.gguf_info(m)
                to, asked = for_runner(m.name, m.spec.args, backend_for(m.spec), info, path, body)
                return await self._forward(m, to, asked, request_id, started, path)
            if path in (MESSAGES, RESPONSES) and path not in backend_for(m.spec).native_apis:
                return await self._translated(m, path, body, request_id, started)
            return await self._forward(m, path, body, request_id, started, path)
        except SmackError as exc:  # the usage log counts failed requests too
            self.usage.record(
                m.name, path, exc.status, request_id,
                seconds=time.perf_counter() - started, reason=exc.message,
            )  # fmt: skip
            exc.logged = True  # type: ignore[attr-defined]  # the API: not again as a refusal
            raise

    async def _forward(
        self,
        m: Managed,
        path: str,
        body: dict[str, Any],
        request_id: str,
        started: float,
        route: str,
    ) -> Response:
        """``body`` as the runner takes it: the model's own name (also when the request
        named an alias or none: the answer's `model` is then that name, not the runner's file
        path), a chat in the backend's shape, the profile's defaults, and a stream that ends
        with its usage event (for the usage log; the client gets it if it asked)."""
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        body = {**body, "model": m.name}
        if path == CHAT:
            backend = backend_for(m.spec)
            # only chatml-function-calling asserts on `required` (functionary takes it)
            any_tool = m.spec.chat_format != "chatml-function-calling"
            body = chat_for_runner(
                body, backend.content_parts, backend.json_schema_format, any_tool
            )
        if body.get("stream") and path in (CHAT, COMPLETIONS):
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        body = with_defaults(body, self.scheduler.profile.defaults.model_dump())
        return await self.runners.forward(m, path, body, request_id, started, route, wants_usage)

    async def _translated(
        self, m: Managed, path: str, body: dict[str, Any], request_id: str, started: float
    ) -> Response:
        """An Anthropic or Responses request to a runner that speaks only chat: asked as
        a chat request, answered in the API's own shape (translate.py)."""
        try:
            chat = to_chat(path, body)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # what the schema let through and the translation cannot read: the request's fault
            raise UsageError(
                f"the request cannot be read as a conversation ({type(exc).__name__}: {exc})",
                "check its messages against the API reference",
            ) from None
        answer = await self._forward(m, CHAT, chat, request_id, started, path)
        if isinstance(answer, StreamingResponse):
            return StreamingResponse(
                stream_from_chat(
                    path,
                    cast(AsyncIterator[bytes], answer.body_iterator),  # the relay yields bytes
                    {**body, "model": m.name},
                ),
                status_code=answer.status_code,
                media_type="text/event-stream",
                headers={k: v for k, v in answer.headers.items() if k.startswith("x-")},
            )
        if answer.status_code >= 400:
            return answer  # the API route puts an Anthropic request's error in its shape
        data = json.loads(bytes(answer.body))
        return Response(
            json.dumps(from_chat(path, data, {**body, "model": m.name})).encode(),
            media_type="application/json",
            background=answer.background,
            headers={k: v for k, v in answer.headers.items() if k.startswith("x-smackctl-")},
        )

    async def _refuse_what_it_cannot_serve(
        self, m: Managed, path: str, body: dict[str, Any]
    ) -> None:
        if (
            (body.get("logprobs") or body.get("top_logprobs"))
            and not backend_for(m.spec).logprobs
            and not m.spec.args.get("logits_all")
        ):
            raise UsageError(
                f"{m.name} is loaded without logits for every token, so it cannot return logprobs",
                f"set `args: {{logits_all: true}}` for {m.name} in the profile (it costs "
                "n_ctx × vocabulary × 4 bytes of memory)",
            )
        backend = backend_for(m.spec)
        if path == CHAT and (why := unusable(body, multimodal=bool(m.spec.args.get("mmproj")))):
            raise UsageError(
                f"{m.name} cannot honour {why}",
                "drop it from the request, or send it to a model that can",
            )
        arg = backend.embeddings_arg
        if path == "/v1/embeddings" and not m.spec.args.get(arg):
            raise UsageError(
                f"{m.name} is not loaded to serve embeddings",
                f"set `args: {{{arg}: true}}` for {m.name} in the profile, or send the request "
                f"to a model that has it{await self._able('embeddings', m.name)}",
            )
        if path not in (CHAT, MESSAGES, RESPONSES, COUNT):
            return
        if m.spec.chat is False:  # the profile says: a base model (before any pull)
            raise self._base_model(m, "its profile entry says `chat: false` (a base model)")
        tools = wants_tools(body)
        if not tools and m.spec.chat_format is not None:
            return  # nothing below to check: no tools, and a chat format the user chose
        info = await self.loader.gguf_info(m)  # read once per model file
        if info is None and not self.registry.model_file(m).is_file():
            # not pulled yet: the file decides, so pull (and load) it first; before, a base
            # model's first chat got an empty answer and a 200
            await self.scheduler.ensure_ready(m.name)
            info = await self.loader.gguf_info(m)
        if tools and not backend.handles_tools(m.spec, info):
            raise UsageError(
                f"{m.name} cannot call tools: its chat template does not handle `tools`, "
                "so the model would never see them and answer in text",
                "send the request to a model whose template handles tools"
                f"{await self._able('tools', m.name)}, or for "
                "llama-cpp-python set `chat_format: chatml-function-calling` for "
                f"{m.name} in the profile (ChatML models such as SmolLM2)",
            )
        if m.spec.chat_format is None and info is not None and not info.has_chat_template:
            raise self._base_model(
                m,
                "it has no chat template in its GGUF file (a base model)",
                await self._able("chat", m.name),
            )

    @staticmethod
    def _base_model(m: Managed, why: str, able: str = "") -> UsageError:
        return UsageError(
            f"{m.name} cannot answer chat messages: {why}; it would answer nothing",
            f"send it a text completion instead (`smackctl complete -m {m.name} TEXT`, or "
            f"`POST /v1/completions` with a `prompt`), send the chat to a chat model{able}, "
            f"or set `chat_format:` for {m.name} in the profile (for example `chatml`) if it "
            "was trained for chat",
        )

    async def _able(self, capability: str, besides: str) -> str:
        """ " (these can: a, b)" for the models of the profile that have ``capability`` (their
        files read once each; only on a refusal's path), or "" when none has."""
        able = []
        for other in self.registry.models.values():
            if other.name != besides:
                info = await self.loader.gguf_info(other)
                if info is not None and capabilities(other.spec, info)[capability]:
                    able.append(other.name)
        return f" ({', '.join(sorted(able)[:5])} can)" if able else ""
