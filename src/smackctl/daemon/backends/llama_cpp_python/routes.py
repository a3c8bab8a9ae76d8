"""The runner program's own routes besides llama_cpp.server's: ``POST /smackctl/load`` (take
another model in this process), ``POST /smackctl/free`` (free the one kept beside it),
``POST /smackctl/count`` (a chat request's prompt tokens), ``GET /smackctl/alive`` (the
progress count). Each but ``alive`` needs the runner's key, compared in constant time; no
route takes a path from its caller."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
from typing import Any

from . import kvstore
from .patches import PROGRESS
from .words import log_path, same_key

__all__ = ["KEPT", "add_routes", "count_chat", "redirect_output", "settings"]

#: server settings that a load may not change: the process keeps its address and key
KEPT = ("host", "port", "api_key")


def parser() -> argparse.ArgumentParser:
    from llama_cpp.server.cli import add_args_from_model
    from llama_cpp.server.settings import Settings

    parser = argparse.ArgumentParser(prog="smackctl runner", exit_on_error=False)
    add_args_from_model(parser, Settings)
    return parser


def _settings(parser: argparse.ArgumentParser, args: list[str]) -> tuple[Any, Any]:
    """(ServerSettings, ModelSettings) from llama_cpp.server's flags, as its ``__main__``."""
    from llama_cpp.server.cli import parse_model_from_args
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    ns, unknown = parser.parse_known_args(args)
    if unknown:
        raise ValueError(f"unrecognized arguments: {' '.join(unknown)}")
    return parse_model_from_args(ServerSettings, ns), parse_model_from_args(ModelSettings, ns)


def settings(parser: argparse.ArgumentParser, args: list[str]) -> tuple[Any, Any]:
    """(ServerSettings, ModelSettings) from llama_cpp.server's flags, as its ``__main__``."""
    from llama_cpp.server.cli import parse_model_from_args
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    ns, unknown = parser.parse_known_args(args)
    if unknown:
        raise ValueError(f"unrecognized arguments: {' '.join(unknown)}")
    return parse_model_from_args(ServerSettings, ns), parse_model_from_args(ModelSettings, ns)


def redirect_output(path: str) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


async def alive(request: Any) -> Any:
    """``{"progress": N}``: answered from the event loop without llama_cpp.server's locks, so
    it answers while a request is being computed (its /v1/models waits for that request);
    the supervisor reads it while a request is in flight (the hang rule)."""
    from starlette.responses import JSONResponse

    return JSONResponse({"progress": PROGRESS[0]})


def count_chat(llama: Any, body: dict[str, Any]) -> int:
    """The tokens of a chat request's prompt as the model sees it: its messages (and tools)
    rendered by the chat template the runner answers with, then tokenized.

    The GGUF's own template (the default) and a named formatter (``chat_format: chatml``…)
    are rendered exactly; a handler without a formatter (``chatml-function-calling``,
    functionary) is counted as ChatML, which its prompt is built on."""
    from llama_cpp import llama_chat_format as formats

    messages, tools = body.get("messages") or [], body.get("tools")
    template = llama.metadata.get("tokenizer.chat_template")
    if llama.chat_format == "chat_template.default" and template:
        vocab = llama._model

        def text(token: int) -> str:
            return vocab.token_get_text(token) if token >= 0 else ""

        formatter: Any = formats.Jinja2ChatFormatter(
            template=template,
            eos_token=text(llama.token_eos()),
            bos_token=text(llama.token_bos()),
        )
    else:
        name = str(llama.chat_format or "chatml").replace("-", "_")
        formatter = getattr(formats, f"format_{name}", formats.format_chatml)
    prompt = formatter(messages=messages, tools=tools).prompt
    return len(llama.tokenize(prompt.encode(), add_bos=False, special=True))


def _count_route(server: Any) -> Any:
    """``POST /smackctl/count`` (the runner's key), a chat request's body: ``{"input_tokens":
    N}``, what Anthropic's ``/v1/messages/count_tokens`` answers (llama-server has it)."""
    from llama_cpp.server import app as llama_app
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    async def count(request: Request) -> JSONResponse:
        if not same_key(request.headers.get("authorization"), server.api_key or ""):
            return JSONResponse({"message": "bad or missing bearer key"}, status_code=401)
        try:
            body = json.loads(await request.body())
            async with contextlib.asynccontextmanager(llama_app.get_llama_proxy)() as proxy:
                n = await run_in_threadpool(count_chat, proxy(None), body)
        except Exception as exc:  # a template that fails on these messages: theirs to fix
            error = {"message": f"cannot count: {exc}", "type": "invalid_request_error"}
            return JSONResponse({"error": error}, status_code=400)
        return JSONResponse({"input_tokens": n})

    return count


