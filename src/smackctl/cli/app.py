"""The root of the command line: global options, the sub-apps, exit codes.

Exit codes: 0 ok, 1 error, 2 usage, 3 supervisor not running, 130 interrupted.
Errors become exit codes here and nowhere else.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Annotated, Any, ClassVar

import typer

from smackctl import __version__
from smackctl.errors import CommandFailed, SmackError

from . import logs_cmd, models, profile, service, supervisor, usage
from ._common import Globals
from ._group import Group
from .asking import complete
from .cache import cache_app
from .chat import chat
from .config_cmd import config_app
from .doctor import doctor
from .events import events
from .fleet import fleet_app
from .keys import keys_app
from .plugins import plugins_app
from .route import route
from .top import top
from .ui import ui

__all__ = ["app", "command_tree", "main"]


def _lazy_coercion() -> None:
    """Typer (0.2x) coerces every non-bool parameter through a pydantic TypeAdapter, and
    builds it even for a value that is None, the default of every optional option: that
    imports pydantic, ~100 ms of every command (`smackctl status` has two such options, the
    global --url and --profile). Its own ``RuntimeParam.coerce`` returns None (or () for
    a multi-value parameter) for None before it uses the adapter, and a str is returned as
    is for a ``str`` parameter, so building the adapter is skipped in those two cases only;
    any other value is coerced by typer as before. Nothing is patched when typer's internals
    are not the ones this was written against. ``tests/test_cli.py`` checks both answers
    against typer's own."""
    core = getattr(typer, "core", None)
    param_cls = getattr(core, "_TyperParameter", None)
    found = getattr(param_cls, "get_runtime_param", None)
    if found is None or getattr(found, "_smackctl", False):
        return
    build: Any = found

    class Cheap:
        """Stands in for a parameter's runtime coercion until a value needs the real one."""

        def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
            if value is None:
                return () if param.multiple or param.nargs == -1 else None
            if type(value) is str and _is_plain_str(param):
                return value
            return build(param).coerce(value, param=param, ctx=ctx)

    cheap = Cheap()

    def get_runtime_param(self: Any) -> Any:
        return self._runtime_param if self._runtime_param is not None else cheap

    get_runtime_param._smackctl = True  # type: ignore[attr-defined]
    param_cls.get_runtime_param = get_runtime_param  # type: ignore[union-attr]


def _is_plain_str(param: Any) -> bool:
    desc = getattr(param, "type_descriptor", None)
    info = getattr(desc, "parameter_info", None)
    return (
        getattr(desc, "annotation", None) in (str, str | None)  # Optional[str] is equal
        and getattr(info, "parser", None) is None
        and getattr(info, "click_type", None) is None
        and not param.multiple
        and param.nargs == 1
    )


_lazy_coercion()


class _Root(Group):
    """Turns smackctl's errors into messages and exit codes: the only place that does.

    It also builds its commands when they are first asked for: typer builds every command of
    the tree (signatures, type hints, params) before it parses anything, ~35 ms of every
    command here, when one command runs. ``_defer`` moves the root's commands and sub-apps
    out of the Typer app into ``lazy``; each is built by typer itself, alone, on demand.
    """

    lazy: ClassVar[dict[str, Callable[[], Any]]] = {}

    def list_commands(self, ctx: Any) -> list[str]:
        return [*self.commands, *(n for n in self.lazy if n not in self.commands)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            self.commands[cmd_name] = self.lazy[cmd_name]()
        return self.commands.get(cmd_name)

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        """click suggests a close name for an unknown subcommand of a group, but from the
        commands already built, which here are none: suggest from every command's name."""
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            import difflib

            close = difflib.get_close_matches(name, self.list_commands(ctx), n=1)
            if close:
                ctx.fail(f"No such command {name!r}. Did you mean {close[0]!r}?")
        return super().resolve_command(ctx, args)

    def invoke(self, ctx: typer.Context) -> object:  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except SmackError as exc:
            from . import output

            if not isinstance(exc, CommandFailed):  # that one said why itself
                output.error(exc.message, exc.hint)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            sys.stderr.write("\n")
            raise typer.Exit(130) from None


def _defer(root: typer.Typer) -> None:
    """Move ``root``'s commands, then its sub-apps (typer's own order), into ``_Root.lazy``.
    Each is built through a one-item Typer app, by ``typer.main.get_command``: the same
    code typer runs for the whole tree, so the command is the one typer would have built."""

    def one_command(info: Any) -> Any:
        t = typer.Typer(add_completion=False, rich_markup_mode=None)
        t.registered_commands.append(info)
        return typer.main.get_command(t)

    def one_group(info: Any) -> Any:
        t = typer.Typer(add_completion=False, rich_markup_mode=None)
        t.registered_groups.append(info)
        return typer.main.get_command(t).commands[info.name]  # type: ignore[attr-defined]

    for info in root.registered_commands:
        assert info.callback is not None
        name = info.name or typer.main.get_command_name(info.callback.__name__)
        _Root.lazy[name] = functools.partial(one_command, info)
    for group in root.registered_groups:
        assert group.name is not None
        _Root.lazy[group.name] = functools.partial(one_group, group)
    root.registered_commands, root.registered_groups = [], []


app = typer.Typer(
    rich_markup_mode=None,  # click's plain help: typer's rich help imports 200 ms of rich
    cls=_Root,
    name="smackctl",
    help="Run local GGUF language models with llama.cpp and keep them under control.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"smackctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            envvar="SMACKCTL_URL",
            help="Supervisor URL (default: the one that is running, else http://127.0.0.1 at "
            "$SMACKCTL_PORT, 7622 unless set).",
        ),
    ] = None,
    no_autostart: Annotated[
        bool,
        typer.Option(
            "--no-autostart",
            envvar="SMACKCTL_NO_AUTOSTART",
            help="Fail (exit 3) instead of starting the supervisor when it is not running.",
        ),
    ] = False,
    profile: Annotated[
        str | None,
        typer.Option(
            "--profile",
            "-p",
            envvar="SMACKCTL_PROFILE",
            help="Profile used when a command starts the supervisor.",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """smackctl: one supervisor, one llama.cpp runner per loaded model, an OpenAI API.

    Files live under SMACKCTL_HOME when set (else the platform's config/data/state dirs).
    """
    ctx.obj = Globals(url=url, autostart=not no_autostart, profile=profile)


# every command and group of commands, registered here and nowhere else
for command in (
    supervisor.start, supervisor.stop, supervisor.restart, supervisor.status, logs_cmd.logs,
    supervisor.env, top, usage.usage, usage.backends, events, route, doctor, chat, complete, ui,
):  # fmt: skip
    app.command()(command)
for name, group in (
    ("models", models.app), ("profile", profile.app), ("service", service.app),
    ("plugins", plugins_app), ("cache", cache_app), ("config", config_app), ("keys", keys_app),
    ("fleet", fleet_app),
):  # fmt: skip
    app.add_typer(group, name=name)
_defer(app)


def command_tree() -> Any:
    """The root click group with every command built (for the man page and the tests)."""
    root = typer.main.get_command(app)
    ctx = root.context_class(root)
    for name in root.list_commands(ctx):  # type: ignore[attr-defined]
        root.get_command(ctx, name)  # type: ignore[attr-defined]
    return root


def main() -> None:
    app(prog_name="smackctl")
