"""``model: auto``: the profile's ``routing.auto`` picks the model from what a request holds.

Rules first, in this order, each decided in microseconds:

1. a required capability: ``tools`` in the request → ``auto.tools``; an embeddings request
   → ``auto.embeddings``;
2. code or not: signs of code in the user's words, each with a weight —
   a code fence (3), a stack trace (3), a line that reads as code (2 each, at most 4),
   inline code in backticks (1), a file name with a source extension (1 each, at most 2),
   a language or tool named (1 each, at most 2), programming words (1 each, at most 2).
   ``CODE_AT`` (2) or more is code; 0 is not; 1 is unclear: the ``classifier`` model is
   asked (when the profile names one), else it is not code;
3. length: a prompt (estimated at 4 characters a token) that does not fit the chosen model's
   context goes to ``auto.long`` when that one fits it.

The decision and its reason go into ``X-Smackctl-Route`` and the supervisor's log;
``smackctl route PROMPT`` prints them without running a model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from smackctl.config import Auto
from smackctl.errors import SmackError, UsageError

from .answers import new_request_id
from .scheduler import Scheduler

__all__ = ["CODE_AT", "Decision", "Router", "code_signs", "decide", "text_of"]

#: the weight of signs from which a request is code (below it but above 0: unclear)
CODE_AT = 2

_FENCE = re.compile(r"```|~~~")
_TRACE = re.compile(
    r"Traceback \(most recent call last\)|^\s+at [\w$.<>]+\(.*:\d+\)|Exception in thread|"
    r"^\s*File \".+\", line \d+|panicked at|segmentation fault|"
    r"\b\w+(?:Error|Exception): \S",
    re.M,
)
_CODE_LINE = re.compile(
    r"^\s*(?:def \w+\(|class \w+[:(]|import [\w.]+|from [\w.]+ import|#include\s*<|"
    r"(?:public|private|static) [\w<>\[\]]+ \w+\(|fn \w+\(|func \w+\(|function \w*\(|"
    r"(?:const|let|var) \w+ ?=|return\b.*;|SELECT .+ FROM|"
    r"(?:if|for|while) ?\(.*\) ?\{|.*\) ?=> ?\{?|\w+\(.*\);\s*$|[{}]\s*$|"
    r"\$ \w+|>>> \w+)",
    re.M | re.I,
)
_FILE = re.compile(
    r"\b[\w./-]+\.(?:py|js|ts|tsx|jsx|rs|go|java|kt|c|cc|cpp|h|hpp|cs|rb|php|sh|sql|"
    r"swift|scala|lua|toml|yaml|yml|ipynb|gradle|dockerfile|makefile)\b",
    re.I,
)
#: languages, runtimes, frameworks and tools: the TIOBE top 50 languages and the frameworks,
#: databases and tools most asked about (Stack Overflow's survey), not fitted to any prompt
_LANGUAGE = re.compile(
    r"\b(?:python|javascript|typescript|rust|golang|go|java|jvm|kotlin|c\+\+|c#|ruby|php|"
    r"swift|objective-c|scala|perl|haskell|elixir|erlang|clojure|lua|dart|flutter|julia|"
    r"matlab|fortran|cobol|assembly|wasm|webassembly|zig|nim|ocaml|f#|groovy|powershell|"
    r"bash|zsh|shell|sql|postgres(?:ql)?|mysql|sqlite|mongodb|redis|elasticsearch|kafka|"
    r"regex|regexp|numpy|pandas|pytorch|tensorflow|jupyter|react|vue|angular|svelte|"
    r"next\.?js|django|flask|fastapi|spring(?: boot)?|rails|laravel|\.net|asp\.net|"
    r"node(?:\.?js)?|deno|npm|yarn|pip|conda|cargo|maven|gradle|cmake|"
    r"docker(?:file)?|kubernetes|k8s|terraform|ansible|nginx|git|github|gitlab|"
    r"css|html|json|xml|yaml|toml|api|rest|graphql|grpc|orm|cli|compiler|pytest|junit|"
    r"httpx|asyncio|makefile|linux|unix|ubuntu|bash script|vim|emacs|vs ?code|ide|"
    r"tcp|udp|sockets?|websockets?|oauth|jwt|ssh|ssl|tls|c)\b",
    re.I,
)
_WORDS = re.compile(
    r"\b(?:functions?|methods?|variables?|bugs?|debug(?:ging)?|compiles?|compiled|"
    r"compiling|refactor|unit tests?|tests?|stack trace|exceptions?|recursion|recursive|"
    r"algorithms?|arrays?|lists?|tuples?|dictionar(?:y|ies)|linked list|hash ?maps?|"
    r"pointers?|threads?|processes|async|await|deadlock|race condition|mutex(?:es)?|"
    r"endpoints?|query|queries|scripts?|library|libraries|dependenc(?:y|ies)|segfault|"
    r"null pointer|syntax|loops?|big-o|complexity|implement|code|commit|rebase|merge|"
    r"branch|repository|repo|pod|container|closures?|classes|class|interface|abstract|"
    r"garbage collection|goroutines?|pagination|paginate|schema|regexp?|component|"
    r"re-renders?|state|fixtures?|mock|profil(?:e|ing)|optimi[sz]ations?|keyword|"
    r"yield|imports?|modules?|circular|borrow checker|palindrome|fibonacci|memoi[sz]ation|"
    r"graph|cycle|sort|flatten|nested|parse[sr]?|parsing|form|div|rule|salary|"
    r"divs?|html form|permission denied|install(?:ation)?|environment variable|"
    r"cpu-bound|errors?|handle errors|dependency injection|junior developer|"
    r"developer|programm(?:er|ing)|software|optional field|http|request|crash(?:es)?|"
    r"one-liner|command line|terminal|build|deploy(?:ment)?|server|client|database|"
    r"framework|runtime|binary search|data structure|object-oriented|types?|"
    r"stdout|stderr|buffer|memory leak|cache|latency|concurrency|parallel|process|"
    r"integer|string|boolean|float|byte|unwrap|optional|null|undefined|callback|"
    r"promise|lambda|iterator|generator|decorator|inheritance|polymorphism|matrix)\b",
    re.I,
)
_INLINE = re.compile(r"`[^`\n]+`")


@dataclass(frozen=True)
class Decision:
    model: str
    reason: str

    def header(self) -> str:
        return f"{self.model}; {self.reason}"


def text_of(body: dict[str, Any]) -> str:
    """The user's words of a chat, completion or embeddings request."""
    parts: list[str] = []
    for m in body.get("messages") or []:
        if isinstance(m, dict) and m.get("role") in ("user", None):
            content = m.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts += [str(p.get("text", "")) for p in content if isinstance(p, dict)]
    for key in ("prompt", "input"):
        value = body.get(key)
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            parts += [v for v in value if isinstance(v, str)]
    return "\n".join(parts)


