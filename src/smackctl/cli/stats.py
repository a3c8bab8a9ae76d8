"""The line that ends an answer in the terminal (`chat`, `complete`): its tokens, the wait for
the first, the speed, and whether the token limit cut it."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Stats"]


@dataclass
class Stats:
    tokens: int = 0
    ttft: float | None = None
    seconds: float = 0.0
    #: why the answer ended (``length``: the token limit cut it, which the line says)
    finish: str | None = None

    @property
    def rate(self) -> float:
        gen = self.seconds - (self.ttft or 0.0)
        return (self.tokens - 1) / gen if self.tokens > 1 and gen > 0 else 0.0

    def line(self) -> str:
        ttft = f"{self.ttft * 1000:.0f} ms" if self.ttft is not None else "-"
        cut = ", cut at the token limit (max_tokens)" if self.finish == "length" else ""
        return f"{self.tokens} tokens, first token {ttft}, {self.rate:.1f} tokens/s{cut}"
