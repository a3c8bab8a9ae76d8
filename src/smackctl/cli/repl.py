"""`smackctl chat`'s REPL: readline with history and Tab completion, multi-line input, the
slash commands, and the plugins' commands passed on to the supervisor."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smackctl.errors import SmackError

from . import output
from .asking import prepare
from .completion import local_model_names
from .session import SAMPLING, reply

if TYPE_CHECKING:
    from smackctl.client import Client

    from .session import Session

__all__ = ["COMMANDS", "HELP", "completions", "repl"]

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
    line = output.as_text(input(prompt))
    if line.strip() != '"""':
        return line
    lines = []
    while (more := output.as_text(input("... "))).strip() != '"""':
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


def repl(c: Client, s: Session, store: Any, *, stream: bool, md: bool) -> None:
    from smackctl.paths import get_paths

    plugins = _plugin_commands(c)
    reconfigure = getattr(sys.stdin, "reconfigure", None)
    if reconfigure is not None:  # a line that is not UTF-8 is read (as_text: U+FFFD), not fatal
        reconfigure(errors="surrogateescape")
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
                    answer = reply(c, s, stream=stream, render_md=md)
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
