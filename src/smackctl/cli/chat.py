"""`smackctl chat`: a one-shot answer streamed to stdout."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from smackctl.errors import UsageError

from ._common import client
from .completion import complete_model

__all__ = ["chat"]


def chat(
    ctx: typer.Context,
    prompt: Annotated[
        list[str] | None, typer.Argument(help="The prompt (or pipe it on stdin).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Model name or alias.", autocompletion=complete_model),
    ] = None,
    system: Annotated[str | None, typer.Option("--system", help="System prompt.")] = None,
    temperature: Annotated[float | None, typer.Option(min=0.0, max=5.0)] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", min=1)] = None,
    seed: Annotated[int | None, typer.Option()] = None,
) -> None:
    """Ask a model; the answer streams to stdout as it is generated."""
    text = " ".join(prompt or [])
    if not sys.stdin.isatty():
        piped = sys.stdin.read()
        if piped.strip():
            text = f"{piped.rstrip()}\n\n{text}" if text else piped
    if not text.strip():
        raise UsageError("no prompt given", 'smackctl chat "your question"  (or pipe text in)')
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": text})
    body: dict[str, Any] = {"messages": messages}
    for key, value in (
        ("model", model),
        ("temperature", temperature),
        ("max_tokens", max_tokens),
        ("seed", seed),
    ):
        if value is not None:
            body[key] = value
    with client(ctx, timeout=600.0) as c:
        wrote = False
        for chunk in c.chat_stream(body):
            for choice in chunk.get("choices", []):
                delta = (choice.get("delta") or {}).get("content")
                if delta:
                    sys.stdout.write(delta)
                    sys.stdout.flush()
                    wrote = True
        if wrote:
            sys.stdout.write("\n")
            sys.stdout.flush()
