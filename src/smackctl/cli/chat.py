"""`smackctl chat`: one-shot (a prompt or piped stdin) or a REPL with slash commands."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from smackctl.errors import SmackError, UsageError

from . import output
from ._common import client
from .asking import check_answer, prepare
from .completion import complete_model, local_model_names

if TYPE_CHECKING:
    from smackctl.client import Client

__all__ = ["chat"]

SAMPLING = ("temperature", "top_p", "max_tokens", "seed")
COMMANDS = (
    "/help",
    "/model",
    "/models",
    "/system",
    "/set",
    "/clear",
    "/save",
    "/load",
    "/stats",
    "/exit",
)
HELP = """\
/help                 this list
/model NAME           switch model, keep the conversation
/models               list known models
/system TEXT          set the system prompt
/set KEY VALUE        temperature, top_p, max_tokens or seed (`/set` alone shows them)
/clear                start a new conversation
/save FILE            save the conversation as JSON
/load FILE            load a conversation saved with /save
/stats                tokens, time to first token and tokens/s of the last reply
/exit                 leave (Ctrl-D too)
Other /commands run the supervisor's plugins (`smackctl plugins list`; Tab completes them).
Multi-line input: a line with only \"\"\" starts and ends it."""


@dataclass
class Stats:
    tokens: int = 0
    ttft: float | None = None
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        gen = self.seconds - (self.ttft or 0.0)
        return (self.tokens - 1) / gen if self.tokens > 1 and gen > 0 else 0.0

    def line(self) -> str:
        ttft = f"{self.ttft * 1000:.0f} ms" if self.ttft is not None else "-"
        return f"{self.tokens} tokens, first token {ttft}, {self.rate:.1f} tokens/s"


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


def _reply(c: Client, s: Session, *, stream: bool, render_md: bool) -> str:
    """Ask for the next assistant message; print it as it comes; return its text."""
    started = time.perf_counter()
    stats = Stats()
    if not stream:
        resp = c.post("/v1/chat/completions", s.request())
        s.answered_by = resp.get("model") or s.answered_by
        text = resp["choices"][0]["message"]["content"] or ""
        stats.tokens = (resp.get("usage") or {}).get("completion_tokens") or 0
        stats.seconds = time.perf_counter() - started
        s.last = stats
        check_answer(text, resp["choices"][0].get("finish_reason"), s.answered_by)
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
        s.last = stats
    check_answer(text, finish[-1] if finish else None, s.answered_by)
    return text


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
    answer = _reply(c, s, stream=stream, render_md=md)
    s.messages.append({"role": "assistant", "content": answer})
    output.info(s.last.line())


def completions(line: str, text: str, models: list[str], plugins: list[str]) -> list[str]:
    """What Tab offers: model names after ``/model ``, else the REPL's own commands and the
    slash commands of the plugins the supervisor's profile enables."""
    if line.startswith("/model "):
        return [m for m in models if m.startswith(text)]
    return [cmd for cmd in [*COMMANDS, *(f"/{p}" for p in plugins)] if cmd.startswith(text)]


def _setup_readline(history: Path, models: list[str], plugins: list[str]) -> Any:
    try:
        import readline
    except ImportError:  # pragma: no cover - not on Linux
        return None
    history.parent.mkdir(parents=True, exist_ok=True)
    try:
        readline.read_history_file(history)
    except OSError:
        pass

    def complete(text: str, state: int) -> str | None:
        options = completions(readline.get_line_buffer(), text, models, plugins)
        return options[state] if state < len(options) else None

    readline.set_completer(complete)
    readline.set_completer_delims(" ")
    readline.parse_and_bind("tab: complete")
    return readline


def _read_input(prompt: str) -> str:
    line = input(prompt)
    if line.strip() != '"""':
        return line
    lines = []
    while (more := input("... ")).strip() != '"""':
        lines.append(more)
    return "\n".join(lines)