def _routes(parser: argparse.ArgumentParser, server: Any) -> tuple[Any, Any, Any]:
    from llama_cpp.server import app as llama_app
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    #: settings parsed per order: swaps go back and forth between the same few models, and a
    #: parse costs 4-7 ms of a swap here
    parsed: dict[tuple[str, ...], tuple[Any, Any]] = {}

    def answer(status: int, message: str) -> JSONResponse:
        return JSONResponse({"status": status, "message": message}, status_code=status)

    def refused(request: Request) -> JSONResponse | None:
        if not same_key(request.headers.get("authorization"), server.api_key or ""):
            return answer(401, "bad or missing bearer key")
        return None

    kept: list[Any] = []  # LlamaProxy objects whose model waits for /smackctl/free
    kept_lock = threading.Lock()  # a load and a free may both come to free them

    def free_kept() -> int:
        with kept_lock:
            n = len(kept)
            while kept:
                kept.pop().free()
        if n:
            print(f"smackctl runner: freed {n} previous model(s)", file=sys.stderr, flush=True)
        return n

    def swap(old: Any, model: Any, keep_old: bool) -> None:
        free_kept()
        if not keep_old:
            old.free()
            print("smackctl runner: freed the previous model", file=sys.stderr, flush=True)
        llama_app.set_llama_proxy([model])
        if keep_old:
            with kept_lock:
                kept.append(old)

    async def load(request: Request) -> JSONResponse:
        if (no := refused(request)) is not None:
            return no
        try:
            order = json.loads(await request.body())
            key = tuple(order["args"])
            log = log_path(order["log"]) if order.get("log") else None
            if key not in parsed:
                parsed[key] = settings(parser, list(key))
            new_server, model = parsed[key]
        except (argparse.ArgumentError, ValueError, KeyError, TypeError) as exc:
            return answer(400, f"cannot read the order: {exc}")
        changed = [
            k
            for k in type(server).model_fields
            if k not in KEPT and getattr(new_server, k) != getattr(server, k)
        ]
        if changed:
            return answer(409, f"server settings differ: {', '.join(changed)}")
        async with contextlib.asynccontextmanager(llama_app.get_llama_proxy)() as old:
            if order.get("save_kv"):  # the model that goes keeps its conversations: taken
                # now, written while the next one loads (the swap waits for no disk)
                await run_in_threadpool(_save, old(None), int(order["save_kv"]), True)
            if log is not None:
                redirect_output(log)
            print(f"smackctl runner: loading {model.model}", file=sys.stderr, flush=True)
            try:
                # on the event loop's thread, as llama_cpp.server swaps: the load allocates
                # from the main arena, which holds what earlier models freed. From a worker
                # thread's arena, a SmolLM2 load after freeing Gemma 3 took 13k page faults
                # here against 1.8k, and the process settled at ~337 MiB against ~279 MiB
                swap(old, model, bool(order.get("keep_old")))
            except Exception as exc:  # llama.cpp's reason is in the log above
                return answer(500, f"{type(exc).__name__}: {exc}")
        return answer(200, f"loaded {model.model}")

    async def save_kv(request: Request) -> JSONResponse:
        """``POST /smackctl/kv/save`` ``{"max_bytes": N}``: the model's KV cache to disk
        (``kvstore.py``), then the folder held to N bytes."""
        if (no := refused(request)) is not None:
            return no
        try:
            cap = int(json.loads(await request.body() or b"{}").get("max_bytes") or 0)
        except (ValueError, TypeError, AttributeError):
            return answer(400, 'send {"max_bytes": N}')
        async with contextlib.asynccontextmanager(llama_app.get_llama_proxy)() as proxy:
            result = await run_in_threadpool(_save, proxy(None), cap)
        return JSONResponse(result)

    async def free(request: Request) -> JSONResponse:
        if (no := refused(request)) is not None:
            return no
        # not under the app's locks: a request to the new model need not wait for it
        return answer(200, f"freed {await run_in_threadpool(free_kept)} old model(s)")

    return load, free, save_kv


def _save(llama: Any, cap: int, background: bool = False) -> dict[str, Any]:
    """Save the model's KV cache and hold the folder to ``cap`` bytes; never raises (a save
    that fails costs the next turn its prefix, nothing else). ``background``: written on a
    thread while the caller goes on (``kvstore.save``)."""
    try:
        root = kvstore.kv_root()

        def prune() -> None:
            if cap and root:
                kvstore.prune(root, cap)

        return kvstore.save(llama, background, then=prune)
    except Exception as exc:  # noqa: BLE001 - said in the log and the answer
        print(f"smackctl runner: the KV cache was not saved: {exc}", file=sys.stderr, flush=True)
        return {"saved": False, "why": str(exc)}


def add_routes(app: Any, parser: argparse.ArgumentParser, server: Any) -> None:
    load, free, save_kv = _routes(parser, server)
    app.add_route("/smackctl/load", load, methods=["POST"])
    app.add_route("/smackctl/kv/save", save_kv, methods=["POST"])
    app.add_route("/smackctl/free", free, methods=["POST"])
    app.add_route("/smackctl/alive", alive, methods=["GET"])
    app.add_route("/smackctl/count", _count_route(server), methods=["POST"])
