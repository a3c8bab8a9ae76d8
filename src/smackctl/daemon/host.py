"""The runner program: ``python -m smackctl.daemon.host [--spare | FLAG…]``.

It serves one model with llama_cpp.server's own app, settings and flags (the same as
``python -m llama_cpp.server FLAG…``), and adds one route, ``POST /smackctl/load``, so that
the process can take another model when the supervisor unloads the one it holds: a swap
then happens in a warm process, as llama_cpp.server's ``--config_file`` swaps do, instead of
paying a new process's start (measured in BENCHMARKS.md, line 4).

Its bearer key comes from the environment (``SMACKCTL_RUNNER_KEY``, removed from it once
read) or from the spare's order, never from the command line, which any local user can read
in ``ps``; it is compared in constant time, on llama_cpp.server's routes too. Its log folder
is fixed at start (``SMACKCTL_RUNNER_LOGS``): an order names a file in it, never a path.

``--spare``: import everything (~0.85 s here: FastAPI, pydantic settings, numpy, the llama.cpp
library), print ``spare: ready`` and wait on stdin for one order, a JSON line
``{"args": [FLAG…], "log": "runner-NAME.log", "key": KEY}``; then serve as above. End of stdin
without an order: exit quietly (the supervisor let it go).

``POST /smackctl/load`` (the runner's own bearer key), body
``{"args": [FLAG…], "log": "runner-NAME.log", "keep_old": BOOL}``: with every request of the
app held off (llama_cpp.server's own locks), free the model and load the one ``args`` names,
on the event loop's thread as llama_cpp.server loads; 200 once it answers, 400 for flags it
cannot read, 409 when they change a server setting (a fresh process is needed), 500 with llama.cpp's
error when the load fails (the process then holds no model and the supervisor ends it).
``log``: the output goes to that file of the log folder from then on.

``keep_old`` (only when memory has room for both models, which the supervisor decides):
load first and free the old model later, on ``POST /smackctl/free``, which the supervisor
sends once the new model's first request is answered. Freeing Gemma 3's 262k-token
vocabulary takes 50-80 ms here; before a load it adds that to the swap, and beside a load
it slowed the load by as much (measured: both in BENCHMARKS.md). A load frees whatever is
still kept first.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import importlib
import json
import os
import re
import sys
import threading
from typing import Any

#: what uvicorn imports only once it runs (~25 ms here, measured after an order arrived):
#: the HTTP protocol, the lifespan, the loop setup, and the IDNA codec for the host name
LATE_IMPORTS = (
    "uvicorn.protocols.http.auto",
    "uvicorn.protocols.http.h11_impl",
    "uvicorn.protocols.websockets.auto",
    "uvicorn.lifespan.on",
    "uvicorn.loops.auto",
    "uvicorn.loops.asyncio",
    "encodings.idna",
)

#: server settings that a load may not change: the process keeps its address and key
_KEPT = ("host", "port", "api_key")

#: where the runner's key and its log folder come from (set by the supervisor at spawn)
KEY_ENV = "SMACKCTL_RUNNER_KEY"
LOGS_ENV = "SMACKCTL_RUNNER_LOGS"
#: the only log names an order may give: a file of the log folder, never a path
_LOG_NAME = re.compile(r"runner-[A-Za-z0-9][A-Za-z0-9._-]{0,80}\.log")


def log_path(name: object) -> str:
    """The file of the log folder an order names; ValueError for anything else (a path, a
    name with '..')."""
    if not isinstance(name, str) or not _LOG_NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"not a runner log's name: {str(name)[:80]!r}")
    return os.path.join(os.environ.get(LOGS_ENV) or os.getcwd(), name)


def same_key(given: str | None, key: str) -> bool:
    """A bearer header's key against ours, in constant time; no key of ours: never."""
    return bool(key) and hmac.compare_digest((given or "").encode(), f"Bearer {key}".encode())


#: the lines written to the log as a request goes, so that the supervisor can say what the
#: process was doing if it dies (``Runner.activity``): one as a prompt's decode begins, one
#: as the answer's generation begins, one when the answer ends. Three short lines a request.
HOST_PROMPT = "smackctl.daemon.host: decoding "
HOST_GENERATING = "smackctl.daemon.host: generating after "
HOST_ANSWERED = "smackctl.daemon.host: answered"

#: llama.cpp's log levels (ggml.h's ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4,
#: CONT 5) as logging's ranks. llama-cpp-python 0.3.36's own table is of an older enum (1 INFO
#: ... 4 DEBUG), so it writes debug lines as info and drops errors as debug when quiet.
#: Debug lines (``llama_graph_n_input_tensors``, thousands per start) are written only with
#: SMACKCTL_RUNNER_DEBUG=1.
_GGML_CONT = 5
_GGML_RANK = {0: 50, 1: 10, 2: 20, 3: 30, 4: 40}


