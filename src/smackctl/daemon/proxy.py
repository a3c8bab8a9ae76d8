"""Forwarding OpenAI requests to a model's runner.

Streams pass through chunk by chunk as the runner writes them (no buffering, no re-encoding).
A runner that dies before any byte went back to the client gets the request once more after
its restart; a stream cut mid-way ends with an SSE error event, never a fake ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, cast

from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

from smackctl.errors import SmackError, UsageError

from .answers import (
    UpstreamError,
    crash_fix,
    cut_error,
    error_body,
    error_event_of,
    lost_error,
    map_error,
    new_request_id,
    runner_died,
    token_counts,
    wants_tools,
    with_defaults,
)
from .backends import backend_for
from .cache import Cached
from .capabilities import capabilities
from .extras import COUNT, for_runner, is_extra
from .gateway import Gateway
from .metrics import Metrics
from .registry import NEVER
from .route import Router
from .runner import Runner
from .scheduler import Managed, Scheduler
from .schemas import chat_for_runner, unusable
from .translate import MESSAGES, RESPONSES, from_chat, stream_from_chat, to_chat
from .upstream import Answer, TransportError, Upstream

__all__ = ["CHAT", "Proxy", "UpstreamError", "Watchdog", "error_body", "new_request_id"]

CHAT = "/v1/chat/completions"

log = logging.getLogger("smackctl.requests")


class Watchdog:
    """The hang rule for one request: the runner must make progress while the request waits
    on it. A chunk of the answer is progress; after ``POLL`` seconds without one, the runner's
    own progress counter is read on another connection (the backend's ``progress_path``:
    decodes and prompt-batch steps on llama-cpp-python, tokens per slot on llama-server), and
    a counter that moved is progress too. No progress for the model's ``hang_timeout`` means
    hung, even when its HTTP side still answers (a stuck compute thread, a hung GPU kernel):
    the process is SIGKILLed as a crash (``Runner.kill_hung``: restarted with backoff), and
    the request's read fails at once, as after any crash. A slow runner that moves is never
    killed. One timer task a request; a chunk that arrives costs only the assignment of
    ``last``."""

    #: seconds of silence before the counter is read, and between two reads
    POLL = 5.0

    def __init__(self, m: Managed, runner: Runner) -> None:
        self.m, self.runner = m, runner
        self.loop = asyncio.get_running_loop()
        self.last = self.loop.time()
        #: the runner was seen making progress without answering (said once in the log)
        self.moving = False
        self._task = self.loop.create_task(self._run(), name=f"watchdog-{m.name}")

    def stop(self) -> None:
        self._task.cancel()

    async def _run(self) -> None:
        limit = self.m.spec.hang_timeout
        every = min(self.POLL, limit / 4)
        backend = backend_for(self.m.spec)
        seen: int | None = None
        polled = self.loop.time()
        while not self.runner.exited.is_set():
            now = self.loop.time()
            if now - self.last >= limit:
                why = f"no progress for {limit:g}s while answering a request"
                log.warning("%s made %s: killing it", self.m.name, why)
                self.runner.kill_hung(why)
                return
            wake = min(self.last + limit, max(self.last, polled) + every)
            if now < wake:
                await asyncio.sleep(wake - now)
                continue
            try:
                value = await self.runner.progress(
                    backend.progress_path, backend.progress_of, min(every, limit)
                )
            except Exception:  # the rule must outlive any surprise: no reading, no progress
                log.exception("%s: reading the runner's progress failed", self.m.name)
                value = None
            polled = self.loop.time()
            if value is not None:
                if seen is not None and value != seen:
                    self.last = polled
                    if not self.moving:
                        self.moving = True
                        log.info(
                            "%s: no answer for %gs, but it makes progress: waiting",
                            self.m.name,
                            every,
                        )
                seen = value


class Proxy:
    def __init__(
        self, scheduler: Scheduler, metrics: Metrics | None = None, request_timeout: float = 600.0
    ) -> None:
        self.scheduler = scheduler
        self.metrics = metrics
        self.http = Upstream(connect_timeout=5.0, read_timeout=request_timeout)
        self.gateway = Gateway(scheduler, self._forward_named, metrics)
        self.cached = Cached(scheduler, metrics)
        self.router = Router(scheduler, self.forward)

    async def aclose(self) -> None:
        await self.gateway.aclose()
        await self.http.aclose()
        self.cached.close()

    async def forward(
        self,
        path: str,
        body: dict[str, Any],
        request_id: str,
        no_cache: bool = False,
        keep_alive: object = None,
    ) -> Response:
        """``keep_alive``: seconds the model stays loaded once idle after this request (None:
        kept; api.KEEP or anything else that is no number: as it was)."""
        name = body.get("model") or self.scheduler.profile.routing.default_model
        if name == "auto":
            decision = await self.router.decide(path, body)
            log.info("%s: model auto -> %s (%s)", request_id, decision.model, decision.reason)
            answer = await self.forward(
                path, {**body, "model": decision.model}, request_id, no_cache, keep_alive
            )
            answer.headers["X-Smackctl-Route"] = decision.header()
            return answer
        chain = self.gateway.chain(body.get("model"))
        if chain is not None:  # a group, a server elsewhere, a model with fallbacks
            asked = body.get("model") or str(self.scheduler.profile.routing.default_model)
            return await self.gateway.forward(asked, chain, path, body, request_id)
        m = self.scheduler.resolve(body.get("model"))
        if keep_alive is None or isinstance(keep_alive, float):
            m.keep_alive = NEVER if keep_alive is None else keep_alive  # the last one wins
        key = None if no_cache else await self.cached.key(m, path, body)
        if key is None:
            return await self.forward_local(m, path, body, request_id)
        hit = self.cached.hit(key, request_id)
        if hit is not None:
            self._log(m, path, 200, None, None, time.perf_counter(), request_id)
            return hit
        answer = await self.forward_local(m, path, body, request_id)
        self.cached.keep(answer, key, m)
        return answer

    async def _forward_named(
        self, name: str, path: str, body: dict[str, Any], request_id: str
    ) -> Response:
        return await self.forward_local(self.scheduler.resolve(name), path, body, request_id)

    async def forward_local(
        self, m: Managed, path: str, body: dict[str, Any], request_id: str
    ) -> Response:
        """A request to a model whose runner the supervisor runs."""
        sched = self.scheduler
        started = time.perf_counter()
        try:
            await self._refuse_what_it_cannot_serve(m, path, body)
            if is_extra(path, body):
                info = await sched.loader.gguf_info(m)
                backend = backend_for(m.spec)
                to, asked = for_runner(m.name, m.spec.args, backend, info, path, body)
                return await self._forward(m, to, asked, request_id, started, path)
            if path in (MESSAGES, RESPONSES) and path not in backend_for(m.spec).native_apis:
                return await self._translated(m, path, body, request_id, started)
            return await self._forward(m, path, body, request_id, started)
        except SmackError as exc:  # the usage log counts failed requests too
            self._log(m, path, exc.status, None, None, started, request_id, reason=exc.message)
            exc.logged = True  # type: ignore[attr-defined]  # api.py: not again as a refusal
            raise

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
            return answer  # api.py puts an Anthropic request's error in Anthropic's shape
        data = json.loads(bytes(answer.body))
        return Response(
            json.dumps(from_chat(path, data, {**body, "model": m.name})).encode(),
            media_type="application/json",
            headers={"X-Request-Id": request_id, "X-Smackctl-Deployment": m.name},
            background=answer.background,
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
        info = await self.scheduler.loader.gguf_info(m)  # read once per model file
        if info is None and not self.scheduler.registry.model_file(m).is_file():
            # not pulled yet: the file decides, so pull (and load) it first; before, a base
            # model's first chat got an empty answer and a 200
            await self.scheduler.ensure_ready(m.name)
            info = await self.scheduler.loader.gguf_info(m)
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
        for other in self.scheduler.models.values():
            if other.name != besides:
                info = await self.scheduler.loader.gguf_info(other)
                if info is not None and capabilities(other.spec, info)[capability]:
                    able.append(other.name)
        return f" ({', '.join(sorted(able)[:5])} can)" if able else ""

    async def _forward(
        self,
        m: Managed,
        path: str,
        body: dict[str, Any],
        request_id: str,
        started: float,
        route: str | None = None,
    ) -> Response:
        """``route``: the one the client asked, for the request log (a translated request
        goes to the runner as a chat request)."""
        sched = self.scheduler
        stream = bool(body.get("stream"))
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        # the model's own name, also when the request named an alias or none: the answer's
        # `model` is then that name, not the runner's file path. Streams always end with the
        # usage event (llama-server sends it when asked; host.py always), for the usage log
        body = {**body, "model": m.name}
        if path == CHAT:
            backend = backend_for(m.spec)
            body = chat_for_runner(body, backend.content_parts, backend.json_schema_format)
        if stream and path in (CHAT, "/v1/completions"):
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        payload = json.dumps(with_defaults(body, sched.profile.defaults.model_dump())).encode()
        for attempt in (1, 2):
            stack = contextlib.AsyncExitStack()
            _, runner = await stack.enter_async_context(sched.slot(m.name, len(payload)))
            dog = Watchdog(m, runner)  # until the answer is over (the stack closes)
            stack.callback(dog.stop)
            headers = {
                "Authorization": f"Bearer {runner.api_key}",
                "Content-Type": "application/json",
                "X-Request-Id": request_id,
            }
            try:
                upstream = await self.http.post(*runner.address, path, payload, headers)
                if upstream.status >= 400 or not stream:
                    content = await upstream.read()
                    await stack.aclose()
                    return self._finish(
                        m, route or path, upstream.status, content, started, request_id
                    )
                chunks = upstream.chunks()
                first = await anext(chunks, b"")
                ttft = time.perf_counter() - started
                if (failed := error_event_of(first)) is not None:
                    # before any token: the client gets the error's status and JSON, never
                    # a 200 stream that just ends
                    async for _ in chunks:
                        pass
                    await stack.aclose()
                    return self._finish(m, route or path, 500, failed, started, request_id)
            except TransportError as exc:
                await stack.aclose()
                if sched.cut.is_set():
                    raise cut_error(m.name) from exc
                died = await runner_died(runner)
                if attempt == 1 and died:
                    log.warning(
                        "%s: the runner for %s %s before answering; retrying once",
                        request_id,
                        m.name,
                        runner.exit_description(),
                    )
                    continue
                raise lost_error(m.name, runner, exc, died, retried=attempt == 2) from exc
            except BaseException:
                await stack.aclose()
                raise
            relay = _Relay(self, m, runner, upstream, stack, started, request_id, path, ttft, dog)
            relay.route = route or path
            return StreamingResponse(
                relay.body(chunks, first, wants_usage),
                status_code=upstream.status,
                media_type=upstream.content_type or "text/event-stream",
                headers={
                    "X-Request-Id": request_id,
                    "X-Smackctl-Deployment": m.name,  # who answered, as the gateway says too
                    "Cache-Control": "no-cache",
                    "X-Accel-Buffering": "no",
                },
            )
        raise AssertionError("unreachable")

    def _finish(
        self,
        m: Managed,
        path: str,
        status: int,
        content: bytes,
        started: float,
        request_id: str,
    ) -> Response:
        tokens_in = tokens_out = None
        reason = None
        if status >= 400:
            content, status = map_error(m.name, status, content)
            with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
                reason = json.loads(content)["error"]["message"]
        else:
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                tokens_in, tokens_out = token_counts(json.loads(content))

        # the log line, metrics and the SQLite row are written after the response is sent:
        # they cost ~0.3 ms that the client need not wait for. An async task, so Starlette
        # runs it on the loop: a sync one would cost a hop to its thread pool per request.
        async def log_after() -> None:
            self._log(m, path, status, tokens_in, tokens_out, started, request_id, reason=reason)

        return Response(
            content,
            status_code=status,
            headers={"X-Request-Id": request_id, "X-Smackctl-Deployment": m.name},
            media_type="application/json",
            background=BackgroundTask(log_after),
        )

    def _log(
        self,
        m: Managed,
        path: str,
        status: int,
        tokens_in: int | None,
        tokens_out: int | None,
        started: float,
        request_id: str,
        ttft: float | None = None,
        reason: str | None = None,
    ) -> None:
        """``reason``: a failed request's error message, for its log line."""
        seconds = time.perf_counter() - started
        log.info(
            "request id=%s model=%s route=%s status=%d tokens_in=%s tokens_out=%s ms=%.1f%s",
            request_id,
            m.name,
            path,
            status,
            tokens_in,
            tokens_out,
            seconds * 1000,
            f" reason={' '.join(reason.split())[:300]}" if reason else "",
        )
        m.tokens_out += tokens_out or 0
        if self.metrics is not None:
            self.metrics.request(m.name, path, status, tokens_in, tokens_out, seconds, ttft)
        with contextlib.suppress(Exception):
            self.scheduler.store.log_request(
                m.name, path, status, tokens_in, tokens_out, seconds * 1000, request_id
            )