def _command(c: Client, s: Session, line: str) -> bool:
    """Run a slash command; False means leave the REPL."""
    cmd, _, arg = line.partition(" ")
    arg = arg.strip()
    if cmd == "/exit":
        return False
    if cmd == "/help":
        print(HELP)
    elif cmd == "/models":
        current = s.resolved or s.model
        for m in c.get("/api/models"):
            state = m["state"] if m["on_disk"] or m["state"] != "stopped" else "not pulled"
            print(f"{m['name']}  {state}" + ("  *" if m["name"] == current else ""))
    elif cmd == "/model":
        if not arg:
            name = s.model or s.answered_by or s.resolved
            print(f"model: {name}" + ("" if s.model else " (the profile's default)"))
        else:
            c.get(f"/api/models/{arg}")  # unknown → a clear error, the session goes on
            s.resolved = prepare(c, arg, s.options)  # a base model: said here, too
            s.model = arg
            print(f"model: {s.resolved or arg}")
    elif cmd == "/system":
        s.system = arg or None
        print("system prompt set" if arg else "system prompt cleared")
    elif cmd == "/set":
        key, _, value = arg.partition(" ")
        if not key:
            for k in SAMPLING:
                shown = s.options.get(k)
                print(f"{k} = {'(the profile default)' if shown is None else shown}")
        elif key not in SAMPLING or not value:
            print(f"usage: /set KEY VALUE, KEY one of {', '.join(SAMPLING)}")
        else:
            try:
                s.options[key] = float(value) if key in ("temperature", "top_p") else int(value)
            except ValueError:
                print(f"{key} needs a number, got {value!r}")
            else:
                print(f"{key} = {s.options[key]}")
    elif cmd == "/clear":
        s.messages, s.conv_id = [], None
        print("new conversation")
    elif cmd == "/save":
        if not arg:
            print("usage: /save FILE")
        else:
            data = {"model": s.model, "system": s.system, "messages": s.messages}
            Path(arg).expanduser().write_text(json.dumps(data, indent=2) + "\n")
            print(f"saved {len(s.messages)} messages to {arg}")
    elif cmd == "/load":
        try:
            data = json.loads(Path(arg).expanduser().read_text())
            s.messages = list(data["messages"])
            s.model, s.system = data.get("model") or s.model, data.get("system")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"cannot load {arg!r}: {exc}")
        else:
            s.conv_id = None
            print(f"loaded {len(s.messages)} messages from {arg}")
    elif cmd == "/stats":
        print(s.last.line())
    else:
        print(f"unknown command {cmd}; known: {' '.join(COMMANDS)}")
    return True


def _plugin_commands(c: Client) -> list[str]:
    """The slash commands of the plugins the supervisor's profile enables, less those the
    REPL has itself (its /models wins): they go to the supervisor as messages."""
    own = {cmd.lstrip("/") for cmd in COMMANDS}
    try:
        listed = c.get("/api/plugins")
    except SmackError:
        return []
    return [p["name"] for p in listed if p["enabled"] and not p["error"] and p["name"] not in own]


def _repl(c: Client, s: Session, store: Any, *, stream: bool, md: bool) -> None:
    from smackctl.paths import get_paths

    plugins = _plugin_commands(c)
    rl = (
        _setup_readline(get_paths().history_path, local_model_names(), plugins)
        if sys.stdin.isatty()
        else None
    )
    output.info("smackctl chat: /help for commands, Ctrl-D or /exit to leave")
    try:
        while True:
            try:
                line = _read_input(">>> ")
            except EOFError:
                print()
                return
            except KeyboardInterrupt:
                print()
                continue
            if not line.strip():
                continue
            try:
                if line.startswith("/") and line.split()[0].lstrip("/") not in plugins:
                    if not _command(c, s, line.strip()):
                        return
                    continue
                s.messages.append({"role": "user", "content": line})
                try:
                    answer = _reply(c, s, stream=stream, render_md=md)
                except KeyboardInterrupt:
                    s.messages.pop()
                    output.info("\n(cancelled)")
                    continue
                s.messages.append({"role": "assistant", "content": answer})
                s.conv_id = store.save(s.conv_id, s.stored_model, s.messages)
                output.info(s.last.line())
            except SmackError as exc:
                output.error(exc.message, exc.hint)
    finally:
        if rl is not None:
            from smackctl.paths import get_paths

            rl.write_history_file(get_paths().history_path)


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
        text = " ".join(prompt or [])
        piped = ""
        if not interactive and not sys.stdin.isatty():
            piped = sys.stdin.read()
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
                _repl(c, s, store, stream=not no_stream, md=md)
            else:
                raise UsageError(
                    "no prompt given", 'smackctl chat "your question"  (or pipe text in)'
                )
    finally:
        store.close()
