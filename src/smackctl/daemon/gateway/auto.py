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

The signs of code are looked for in the first and the last ``INSPECTED`` characters of the
user's words (a question sits before or after what it pastes), with patterns linear in the
text: a 1 MiB paste is decided in what 4 KiB take (BENCHMARKS.md); the length counts all.

The decision and its reason go into ``X-Smackctl-Route`` and the supervisor's log;
``smackctl route PROMPT`` prints them without running a model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from smackctl.config import Auto, Profile
from smackctl.errors import SmackError, UsageError
from smackctl.wire import new_request_id

from .call import Call
from .local import LocalModels
from .relay import CHAT

__all__ = [
    "CODE_AT",
    "INSPECTED",
    "Decision",
    "Router",
    "code_signs",
    "decide",
    "file_names",
    "inspected",
    "text_of",
]

#: the weight of signs from which a request is code (below it but above 0: unclear)
CODE_AT = 2


def _grouped(alternatives: str) -> re.Pattern[str]:
    """``\\b(?:word|word…)\\b`` for lowercase text, the words grouped by their first
    character, each group in its words' order (the first that matches wins, as before): at a
    word boundary the engine tries the one group that can match, not ~200 words in turn
    (0.6 µs a boundary)."""
    words, depth, begin, i = [], 0, 0, 0
    while i < len(alternatives):
        ch = alternatives[i]
        if ch == "\\":
            i += 1  # an escaped character
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            words.append(alternatives[begin:i])
            begin = i + 1
        i += 1
    words.append(alternatives[begin:])
    groups: dict[str, list[str]] = {}
    for word in words:
        head = word[:2] if word.startswith("\\") else word[:1]
        assert head[-1:].isalnum() or head.startswith("\\"), word  # a literal first character
        assert word[len(head) : len(head) + 1] not in ("?", "*", "+", "{"), word
        groups.setdefault(head, []).append(word[len(head) :])
    body = "|".join(f"{head}(?:{'|'.join(rest)})" for head, rest in groups.items())
    return re.compile(rf"\b(?:{body})\b")


_FENCE = re.compile(r"```|~~~")
# Every pattern below is linear in the text, and tried on lowercase text without re.I where it
# can (an alternation whose words begin with a plain letter is then skipped a word at a time
# on one compare). A line's leading blanks are `[ \t]*+`: possessive (never given back) and
# never a newline, as `^\s*` under re.M was (10,000 newlines took 9.5 s); a `.*` stays on its
# line, and one line start tries each alternative once.
#: a stack trace: plain text first (`in`, at C speed), then its lines, then `NameError: x`
_TRACE_TEXT = (
    "Traceback (most recent call last)", "Exception in thread", "panicked at",
    "segmentation fault",
)  # fmt: skip
_TRACE_LINE = re.compile(
    r"^(?:[ \t]++at [\w$.<>]++\(.*:\d+\)|[ \t]*+File \"[^\"\n]+\", line \d+)", re.M
)
_ERROR = re.compile(r"(?:Error|Exception): \S")  # with a word character before it
_CODE_LINE = re.compile(
    r"^[ \t]*+(?=.)(?:def \w+\(|class \w+[:(]|import [\w.]+|from [\w.]+ import|#include[ \t]*<|"
    r"(?:public|private|static) [\w<>\[\]]+ \w+\(|fn \w+\(|func \w+\(|function \w*\(|"
    r"(?:const|let|var) \w+ ?=|return\b.*;|select .+ from|"
    r"(?:if|for|while) ?\(.*\) ?\{|.*\) ?=> ?\{?|\w+\(.*\);[ \t]*$|[{}][ \t]*$|"
    r"\$ \w+|>>> \w+)",
    re.M,
)
#: a file name with a source extension: from the first word character of a run of name
#: characters to the run's last extension. Tried once a run (where the character before is
#: none of the run's), not from each word in it (`\b[\w./-]+\.(ext)\b` went over a long run
#: of dots again from every word of it)
_FILE = re.compile(
    r"(?<![\w./-])[./-]*+(\w[\w./-]*\.(?:py|js|ts|tsx|jsx|rs|go|java|kt|c|cc|cpp|h|hpp|cs|rb|"
    r"php|sh|sql|swift|scala|lua|toml|yaml|yml|ipynb|gradle|dockerfile|makefile))(?!\w)"
)
_WORD_CHAR = re.compile(r"\w")
#: languages, runtimes, frameworks and tools: the TIOBE top 50 languages and the frameworks,
#: databases and tools most asked about (Stack Overflow's survey), not fitted to any prompt
_LANGUAGE = _grouped(
    r"python|javascript|typescript|rust|golang|go|java|jvm|kotlin|c\+\+|c#|ruby|php|"
    r"swift|objective-c|scala|perl|haskell|elixir|erlang|clojure|lua|dart|flutter|julia|"
    r"matlab|fortran|cobol|assembly|wasm|webassembly|zig|nim|ocaml|f#|groovy|powershell|"
    r"bash|zsh|shell|sql|postgres(?:ql)?|mysql|sqlite|mongodb|redis|elasticsearch|kafka|"
    r"regex|regexp|numpy|pandas|pytorch|tensorflow|jupyter|react|vue|angular|svelte|"
    r"next\.?js|django|flask|fastapi|spring(?: boot)?|rails|laravel|\.net|asp\.net|"
    r"node(?:\.?js)?|deno|npm|yarn|pip|conda|cargo|maven|gradle|cmake|"
    r"docker(?:file)?|kubernetes|k8s|terraform|ansible|nginx|git|github|gitlab|"
    r"css|html|json|xml|yaml|toml|api|rest|graphql|grpc|orm|cli|compiler|pytest|junit|"
    r"httpx|asyncio|makefile|linux|unix|ubuntu|bash script|vim|emacs|vs ?code|ide|"
    r"tcp|udp|sockets?|websockets?|oauth|jwt|ssh|ssl|tls|c"
)
_WORDS = _grouped(
    r"functions?|methods?|variables?|bugs?|debug(?:ging)?|compiles?|compiled|"
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
    r"promise|lambda|iterator|generator|decorator|inheritance|polymorphism|matrix"
)
_INLINE = re.compile(r"`[^`\n]+`")