class _Relay:
    """A streamed answer on its way from a runner to the client: chunks pass through as they
    come; the usage event the runner program adds at the end (host.py) is kept for the usage
    log and passed on only to a client that asked for it (``stream_options.include_usage``);
    a runner that dies mid-way ends the stream with an error event that says so."""

    def __init__(
        self,
        proxy: Proxy,
        m: Managed,
        runner: Runner,
        upstream: Answer,
        stack: contextlib.AsyncExitStack,
        started: float,
        request_id: str,
        path: str,
        ttft: float,
        dog: Watchdog,
    ) -> None:
        self.proxy, self.m, self.runner, self.upstream, self.stack = (
            proxy,
            m,
            runner,
            upstream,
            stack,
        )
        self.started, self.request_id, self.path, self.ttft = started, request_id, path, ttft
        self.route = path  # what the request log says: the client's route
        self.dog = dog
        self.tokens_in: int | None = None
        self.tokens_out: int | None = None

    def _usage_of(self, chunk: bytes, wants_usage: bool) -> bytes:
        """``chunk`` without the usage event unless the client asked for it; its counts kept."""
        if b'"usage"' not in chunk:
            return chunk
        if self.path != CHAT and self.path != "/v1/completions":
            # Anthropic's and the Responses API's own events (llama-server's): kept whole
            for event in chunk.split(b"\n\n"):
                with contextlib.suppress(ValueError, AttributeError, TypeError, IndexError):
                    got_in, got_out = token_counts(json.loads(event.split(b"data:", 1)[1]))
                    self.tokens_in = got_in if got_in is not None else self.tokens_in
                    self.tokens_out = got_out if got_out is not None else self.tokens_out
            return chunk
        kept = []
        for event in chunk.split(b"\n\n"):
            if b'"usage"' in event and (b'"choices": []' in event or b'"choices":[]' in event):
                with contextlib.suppress(ValueError, AttributeError, TypeError, IndexError):
                    usage = json.loads(event.split(b"data:", 1)[1]).get("usage") or {}
                    self.tokens_in = usage.get("prompt_tokens")
                    self.tokens_out = usage.get("completion_tokens")
                if not wants_usage:
                    continue
            kept.append(event)
        return b"\n\n".join(kept)

    async def body(
        self, chunks: AsyncIterator[bytes], first: bytes, wants_usage: bool
    ) -> AsyncIterator[bytes]:
        status = 200
        events = first.count(b"data:")
        failed = False  # an error event ended the answer: no [DONE] after it
        try:
            if first := self._usage_of(first, wants_usage):
                yield first
            async for chunk in chunks:
                self.dog.last = self.dog.loop.time()  # a sign of life: the hang rule restarts
                events += chunk.count(b"data:")
                if failed and b"[DONE]" in chunk:
                    continue
                failed = failed or error_event_of(chunk) is not None
                if chunk := self._usage_of(chunk, wants_usage):
                    yield chunk
        except TransportError as exc:
            status = 502
            log.warning("%s: stream from %s cut: %s", self.request_id, self.m.name, exc)
            if self.proxy.scheduler.cut.is_set():
                cut = cut_error(self.m.name)
                msg = f"{cut.message}. Fix: {cut.hint}"
                yield b"data: " + error_body(msg, cut.error_type, "drain_timeout") + b"\n\n"
                return
            died = await runner_died(self.runner)
            got = max(0, events - 1)
            where = f"after {got} token{'s' if got != 1 else ''} of the answer"
            if died:
                what = f"the runner for {self.m.name} {self.runner.exit_description()} {where}"
            else:
                what = f"the connection to the runner for {self.m.name} broke {where} ({exc})"
            msg = f"{what}; the answer is incomplete. Fix: {crash_fix(self.m.name, self.runner)}"
            yield b"data: " + error_body(msg, "runner_crashed", "stream_cut") + b"\n\n"
        finally:
            self.upstream.release()
            await self.stack.aclose()
            out = self.tokens_out if self.tokens_out is not None else max(0, events - 2)
            self.proxy._log(
                self.m,
                self.route,
                status,
                self.tokens_in,
                out,
                self.started,
                self.request_id,
                self.ttft,
            )
