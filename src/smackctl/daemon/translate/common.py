"""What the translators share: a content's text, a chat stream's events read, and what a
chat stream has said so far (its text, tool calls, finish reason and usage)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from smackctl.wire import SSEParser

__all__ = ["Gathered", "chat_events", "text_of"]


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content or [] if isinstance(b, dict) and "text" in b)


async def chat_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any]]:
    """The JSON events of a chat stream (``[DONE]`` and what is not JSON left out)."""
    parser = SSEParser()
    async for chunk in chunks:
        for ev in parser.feed(chunk):
            data = ev.json()
            if isinstance(data, dict):
                yield data


@dataclass
class Gathered:
    """What a chat stream has said so far."""

    text: list[str] = field(default_factory=list)
    finish: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    #: the tool calls' deltas, gathered by index: id, name, arguments
    calls: dict[int, dict[str, str]] = field(default_factory=dict)

    def take(self, ev: dict[str, Any]) -> list[str]:
        """Gather one event; the pieces of text it added."""
        if ev.get("usage"):
            self.usage = ev["usage"]
        pieces = []
        for choice in ev.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                pieces.append(delta["content"])
                self.text.append(delta["content"])
            for tc in delta.get("tool_calls") or []:
                call = self.calls.setdefault(tc.get("index", 0), {"id": "", "name": "", "args": ""})
                fn = tc.get("function") or {}
                call["id"] = tc.get("id") or call["id"]
                call["name"] = fn.get("name") or call["name"]
                call["args"] += fn.get("arguments") or ""
            self.finish = choice.get("finish_reason") or self.finish
        return pieces

    @property
    def tokens(self) -> tuple[int, int]:
        return self.usage.get("prompt_tokens", 0), self.usage.get("completion_tokens", 0)
