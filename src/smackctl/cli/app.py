"""The root of the command line: global options, the sub-apps, exit codes.

Exit codes: 0 ok, 1 error, 2 usage, 3 supervisor not running, 130 interrupted.
Errors become exit codes here and nowhere else.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from smackctl import __version__
from smackctl.errors import SmackError

from . import models, ops, profile, supervisor
from ._common import Globals
from .chat import chat

__all__ = ["app", "main"]


class _Root(typer.core.TyperGroup):
    """Turns smackctl's errors into messages and exit codes: the only place that does."""

    def invoke(self, ctx: typer.Context) -> object:  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except SmackError as exc:
            from . import output

            output.error(exc.message, exc.hint)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            sys.stderr.write("\n")
            raise typer.Exit(130) from None


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
            help="Supervisor URL (default: the one that is running, else http://127.0.0.1:7622).",
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


supervisor.register(app)
app.add_typer(models.app, name="models")
app.add_typer(profile.app, name="profile")
ops.register(app)
app.command()(chat)


def main() -> None:
    app(prog_name="smackctl")