#: the characters of the user's words the rules read: this many from the start and as many
#: from the end (signs of code sit in the question and in what is pasted around it; a
#: 1 MiB paste then costs what 4 KiB do); the length rule counts every character
INSPECTED = 2048
#: the longest header value written: a client reading its answer's head may cap it (h11 reads
#: 16 KiB of head at most)
HEADER_MAX = 1000
#: printable ASCII but ``%``: what a header value keeps as it is
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


@dataclass(frozen=True)
class Decision:
    model: str
    reason: str

    def header(self) -> str:
        """``MODEL; REASON`` for ``X-Smackctl-Route``. A header value must be Latin-1 (and
        is read as ASCII by most clients) while the reason quotes the user's words, in any
        script: every character outside printable ASCII, and ``%`` itself, is percent-encoded
        as UTF-8 (``urllib.parse.unquote`` gives the words back), after the text is cut to
        HEADER_MAX characters."""
        text = f"{self.model}; {self.reason}"
        if len(text) > HEADER_MAX:
            text = text[: HEADER_MAX - 1] + "…"
        return quote(text, safe=_HEADER_SAFE)


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


def inspected(text: str) -> str:
    """What the rules read of ``text``: all of it up to 2 × INSPECTED characters, else its
    first and last INSPECTED (a line cut in two is two lines)."""
    if len(text) <= 2 * INSPECTED:
        return text
    return text[:INSPECTED] + "\n" + text[-INSPECTED:]


def file_names(text: str) -> set[str]:
    """The file names with a source extension in ``text``, lowercased."""
    return set(_FILE.findall(text.lower()))


def _shown(found: set[str]) -> str:
    """At most three of what was found, each cut to 40 characters: the reason stays short."""
    return ", ".join(s if len(s) <= 40 else s[:39] + "…" for s in sorted(found)[:3])


def _has_trace(text: str) -> bool:
    """A stack trace's words or lines, or ``SomeError: what`` (a word character before)."""
    if any(words in text for words in _TRACE_TEXT) or _TRACE_LINE.search(text):
        return True
    return any(m.start() and _WORD_CHAR.match(text, m.start() - 1) for m in _ERROR.finditer(text))


def code_signs(text: str) -> tuple[int, list[str]]:
    """The weight of the signs of code in ``text`` (its ``inspected`` part), and what they
    were."""
    text = inspected(text)
    lower = text.lower()
    score, seen = 0, []
    if _FENCE.search(text):
        score += 3
        seen.append("a code fence")
    if _has_trace(text):
        score += 3
        seen.append("a stack trace")
    lines = len(_CODE_LINE.findall(lower))
    if lines:
        score += min(4, 2 * lines)
        seen.append(f"{lines} line(s) of code")
    if _INLINE.search(text):
        score += 1
        seen.append("inline code")
    for what, found, most in (
        ("file name", set(_FILE.findall(lower)), 2),
        ("language or tool", set(_LANGUAGE.findall(lower)), 2),
        ("programming word", set(_WORDS.findall(lower)), 2),
    ):
        if found:
            score += min(most, len(found))
            seen.append(f"{what} {_shown(found)}")
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
    """``decide`` with the supervisor's profile: its contexts, and its classifier (a local
    model, pinned) asked through the local models' own path."""

    def __init__(self, profile: Callable[[], Profile], local: LocalModels) -> None:
        self.profile, self.local = profile, local

    async def decide(self, path: str, body: dict[str, Any]) -> Decision:
        auto = self.profile().routing.auto
        if auto is None:
            raise UsageError(
                "`model: auto` needs rules: this profile has no `routing.auto`",
                "add `routing: {auto: {code: MODEL, general: MODEL}}` to the profile, or "
                "name a model",
            )
        return await decide(auto, path, body, self._context_of, self._classify)

    def _context_of(self, name: str) -> int | None:
        spec = self.profile().models.get(name)
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
            answer = await self.local.send(model, Call(CHAT, ask, new_request_id()))
            said = json.loads(bytes(answer.body))["choices"][0]["message"]["content"] or ""
        except (SmackError, ValueError, KeyError, IndexError, TypeError, AttributeError):
            return None
        word = said.strip().lower()
        return True if word.startswith("yes") else False if word.startswith("no") else None
