"""What runners answer, read and mapped for clients: error bodies, the errors of a runner that
died or hung, a streamed error event, token counts in each API's usage, and the mapping of a
runner's error answer (a refused template, a bad grammar, pydantic's dump) to a 4xx that says
what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from typing import Any

from smackctl.errors import ShuttingDown, SmackError, UpstreamError
from smackctl.selftest import signal_name
from smackctl.wire import error_body, events

from .backends.llama_cpp_python.words import BAD_GRAMMAR
from .runner import Runner
from .upstream import TransportError

__all__ = [
    "crash_fix",
    "cut_error",
    "error_event_of",
    "lost_error",
    "map_error",
    "runner_died",
    "wants_tools",
    "with_defaults",
]


def cut_error(model: str, forced: bool = False) -> SmackError:
    """A stop cut ``model``'s answer: its drain ran out of time, or it was ``--force``."""
    if forced:
        return ShuttingDown(
            "the supervisor was stopped at once (`smackctl stop --force`, or a second stop "
            f"signal): the answer of {model} was cut before it was complete",
            "send it again once the supervisor is back (`smackctl start`)",
        )
    return ShuttingDown(
        f"the supervisor is stopping and its drain ran out of time: the answer of {model} "
        "was cut before it was complete",
        "send it again once the supervisor is back (`smackctl start`), or give `smackctl stop` "
        "a longer --timeout",
    )


def crash_fix(model: str, runner: Runner) -> str:
    signal = signal_name(runner.exit_code) if runner.exited.is_set() else None
    if signal in ("SIGSEGV", "SIGILL", "SIGBUS", "SIGFPE", "SIGABRT"):
        return (
            "run `smackctl doctor`: it checks whether this machine's llama.cpp build crashes "
            "on quantized models (a build with Intel AMX kernels does) and names the rebuild; "
            f"`smackctl logs {model}` has the runner's log"
        )
    return f"see `smackctl logs {model}`"


def lost_error(
    model: str, runner: Runner, exc: TransportError, died: bool, retried: bool
) -> SmackError:
    """The error for a request whose runner failed before sending a byte back."""
    if died:
        doing = runner.activity() or "before answering"
        again = (
            "; it was restarted and the request sent once more, and it failed again"
            if retried
            else ""
        )
        msg = f"the runner for {model} {runner.exit_description()} {doing}{again}"
    else:
        msg = f"the runner for {model} did not answer: {exc}"
    return UpstreamError(msg, crash_fix(model, runner))


async def runner_died(runner: Any) -> bool:
    """Did the runner's process exit (give the kernel a moment to tell us)?"""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(runner.exited.wait(), 2.0)
    return bool(runner.exited.is_set())


def with_defaults(body: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in body.items() if v is not None}
    for key, value in defaults.items():
        if value is not None and key not in out:
            out[key] = value
    return out


#: jinja2's sandbox refusing a chat template: its class, or its words (llama_cpp.server's
#: answer quotes only the message: "access to attribute '__init__' of 'type' object is unsafe")
_UNSAFE = re.compile(r"SecurityError|access to attribute .* is unsafe|is not safely callable")


def error_event_of(chunk: bytes) -> bytes | None:
    """The error object of a stream's first event, when the runner's answer failed before
    any token (the runner program's error event); None for a token."""
    if b'"error"' not in chunk:
        return None
    found = events(chunk)
    data = found[0].json() if found else None
    return json.dumps(data).encode() if isinstance(data, dict) and "error" in data else None


def wants_tools(body: dict[str, Any]) -> bool:
    """Tools offered and not turned off (`tool_choice: none`), in any of the three APIs."""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    tools = [t for t in tools if t.get("type", "function") in ("function", "custom")] or (
        body.get("functions") or []
    )
    choice = body.get("tool_choice") or body.get("function_call")
    off = choice == "none" or (isinstance(choice, dict) and choice.get("type") == "none")
    return bool(tools) and not off


#: jinja2 failing to render a chat template for the messages given
_TEMPLATE = re.compile(r"UndefinedError|TemplateSyntaxError|'\w+ object' has no attribute")

#: one error of pydantic's list as llama_cpp.server quotes it: its location and message
_VALIDATION = re.compile(r"'loc': \(([^)]*)\), 'msg': [\"']([^\"']*)")


