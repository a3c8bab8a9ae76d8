"""`smackctl chat`: one-shot (a prompt or piped stdin) or a REPL with slash commands."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from smackctl.errors import SmackError, UsageError

from . import output
from ._common import client
from .asking import prepare
from .completion import complete_model
from .repl import repl
from .session import Session, reply

if TYPE_CHECKING:
    from smackctl.client import Client

__all__ = ["chat"]


def _one_shot(c: Client, s: Session, text: str, *, stream: bool, json_: bool, md: bool) -> None:
    s.messages.append({"role": "user", "content": text})
    if json_:
        resp = c.post("/v1/chat/completions", s.request())
        output.print_json(resp)
        s.answered_by = resp.get("model") or s.answered_by
        choices = resp.get("choices") or [{}]
        answer = (choices[0].get("message") or {}).get("content") or ""
        s.messages.append({"role": "assistant", "content": answer})
        return
    answer = reply(c, s, stream=stream, render_md=md)
    s.messages.append({"role": "assistant", "content": answer})
    output.info(s.last.line())


def chat(
    ctx: typer.Context,
    prompt: Annotated[
        list[str] | None, typer.Argument(help="The prompt; stdin is read too.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Model name or alias.", autocompletion=complete_model),
    ] = None,
    system: Annotated[str | None, typer.Option("--system", help="System prompt.")] = None,
    temperature: Annotated[float | None, typer.Option(min=0.0, max=5.0)] = None,
    top_p: Annotated[float | None, typer.Option("--top-p", min=0.0, max=1.0)] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", min=1)] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    no_stream: Annotated[
        bool, typer.Option("--no-stream", help="Wait for the whole answer.")
    ] = False,
    json_: Annotated[
        bool, typer.Option("--json", help="Print the OpenAI response object only.")
    ] = False,
    plain: Annotated[bool, typer.Option("--plain", help="No markdown rendering.")] = False,
    interactive: Annotated[
        bool, typer.Option("--interactive", "-i", help="REPL even when stdin is not a terminal.")
    ] = False,
    continue_: Annotated[
        bool, typer.Option("--continue", "-c", help="Continue the last conversation.")
    ] = False,
    session: Annotated[
        int | None, typer.Option("--session", help="Continue conversation ID.")
    ] = None,
    list_: Annotated[bool, typer.Option("--list", help="List stored conversations.")] = False,
) -> None:
    """Chat with a model: one-shot with a prompt or piped stdin, a REPL otherwise.

    The answer streams to stdout; a line of stats goes to stderr. Profile `defaults:` apply to
    options you leave out.
    """
    from smackctl.paths import get_paths

    from .conversations import Conversations

    store = Conversations(get_paths().ensure().state_dir / "chats.db")
    try:
        if list_:
            rows = store.list()
            if json_:
                output.print_json(rows)
            else:
                output.table(
                    ["ID", "MODEL", "MESSAGES", "TITLE"],
                    [[r["id"], r["model"] or "-", r["messages"], r["title"]] for r in rows],
                )
            return
        options = {
            "temperature": temperature,
            "top_p": top_p,
            "max_tokens": max_tokens,
            "seed": seed,
        }
        s = Session(model=model, system=system, options=options)
        if continue_ or session is not None:
            found = store.load(session)
            if found is None:  # not a usage error: the flag is right, the conversation absent
                raise SmackError(
                    f"no conversation {session if session is not None else 'yet'}",
                    "see the stored ones with `smackctl chat --list`",
                )
            s.conv_id, saved_model, s.messages = found
            s.model = model or saved_model
        text = output.as_text(" ".join(prompt or []))
        piped = ""
        if not interactive and not sys.stdin.isatty():
            piped = output.read_stdin()
        if piped.strip():
            text = f"{piped.rstrip()}\n\n{text}" if text else piped
        md = output.is_tty() and not plain
        with client(ctx, timeout=600.0) as c:
            if text.strip() or interactive or sys.stdin.isatty():
                s.resolved = prepare(c, s.model, s.options)  # pulled first, with progress
            if text.strip():
                _one_shot(c, s, text, stream=not no_stream and not json_, json_=json_, md=md)
                store.save(s.conv_id, s.stored_model, s.messages)
            elif interactive or sys.stdin.isatty():
                repl(c, s, store, stream=not no_stream, md=md)
            else:
                raise UsageError(
                    "no prompt given", 'smackctl chat "your question"  (or pipe text in)'
                )
    finally:
        store.close()