def _quiet_llama_log() -> None:
    """llama.cpp's log without its debug lines. llama-cpp-python's own callback writes every
    level, debug included, when a model is loaded with ``verbose`` (the server's default);
    this one drops debug lines (and the continuation lines that follow one) unless
    SMACKCTL_RUNNER_DEBUG is set, and keeps llama-cpp-python's quiet mode for ``verbose``
    off."""
    import ctypes
    import logging

    import llama_cpp
    from llama_cpp import _logger

    debug = os.environ.get("SMACKCTL_RUNNER_DEBUG", "") not in ("", "0")
    last = [logging.INFO]

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def callback(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        rank = last[0] if level == _GGML_CONT else _GGML_RANK.get(level, logging.INFO)
        last[0] = rank
        if rank < logging.INFO and not debug:
            return
        if _logger.logger.level <= max(rank, logging.INFO):
            sys.stderr.write(text.decode("utf-8", errors="replace"))
            sys.stderr.flush()

    _quiet_llama_log.callback = callback  # type: ignore[attr-defined]  # kept alive: C holds it
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


#: the token counts of the request being answered (llama_cpp.server answers one at a time)
USAGE: dict[str, int] = {}

#: how far the process's work has gone: one step a decode, and one a graph node while a
#: prompt's batch is decoded (``_count_progress``). Read by ``/smackctl/alive``: a counter
#: that stops while a request is in flight means a stuck compute thread (the hang rule).
PROGRESS = [0]


def error_event(exc: Exception) -> dict[str, Any]:
    """The event a stream ends with when the answer failed: llama_cpp.server's own streams
    just stop (200, an empty body). ``type`` is the exception's class (SecurityError: the
    chat template's sandbox refused it), for the supervisor to map."""
    print(f"smackctl.daemon.host: the answer failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    return {"error": {"message": str(exc), "type": type(exc).__name__, "code": "runner_error"}}


def _stream_usage() -> None:
    """End every stream with a usage event, as OpenAI does for ``stream_options:
    {include_usage: true}`` (``choices: []`` and ``usage``), which llama_cpp.server never
    sends: the supervisor logs its counts, and passes it on to clients that asked for it."""
    from llama_cpp.server import app as llama_app

    publish = llama_app.get_event_publisher
    if getattr(publish, "_smackctl", False):
        return

    def with_usage(chunks: Any) -> Any:
        last = None
        try:
            for chunk in chunks:
                last = chunk
                yield chunk
        except Exception as exc:  # an error answer, not a stream that just stops
            yield error_event(exc)
            return
        finally:
            chunks.close()  # a client gone mid-answer: llama.cpp's generator ends now
        if last is not None and USAGE:
            p, c = USAGE["prompt_tokens"], USAGE["completion_tokens"]
            yield {
                **{k: last.get(k) for k in ("id", "object", "created", "model")},
                "choices": [],
                "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
            }

    async def get_event_publisher(*args: Any, **kwargs: Any) -> None:
        USAGE.clear()
        llama_call = kwargs["llama_call"]
        made: list[Any] = []

        def call(llama: Any, **kw: Any) -> Any:
            try:
                chunks = llama_call(llama, **kw)  # renders the chat template, may refuse
            except Exception as exc:
                return iter([error_event(exc)])
            made.append(with_usage(chunks))
            return made[-1]

        try:
            await publish(*args, **{**kwargs, "llama_call": call})
        finally:
            # llama_cpp.server stops asking for tokens when the client goes away but never
            # closes the generator; closed here, it ends at once and says so in the log
            # (HOST_ANSWERED, with the tokens it made)
            for it in made:
                with contextlib.suppress(ValueError):  # still running in its thread
                    it.close()

    get_event_publisher._smackctl = True  # type: ignore[attr-defined]
    llama_app.get_event_publisher = get_event_publisher


#: the words a refused grammar's error starts with; the supervisor answers it with a 400
BAD_GRAMMAR = "the request's grammar could not be parsed"


def _refuse_bad_grammars() -> None:
    """A grammar llama.cpp cannot parse is an error, not a crash. ``llama_sampler_init_grammar``
    returns NULL for it (its log says why) and llama-cpp-python's ``LlamaSampler.add_grammar``
    adds that NULL to the sampler chain: the next token's sampling dies with SIGSEGV (seen:
    ``"grammar": "M\\u0005"``, found by the fuzzer). The same method serves `response_format`
    schemas turned into grammars. Its three lines again, with the check."""
    from llama_cpp import _internals
    from llama_cpp import llama_cpp as lib

    sampler_cls: Any = _internals.LlamaSampler
    if getattr(sampler_cls, "_smackctl", False):
        return

    def add_grammar(self: Any, model: Any, grammar: Any) -> None:
        sampler = lib.llama_sampler_init_grammar(
            model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
        )
        if not sampler:
            raise ValueError(
                f"{BAD_GRAMMAR}; llama.cpp's reason is in the runner's log (`smackctl logs "
                "MODEL`): check the GBNF, or send a JSON schema in `response_format` instead"
            )
        lib.llama_sampler_chain_add(self.sampler, sampler)

    sampler_cls.add_grammar = add_grammar
    sampler_cls._smackctl = True


def _report_progress() -> None:
    """Write HOST_PROMPT / HOST_GENERATING / HOST_ANSWERED lines as requests are answered:
    ``Llama.generate`` decodes the prompt with one ``eval`` (of the tokens its prefix cache
    lacks) and then each new token with a one-token ``eval``."""
    from llama_cpp import Llama

    if getattr(Llama.eval, "_smackctl", False):
        return
    eval_, generate = Llama.eval, Llama.generate
    #: the request's prompt length, and where its answer is: "start", "prompt", "answer"
    state: dict[str, Any] = {"prompt": 0, "phase": "answer"}

    def say(line: str) -> None:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def eval(self: Any, tokens: Any) -> None:  # noqa: A001 - Llama's own name
        # the first eval of a request decodes the prompt (what its cache lacks of it), the
        # next ones one new token each
        if state["phase"] == "start":
            state["phase"] = "prompt"
            say(f"{HOST_PROMPT}a prompt of {state['prompt']} tokens")
        elif state["phase"] == "prompt":
            state["phase"] = "answer"
            say(f"{HOST_GENERATING}a prompt of {state['prompt']} tokens")
        eval_(self, tokens)

    def generate_(self: Any, tokens: Any, *args: Any, **kwargs: Any) -> Any:
        USAGE.update(prompt_tokens=len(tokens), completion_tokens=0)
        state.update(prompt=len(tokens), phase="start")
        eos = self.token_eos()
        it = generate(self, tokens, *args, **kwargs)
        try:
            sent = None
            while True:
                try:
                    token = it.send(sent)
                except StopIteration:
                    return
                if token != eos:
                    USAGE["completion_tokens"] += 1
                sent = yield token
        finally:
            it.close()
            state["phase"] = "answer"
            say(f"{HOST_ANSWERED} after {USAGE.get('completion_tokens', 0)} tokens")

    eval._smackctl = True  # type: ignore[attr-defined]
    Llama.eval = eval  # type: ignore[method-assign]
    Llama.generate = generate_  # type: ignore[method-assign]


def _count_progress() -> None:
    """Count steps in ``PROGRESS`` as llama.cpp decodes: each ``decode`` (one token while an
    answer is generated), and, during a prompt's batch (a decode of many tokens, which can
    take minutes for a big model on a slow CPU), each graph node: llama.cpp calls its abort
    callback from compute thread 0 after every node (``ggml_graph_compute_thread``). A
    thread that stops stalls the others at the next barrier, and the counter with them.
    Set for prompt batches only: per node on one-token decodes, the callback's GIL round
    trip would cost a tenth of each token here."""
    from llama_cpp import _internals
    from llama_cpp import llama_cpp as lib

    context_cls: Any = _internals.LlamaContext
    if getattr(context_cls, "_smackctl", False):
        return

    @lib.ggml_abort_callback  # type: ignore[untyped-decorator]
    def tick(_data: Any) -> bool:
        PROGRESS[0] += 1
        return False  # never abort

    none = lib.ggml_abort_callback()  # a NULL callback: no call per node
    decode = context_cls.decode

    def counted(self: Any, batch: Any) -> Any:
        PROGRESS[0] += 1
        many = batch.batch.n_tokens > 1
        if many:
            lib.llama_set_abort_callback(self.ctx, tick, None)
        try:
            return decode(self, batch)
        finally:
            if many:
                lib.llama_set_abort_callback(self.ctx, none, None)
            PROGRESS[0] += 1

    _count_progress.tick = tick  # type: ignore[attr-defined]  # kept alive: C holds it
    context_cls.decode = counted
    context_cls._smackctl = True


def _parser() -> argparse.ArgumentParser:
    from llama_cpp.server.cli import add_args_from_model
    from llama_cpp.server.settings import Settings

    parser = argparse.ArgumentParser(prog="smackctl.daemon.host", exit_on_error=False)
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


def _redirect_output(path: str) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _constant_time_auth(key: str) -> Any:
    """llama_cpp.server's own key check compares with ``==``: this one, in constant time,
    replaces it on every route that depends on it."""
    from fastapi import Depends, HTTPException
    from llama_cpp.server import app as llama_app

    bearer = Depends(llama_app.bearer_scheme)

    async def authenticate(authorization: Any = bearer) -> bool:
        given = f"Bearer {authorization.credentials}" if authorization else None
        if not same_key(given, key):
            raise HTTPException(status_code=401, detail="Invalid API key")
        return True

    return authenticate


def serve(args: list[str], key: str | None = None) -> None:
    import uvicorn
    from llama_cpp.server import app as llama_app
    from llama_cpp.server.app import create_app

    _quiet_llama_log()
    _report_progress()
    _count_progress()
    _stream_usage()
    _refuse_bad_grammars()
    parser = _parser()
    try:
        server, model = _settings(parser, args)
    except Exception as exc:  # as llama_cpp.server: the reason, then the usage
        print(exc, file=sys.stderr)
        parser.print_help()
        sys.exit(1)
    key = key or os.environ.pop(KEY_ENV, None) or server.api_key
    if key:
        server.api_key = key
    app = create_app(server_settings=server, model_settings=[model])
    if key:
        app.dependency_overrides[llama_app.authenticate] = _constant_time_auth(key)
    load, free = _routes(parser, server)
    app.add_route("/smackctl/load", load, methods=["POST"])
    app.add_route("/smackctl/free", free, methods=["POST"])
    app.add_route("/smackctl/alive", alive, methods=["GET"])
    app.add_route("/smackctl/count", _count_route(server), methods=["POST"])
    uvicorn.run(
        app,
        host=server.host,
        port=server.port,
        ssl_keyfile=server.ssl_keyfile,
        ssl_certfile=server.ssl_certfile,
    )


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


def _routes(parser: argparse.ArgumentParser, server: Any) -> tuple[Any, Any]:
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
            print(f"smackctl.daemon.host: freed {n} previous model(s)", file=sys.stderr, flush=True)
        return n

    def swap(old: Any, model: Any, keep_old: bool) -> None:
        free_kept()
        if not keep_old:
            old.free()
            print("smackctl.daemon.host: freed the previous model", file=sys.stderr, flush=True)
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
                parsed[key] = _settings(parser, list(key))
            new_server, model = parsed[key]
        except (argparse.ArgumentError, ValueError, KeyError, TypeError) as exc:
            return answer(400, f"cannot read the order: {exc}")
        changed = [
            k
            for k in type(server).model_fields
            if k not in _KEPT and getattr(new_server, k) != getattr(server, k)
        ]
        if changed:
            return answer(409, f"server settings differ: {', '.join(changed)}")
        async with contextlib.asynccontextmanager(llama_app.get_llama_proxy)() as old:
            if log is not None:
                _redirect_output(log)
            print(f"smackctl.daemon.host: loading {model.model}", file=sys.stderr, flush=True)
            try:
                # on the event loop's thread, as llama_cpp.server swaps: the load allocates
                # from the main arena, which holds what earlier models freed. From a worker
                # thread's arena, a SmolLM2 load after freeing Gemma 3 took 13k page faults
                # here against 1.8k, and the process settled at ~337 MiB against ~279 MiB
                swap(old, model, bool(order.get("keep_old")))
            except Exception as exc:  # llama.cpp's reason is in the log above
                return answer(500, f"{type(exc).__name__}: {exc}")
        return answer(200, f"loaded {model.model}")

    async def free(request: Request) -> JSONResponse:
        if (no := refused(request)) is not None:
            return no
        # not under the app's locks: a request to the new model need not wait for it
        return answer(200, f"freed {await run_in_threadpool(free_kept)} old model(s)")

    return load, free


def spare() -> None:
    import llama_cpp.server.app  # noqa: F401  (the import the spare exists for)
    import uvicorn  # noqa: F401

    _parser()  # builds the models' field tables too
    for name in LATE_IMPORTS:
        with contextlib.suppress(ImportError):  # another uvicorn may lay them out otherwise
            importlib.import_module(name)

    sys.stdout.write("spare: ready\n")
    sys.stdout.flush()
    line = sys.stdin.readline()
    if not line:
        return
    order = json.loads(line)
    _redirect_output(log_path(order["log"]))
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # as a runner started the usual way: stdin is /dev/null
    os.close(devnull)
    serve(list(order["args"]), order.get("key"))


def main() -> None:
    if sys.argv[1:] == ["--spare"]:
        spare()
    else:
        serve(sys.argv[1:])


if __name__ == "__main__":
    main()
