"""What the runner program changes of llama-cpp-python 0.3.36, each for a reason in its
docstring: llama.cpp's log without debug lines, the lines written as a request goes, a
progress count read by the hang rule, a usage event at the end of every stream, and a
grammar llama.cpp cannot parse refused instead of a crash."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

from . import kvstore
from .words import BAD_GRAMMAR, HOST_ANSWERED, HOST_GENERATING, HOST_PROMPT

__all__ = ["PROGRESS", "USAGE", "apply", "error_event"]

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
    print(f"smackctl runner: the answer failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    return {"error": {"message": str(exc), "type": type(exc).__name__, "code": "runner_error"}}


def usage_of(counts: dict[str, int]) -> dict[str, Any]:
    """OpenAI's ``usage`` of an answer, ``prompt_tokens_details.cached_tokens`` with it."""
    p, c = counts.get("prompt_tokens", 0), counts.get("completion_tokens", 0)
    return {
        "prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
        "prompt_tokens_details": {"cached_tokens": counts.get("cached_tokens", 0)},
    }  # fmt: skip


def with_cached_tokens(app: Any) -> Any:
    """The app, each completion's owner read (kvstore.OWNER), its whole (not streamed)
    completions' ``usage`` given
    ``prompt_tokens_details.cached_tokens``: llama_cpp.server's response models drop any
    field of usage they do not know, so it is added to the body on its way out."""
    routes = {"/v1/chat/completions", "/v1/completions"}

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in routes:
            await app(scope, receive, send)
            return
        # whose the request is, for its saved conversations (kvstore.OWNER): the header the
        # supervisor sets; the contextvar reaches the threads llama_cpp.server answers in
        owner = dict(scope.get("headers") or []).get(b"x-smackctl-kv-owner", b"")
        said = kvstore.OWNER.set(owner.decode("ascii", "replace")[:64])
        held: list[Any] = []

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                kind = dict(message.get("headers", [])).get(b"content-type", b"")
                if kind.startswith(b"application/json"):
                    held.append(message)  # its length changes: sent with the body
                    return
            elif held and message["type"] == "http.response.body":
                body = _with_details(message.get("body", b""))
                start = held.pop()
                start["headers"] = [(k, v) for k, v in start["headers"] if k != b"content-length"]
                start["headers"].append((b"content-length", str(len(body)).encode()))
                await send(start)
                message = {**message, "body": body}
            await send(message)

        try:
            await app(scope, receive, sending)
        finally:
            kvstore.OWNER.reset(said)

    return wrapped


def _with_details(body: bytes) -> bytes:
    import json

    try:
        answer = json.loads(body)
    except ValueError:
        return body
    usage = answer.get("usage") if isinstance(answer, dict) else None
    if not isinstance(usage, dict) or not USAGE:
        return body
    usage["prompt_tokens_details"] = {"cached_tokens": USAGE.get("cached_tokens", 0)}
    return json.dumps(answer).encode()


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
            yield {
                **{k: last.get(k) for k in ("id", "object", "created", "model")},
                "choices": [],
                "usage": usage_of(USAGE),
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
            # what it does not decode it had: OpenAI's prompt_tokens_details.cached_tokens
            USAGE["cached_tokens"] = max(0, state["prompt"] - len(tokens))
            say(f"{HOST_PROMPT}a prompt of {state['prompt']} tokens")
        elif state["phase"] == "prompt":
            state["phase"] = "answer"
            say(f"{HOST_GENERATING}a prompt of {state['prompt']} tokens")
        eval_(self, tokens)

    def generate_(self: Any, tokens: Any, *args: Any, **kwargs: Any) -> Any:
        tokens = list(tokens)
        USAGE.update(prompt_tokens=len(tokens), completion_tokens=0, cached_tokens=0)
        state.update(prompt=len(tokens), phase="start")
        owner = kvstore.OWNER.get()
        if kwargs.get("reset", True):
            with contextlib.suppress(Exception):  # a state that will not load: computed
                kvstore.restore_for(self, tokens, owner)
        self._smackctl_kv_owner = owner  # the sequence is this request's now
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


def _answer_in_text_when_no_tool_is_chosen() -> None:
    """``chatml-function-calling`` with ``tool_choice: auto`` lets the model choose a tool or
    a message; for a message it then generated under a grammar that allows only a tool's
    name or the end (an empty answer), with no ``max_tokens``, ``stop`` or response format.
    That generation is given the request's own: its grammar (or its JSON response format),
    ``max_tokens`` and ``stop``. (The supervisor sends ``auto`` when a client offers tools
    and names no choice, as OpenAI does.)"""
    from llama_cpp import llama_chat_format as formats

    registry = formats.LlamaChatCompletionHandlerRegistry()  # type: ignore[no-untyped-call]
    original = registry.get_chat_completion_handler_by_name("chatml-function-calling")
    if getattr(original, "_smackctl", False):
        return

    def handler(llama: Any, **kw: Any) -> Any:
        if kw.get("tool_choice") != "auto" or not kw.get("tools"):
            return original(llama=llama, **kw)
        if kw.get("stream"):  # the format streams no chosen tool ("not supported"): the
            return _as_chunks(handler(llama, **{**kw, "stream": False}))  # answer, whole
        grammar, fmt = kw.get("grammar"), kw.get("response_format")
        if grammar is None and isinstance(fmt, dict) and fmt.get("type") == "json_object":
            grammar = formats._grammar_for_response_format(fmt)  # type: ignore[arg-type]
        stop = kw.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        create = llama.create_completion

        def create_completion(*args: Any, **c: Any) -> Any:
            prompt = c.get("prompt")
            if isinstance(prompt, str) and prompt.endswith("message:\n"):  # a text answer
                c.update(grammar=grammar, max_tokens=kw.get("max_tokens"),
                         stop=[*stop, "<|im_end|>"])  # fmt: skip
            return create(*args, **c)

        llama.create_completion = create_completion  # this call's only (one at a time)
        try:
            return original(llama=llama, **kw)
        finally:
            del llama.create_completion

    handler._smackctl = True  # type: ignore[attr-defined]
    registry.register_chat_completion_handler("chatml-function-calling", handler, True)


def _as_chunks(whole: dict[str, Any]) -> Any:
    """A whole chat completion as the chunks of its stream: its message (text or tool
    calls) in one, then its end."""
    head = {k: whole[k] for k in ("id", "created", "model")}
    head["object"] = "chat.completion.chunk"
    choice = whole["choices"][0]
    message = choice["message"]
    delta: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
    if message.get("tool_calls"):
        delta["tool_calls"] = [{**c, "index": i} for i, c in enumerate(message["tool_calls"])]
    ended = choice.get("finish_reason") or "stop"
    yield {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None,
                                "logprobs": None}]}  # fmt: skip
    yield {**head, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                "finish_reason": ended}]}  # fmt: skip


def apply() -> None:
    """Every change, once (a spare that becomes a runner applies them when it serves)."""
    _answer_in_text_when_no_tool_is_chosen()
    _quiet_llama_log()
    _report_progress()
    _count_progress()
    _stream_usage()
    _refuse_bad_grammars()