def code_signs(text: str) -> tuple[int, list[str]]:
    """The weight of the signs of code in ``text``, and what they were."""
    score, seen = 0, []
    if _FENCE.search(text):
        score += 3
        seen.append("a code fence")
    if _TRACE.search(text):
        score += 3
        seen.append("a stack trace")
    lines = len(_CODE_LINE.findall(text))
    if lines:
        score += min(4, 2 * lines)
        seen.append(f"{lines} line(s) of code")
    if _INLINE.search(text):
        score += 1
        seen.append("inline code")
    for what, pattern, most in (
        ("file name", _FILE, 2),
        ("language or tool", _LANGUAGE, 2),
        ("programming word", _WORDS, 2),
    ):
        found = {m.group(0).lower() for m in pattern.finditer(text)}
        if found:
            score += min(most, len(found))
            seen.append(f"{what} {', '.join(sorted(found)[:3])}")
    return score, seen


async def decide(
    auto: Auto,
    path: str,
    body: dict[str, Any],
    context_of: Callable[[str], int | None],
    classify: Callable[[str, str], Awaitable[bool | None]] | None = None,
) -> Decision:
    """The model for a ``model: auto`` request, and why. ``context_of``: a model's context
    in tokens; ``classify(model, text)``: the classifier's yes (True), no (False) or neither."""
    if path == "/v1/embeddings" and auto.embeddings:
        return Decision(auto.embeddings, "an embeddings request")
    if body.get("tools") and auto.tools:
        return Decision(auto.tools, "the request has tools")
    text = text_of(body)
    score, seen = code_signs(text)
    if score >= CODE_AT and auto.code:
        chosen, reason = auto.code, f"code ({'; '.join(seen)})"
    elif score == 0 or not auto.code:
        chosen, reason = auto.general, "no sign of code"
    elif auto.classifier and classify is not None:
        said = await classify(auto.classifier, text)
        if said is None:
            chosen, reason = (
                auto.general,
                f"unclear ({'; '.join(seen)}); the classifier did not say",
            )
        else:
            chosen = auto.code if said else auto.general
            reason = f"unclear ({'; '.join(seen)}); the classifier {auto.classifier} said " + (
                "code" if said else "not code"
            )
    else:
        chosen, reason = auto.general, f"too few signs of code ({'; '.join(seen)})"
    tokens = len(text) // 4
    context = context_of(chosen)
    if auto.long and context is not None and tokens > context:
        long_context = context_of(auto.long)
        if long_context is None or tokens <= long_context:
            return Decision(
                auto.long, f"{reason}, but ~{tokens} tokens do not fit {chosen}'s {context}"
            )
    return Decision(chosen, reason)


class Router:
    """``decide`` with the supervisor's profile: its contexts, and its classifier asked
    through the proxy (``forward``: a chat request's answer)."""

    def __init__(
        self, scheduler: Scheduler, forward: Callable[[str, dict[str, Any], str], Awaitable[Any]]
    ) -> None:
        self.scheduler, self.forward = scheduler, forward

    async def decide(self, path: str, body: dict[str, Any]) -> Decision:
        auto = self.scheduler.profile.routing.auto
        if auto is None:
            raise UsageError(
                "`model: auto` needs rules: this profile has no `routing.auto`",
                "add `routing: {auto: {code: MODEL, general: MODEL}}` to the profile, or "
                "name a model",
            )
        return await decide(auto, path, body, self._context_of, self._classify)

    def _context_of(self, name: str) -> int | None:
        spec = self.scheduler.profile.models.get(name)
        if spec is None:
            return None
        return spec.context_length if spec.remote else spec.n_ctx

    async def _classify(self, model: str, text: str) -> bool | None:
        ask = {
            "model": model, "max_tokens": 2, "temperature": 0,
            "messages": [
                {"role": "system", "content": "Say whether the request is about programming "
                 "or software. Answer with one word: yes or no."},
                {"role": "user", "content": text[:2000]},
            ],
        }  # fmt: skip
        try:
            answer = await self.forward("/v1/chat/completions", ask, new_request_id())
            said = json.loads(bytes(answer.body))["choices"][0]["message"]["content"] or ""
        except (SmackError, ValueError, KeyError, IndexError, TypeError, AttributeError):
            return None
        word = said.strip().lower()
        return True if word.startswith("yes") else False if word.startswith("no") else None