def has_error(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("error"), dict)


#: a prompt longer than the context, as each backend's error message begins: llama_cpp.server
#: (whole), llama-cpp-python's own error in a stream, llama-server; prompt and context sizes
_TOO_LONG = (
    re.compile(r"This model's maximum context length is (?P<ctx>\d+) tokens.*?"
               r"\((?P<prompt>\d+) in (?:you|the)"),
    re.compile(r"Requested tokens \((?P<prompt>\d+)\) exceed context window of (?P<ctx>\d+)"),
    re.compile(r"request \((?P<prompt>\d+) tokens\) exceeds the available context size "
               r"\((?P<ctx>\d+) tokens\)"),
)  # fmt: skip


def too_long(model: str, data: Any) -> bytes | None:
    """One error for a prompt that does not fit the model's context, whichever backend said
    it (three wordings, a 400 or a 500; llama-server's type alone where its message has no
    sizes): OpenAI's code, and the fix. Only the error's own message is read, from its
    start: a message that quotes the request cannot pass for one."""
    if not has_error(data):
        return None
    error = data["error"]
    message = str(error.get("message") or "")[:1000]
    found = next((m for p in _TOO_LONG if (m := p.match(message))), None)
    if found is not None:
        sizes: tuple[Any, Any] = (found["prompt"], found["ctx"])
    elif error.get("type") == "exceed_context_size_error":
        sizes = (error.get("n_prompt_tokens"), error.get("n_ctx"))
    else:
        return None
    prompt = f" ({sizes[0]} tokens)" if isinstance(sizes[0], int | str) else ""
    ctx = f" ({sizes[1]} tokens)" if isinstance(sizes[1], int | str) else ""
    hint = (f"shorten the prompt (or the conversation), or raise `n_ctx` of {model} in the "
            f"profile (`smackctl models show {model}` says its n_ctx and file)")  # fmt: skip
    said = f"the prompt{prompt} does not fit the context of {model}{ctx}"
    body = {"error": {"message": f"{said} (fix: {hint})", "type": "invalid_request_error",
                      "code": "context_length_exceeded", "hint": hint}}  # fmt: skip
    return json.dumps(body).encode()


def map_error(model: str, status: int, content: bytes) -> tuple[bytes, int]:
    try:
        data = json.loads(content)
    except ValueError:
        data = None
    if (long := too_long(model, data)) is not None:
        return long, 400
    text = content.decode(errors="replace")
    if status >= 500 and _UNSAFE.search(text):
        return error_body(
            f"the chat template of {model} tried an operation the template sandbox forbids; "
            "the request was refused and nothing ran. Fix: use a trusted GGUF, or set "
            f"`chat_format:` for {model} in the profile",
            "invalid_request_error",
            "unsafe_chat_template",
        ), 400
    if BAD_GRAMMAR in text:
        message = data["error"]["message"] if has_error(data) else BAD_GRAMMAR
        return error_body(message, "invalid_request_error", "invalid_grammar"), 400
    if status >= 500 and _TEMPLATE.search(text):
        message = data["error"]["message"] if has_error(data) else text[:300]
        return error_body(
            f"the chat template of {model} failed on this request's messages ({message}); "
            "nothing was generated. Fix: check the messages' roles and fields, or set "
            f"`chat_format:` for {model} in the profile",
            "invalid_request_error",
            "chat_template_error",
        ), 400
    if status >= 500 and (fields := _VALIDATION.findall(text)):
        # a request the runner's own validation refused (what schemas.py missed): a 400
        # naming the fields, never a 500 with a dump of pydantic's errors
        where = "; ".join(f"{loc.replace(chr(39), '')}: {msg}" for loc, msg in fields[:3])
        return error_body(
            f"{model}'s runner refused the request: {where}", "invalid_request_error"
        ), 400
    if has_error(data):
        return content, status
    detail = data.get("detail") if isinstance(data, dict) else None
    msg = f"the runner for {model} answered {status}: {detail or text[:500]}"
    kind = "invalid_request_error" if status < 500 else "runner_error"
    return error_body(msg, kind), (status if status < 500 else 502)
