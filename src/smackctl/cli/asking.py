"""What a chat needs before its first question and after each answer, and `smackctl
complete` (a text completion: what a base model answers).

Before: the model the chat goes to (the one named, else the profile's default), its file
pulled with its progress shown on stderr (a first chat used to wait in silence while
hundreds of MB came down), a base model refused before any pull when its profile entry says
so, and the ``max_tokens`` in force (the profile's default, else ``DEFAULT_MAX_TOKENS``: a
base model forced into a chat format once went on for 2,038 tokens). After: an answer with
no token and no finish reason is an error, never an empty line and exit 0.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from smackctl.errors import ApiError, SmackError, UsageError

from . import output
from ._common import client, follow_events, raise_for_event
from .completion import complete_model
from .stats import Stats

if TYPE_CHECKING:
    from smackctl.client import Client

__all__ = ["DEFAULT_MAX_TOKENS", "check_answer", "complete", "prepare"]

#: the CLI's cap on an answer when neither the user nor the profile sets one
DEFAULT_MAX_TOKENS = 1024


def prepare(c: Client, model: str | None, options: dict[str, Any], chat: bool = True) -> str | None:
    """Make ready for a chat (``chat``; else a completion) with ``model`` (None: the profile's
    default): ``max_tokens`` set in ``options``, the file pulled (progress on stderr), a base
    model refused for a chat before the pull; return the model's own name (None when the
    request goes somewhere that is not a local model: a group, a server elsewhere, ``auto``)."""
    try:
        profile = c.get("/api/profiles")
    except ApiError as exc:
        if exc.status != 403:
            raise
        # a key of scope inference (SMACKCTL_TOKEN): the request itself says the rest
        options.setdefault("max_tokens", None)
        options["max_tokens"] = options["max_tokens"] or DEFAULT_MAX_TOKENS
        return None
    if options.get("max_tokens") is None:
        defaults = profile.get("defaults") or {}
        options["max_tokens"] = defaults.get("max_tokens") or DEFAULT_MAX_TOKENS
    name = model or profile.get("default_model")
    if not name or name == "auto" or name in (profile.get("not_local") or []):
        return None  # the request itself says what it is (a server elsewhere, a group)
    try:
        m = c.get(f"/api/models/{name}")
    except ApiError as exc:
        if exc.status == 404:
            return None  # not a local model: the request itself says what it is
        raise
    if chat and m.get("chat") is False:
        raise UsageError(
            f"{m['name']} cannot answer chat messages: its profile entry says `chat: false` "
            "(a base model)",
            f'ask it for a text completion: `smackctl complete -m {m["name"]} "TEXT"`',
        )
    if not m.get("on_disk"):
        output.info(f"{m['name']} is not on disk yet: pulling it first")
        raise_for_event(follow_events(c.ndjson("POST", f"/api/models/{m['name']}/pull")))
    return str(m["name"])


def check_answer(text: str, finish_reason: str | None, model: str | None) -> None:
    """An answer with nothing in it and no reason for ending is not an answer."""
    if text or finish_reason:
        return
    raise SmackError(
        f"{model or 'the model'} answered nothing (no token, and no reason for stopping)",
        f"see `smackctl logs {model or ''}`".replace("  ", " ").strip()
        + "; a base model answers text completions (`smackctl complete`), not chats",
    )


def complete(
    ctx: typer.Context,
    prompt: Annotated[list[str] | None, typer.Argument(help="The text to continue.")] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Model name or alias.", autocompletion=complete_model),
    ] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", min=1)] = None,
    temperature: Annotated[float | None, typer.Option(min=0.0, max=5.0)] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    json_: Annotated[
        bool, typer.Option("--json", help="Print the OpenAI response object only.")
    ] = False,
) -> None:
    """Continue a text (a completion, not a chat): what a base model is for. The text comes
    from the arguments or stdin; the continuation streams to stdout, stats to stderr."""
    import sys

    text = output.as_text(" ".join(prompt or []))
    if not text and not sys.stdin.isatty():
        text = output.read_stdin()
    if not text.strip():
        raise UsageError("no text given", 'smackctl complete -m MODEL "The text to continue"')
    options: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature}
    options["seed"] = seed
    with client(ctx, timeout=600.0) as c:
        name = prepare(c, model, options, chat=False) or model
        body = {"prompt": text, **{k: v for k, v in options.items() if v is not None}}
        if name:
            body["model"] = name
        if json_:
            output.print_json(c.post("/v1/completions", body))
            return
        started = time.perf_counter()
        got, stats = [], Stats()
        for ev in c.events("POST", "/v1/completions", {**body, "stream": True}):
            chunk = _chunk(ev.json())
            for choice in chunk.get("choices") or []:
                piece = choice.get("text") or ""
                if piece:
                    if stats.ttft is None:
                        stats.ttft = time.perf_counter() - started
                    stats.tokens += 1
                    got.append(piece)
                    sys.stdout.write(piece)
                    sys.stdout.flush()
                stats.finish = choice.get("finish_reason") or stats.finish
        if got and not got[-1].endswith("\n"):
            sys.stdout.write("\n")
        check_answer("".join(got), stats.finish, name)
        stats.seconds = time.perf_counter() - started
        output.info(stats.line())  # the same line as chat's


def _chunk(data: Any) -> dict[str, Any]:
    """A stream's chunk; an error event raises ApiError; ``[DONE]`` is an empty chunk."""
    if not isinstance(data, dict):
        return {}
    if "error" in data:
        err = data["error"]
        raise ApiError(err.get("message", "stream error"), 502, err.get("type", "error"))
    return data
