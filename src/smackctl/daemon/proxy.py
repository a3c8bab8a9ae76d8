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
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

from smackctl.errors import SmackError, UsageError

from .metrics import Metrics
from .scheduler import Managed, Scheduler
from .upstream import Answer, TransportError, Upstream

__all__ = ["Proxy", "UpstreamError"]

log = logging.getLogger("smackctl.requests")


class UpstreamError(SmackError):
    status = 502
    error_type = "runner_error"


def error_body(message: str, error_type: str, code: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": error_type, "code": code}}).encode()


class Proxy:
    def __init__(
        self, scheduler: Scheduler, metrics: Metrics | None = None, request_timeout: float = 600.0
    ) -> None:
        self.scheduler = scheduler
        self.metrics = metrics
        self.http = Upstream(connect_timeout=5.0, read_timeout=request_timeout)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def forward(self, path: str, body: dict[str, Any], request_id: str) -> Response:
        sched = self.scheduler
        m = sched.resolve(body.get("model"))
        if (body.get("logprobs") or body.get("top_logprobs")) and not m.spec.args.get("logits_all"):
            raise UsageError(
                f"{m.name} is loaded without logits for every token, so it cannot return logprobs",
                f"set `args: {{logits_all: true}}` for {m.name} in the profile (it costs "
                "n_ctx × vocabulary × 4 bytes of memory)",
            )
        payload = json.dumps(_with_defaults(body, sched.profile.defaults.model_dump())).encode()
        stream = bool(body.get("stream"))
        started = time.perf_counter()
        for attempt in (1, 2):
            stack = contextlib.AsyncExitStack()
            _, runner = await stack.enter_async_context(sched.slot(m.name))
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
                    return self._finish(m, path, upstream.status, content, started, request_id)
                chunks = upstream.chunks()
                first = await anext(chunks, b"")
                ttft = time.perf_counter() - started
            except TransportError as exc:
                await stack.aclose()
                if attempt == 1 and await _died(runner):
                    log.warning(
                        "%s: runner %s died before answering; retrying once", request_id, m.name
                    )
                    continue
                raise UpstreamError(
                    f"the runner for {m.name} failed before answering: {exc!r}",
                    f"see `smackctl logs {m.name}`",
                ) from exc
            except BaseException:
                await stack.aclose()
                raise
            return StreamingResponse(
                self._relay(m, upstream, chunks, first, stack, started, request_id, path, ttft),
                status_code=upstream.status,
                media_type=upstream.content_type or "text/event-stream",
                headers={
                    "X-Request-Id": request_id,
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
        if status >= 400:
            content, status = _map_error(m.name, status, content)
        else:
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                usage = json.loads(content).get("usage") or {}
                tokens_in, tokens_out = usage.get("prompt_tokens"), usage.get("completion_tokens")

        # the log line, metrics and the SQLite row are written after the response is sent:
        # they cost ~0.3 ms that the client need not wait for. An async task, so Starlette
        # runs it on the loop: a sync one would cost a hop to its thread pool per request.
        async def log_after() -> None:
            self._log(m, path, status, tokens_in, tokens_out, started, request_id)

        return Response(
            content,
            status_code=status,
            headers={"X-Request-Id": request_id},
            media_type="application/json",
            background=BackgroundTask(log_after),
        )

    async def _relay(
        self,
        m: Managed,
        upstream: Answer,
        chunks: AsyncIterator[bytes],
        first: bytes,
        stack: contextlib.AsyncExitStack,
        started: float,
        request_id: str,
        path: str,
        ttft: float,
    ) -> AsyncIterator[bytes]:
        status = 200
        events = first.count(b"data:")
        try:
            if first:
                yield first
            async for chunk in chunks:
                events += chunk.count(b"data:")
                yield chunk
        except TransportError as exc:
            status = 502
            log.warning("%s: stream from %s cut: %r", request_id, m.name, exc)
            msg = (
                f"the runner for {m.name} stopped in the middle of the answer; "
                f"the answer is incomplete (see `smackctl logs {m.name}`)"
            )
            yield b"data: " + error_body(msg, "runner_crashed", "stream_cut") + b"\n\n"
        finally:
            upstream.release()
            await stack.aclose()
            self._log(m, path, status, None, max(0, events - 2), started, request_id, ttft)

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
    ) -> None:
        seconds = time.perf_counter() - started
        log.info(
            "request id=%s model=%s route=%s status=%d tokens_in=%s tokens_out=%s ms=%.1f",
            request_id,
            m.name,
            path,
            status,
            tokens_in,
            tokens_out,
            seconds * 1000,
        )
        m.tokens_out += tokens_out or 0
        if self.metrics is not None:
            self.metrics.request(m.name, path, status, tokens_in, tokens_out, seconds, ttft)
        with contextlib.suppress(Exception):
            self.scheduler.store.log_request(
                m.name, path, status, tokens_in, tokens_out, seconds * 1000, request_id
            )


def new_request_id() -> str:
    # a UUID4: the runner (starlette-context) answers an empty 400 to any other X-Request-Id
    return str(uuid.uuid4())


async def _died(runner: Any) -> bool:
    """Did the runner's process exit (give the kernel a moment to tell us)?"""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(runner.exited.wait(), 2.0)
    return bool(runner.exited.is_set())


def _with_defaults(body: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in body.items() if v is not None}
    for key, value in defaults.items():
        if value is not None and key not in out:
            out[key] = value
    return out


def _map_error(model: str, status: int, content: bytes) -> tuple[bytes, int]:
    try:
        data = json.loads(content)
    except ValueError:
        data = None
    text = content.decode(errors="replace")
    if status >= 500 and "SecurityError" in text:
        return error_body(
            f"the chat template of {model} tried an operation the template sandbox forbids; "
            "the request was refused and nothing ran. Fix: use a trusted GGUF, or set "
            f"`chat_format:` for {model} in the profile",
            "invalid_request_error",
            "unsafe_chat_template",
        ), 400
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return content, status
    detail = data.get("detail") if isinstance(data, dict) else None
    msg = f"the runner for {model} answered {status}: {detail or text[:500]}"
    kind = "invalid_request_error" if status < 500 else "runner_error"
    return error_body(msg, kind), (status if status < 500 else 502)
