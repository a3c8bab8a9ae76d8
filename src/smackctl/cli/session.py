"""A chat's session: its model, system prompt, options and messages, and one turn of it
(``reply``: the next answer asked for, printed as it comes, checked)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import output
from .asking import check_answer
from .stats import Stats

if TYPE_CHECKING:
    from smackctl.client import Client

__all__ = ["SAMPLING", "Session", "Stats", "reply"]

SAMPLING = ("temperature", "top_p", "max_tokens", "seed")


@dataclass
class Session:
    model: str | None
    system: str | None
    options: dict[str, Any]
    messages: list[dict[str, Any]] = field(default_factory=list)
    conv_id: int | None = None
    last: Stats = field(default_factory=Stats)
    #: the model that answered last (its name, as the supervisor's answer gives it)
    answered_by: str | None = None
    #: the local model the chat goes to, as ``asking.prepare`` found it (None: elsewhere)
    resolved: str | None = None

    @property
    def stored_model(self) -> str | None:
        """The model a stored conversation names: the one asked for, else the one that
        answered (the profile's default)."""
        return self.model or self.answered_by

    def request(self) -> dict[str, Any]:
        msgs = list(self.messages)
        if self.system:
            msgs.insert(0, {"role": "system", "content": self.system})
        body: dict[str, Any] = {"messages": msgs}
        if self.model:
            body["model"] = self.model
        body.update({k: v for k, v in self.options.items() if v is not None})
        return body


def reply(c: Client, s: Session, *, stream: bool, render_md: bool) -> str:
    """Ask for the next assistant message; print it as it comes; return its text."""
    started = time.perf_counter()
    stats = Stats()
    if not stream:
        resp = c.post("/v1/chat/completions", s.request())
        s.answered_by = resp.get("model") or s.answered_by
        text = resp["choices"][0]["message"]["content"] or ""
        stats.tokens = (resp.get("usage") or {}).get("completion_tokens") or 0
        stats.seconds = time.perf_counter() - started
        stats.finish = resp["choices"][0].get("finish_reason")
        s.last = stats
        check_answer(text, stats.finish, s.answered_by)
        output.write_answer(text, render_md)
        return text

    finish: list[str] = []

    def deltas() -> Any:
        for chunk in c.chat_stream(s.request()):
            s.answered_by = chunk.get("model") or s.answered_by
            for choice in chunk.get("choices", []):
                if choice.get("finish_reason"):
                    finish.append(choice["finish_reason"])
                delta = (choice.get("delta") or {}).get("content")
                if delta:
                    if stats.ttft is None:
                        stats.ttft = time.perf_counter() - started
                    stats.tokens += 1
                    yield delta

    try:
        text = output.stream_answer(deltas(), render_md)
    finally:
        stats.seconds = time.perf_counter() - started
        stats.finish = finish[-1] if finish else None
        s.last = stats
    check_answer(text, stats.finish, s.answered_by)
    return text
