"""The typer app: registers subcommands from mailtools.commands, nothing heavy at import time.

Each `mailtools/cli/<tool>.py` only parses options and calls into the module that does the job;
errors are raised as MailtoolsError and turned into an exit code in one place (run_typer).
"""

from __future__ import annotations

import importlib
from typing import Optional

import typer

from mailtools import __version__
from mailtools.commands import COMMANDS, DESCRIPTION
from mailtools.core import exitcodes

CONTEXT = {"help_option_names": ["--help"], "max_content_width": 100}


def _argument_types_from_metavars() -> None:
    """typer 0.2x prints an argument's Python type after its name in --help (`RECIPIENT
    <list[str]>`); ours all have a metavar that says what goes there (`RECIPIENT`, with `...`
    for a list), as options' help does. Arguments without one keep the type."""
    cls = getattr(getattr(typer, "core", None), "TyperArgument", None)
    shown = getattr(cls, "display_type_rich", None)
    if shown is None or getattr(shown, "_mailtools", False):
        return

    def display_type_rich(self, ctx):
        return None if self.metavar else shown(self, ctx)

    display_type_rich._mailtools = True
    cls.display_type_rich = display_type_rich


_argument_types_from_metavars()


def build_app(only: str | None = None) -> typer.Typer:
    """The whole CLI (for completions, docs and tests), or just one command (to run it)."""
    app = typer.Typer(
        name="mailtools",
        help=DESCRIPTION,
        no_args_is_help=True,
        add_completion=False,
        context_settings=CONTEXT,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
    )

    @app.callback()
    def _main(
        config: Optional[str] = typer.Option(
            None, "--config", metavar="FILE", help="Configuration file (else $MAILTOOLS_CONFIG, /etc/mailtools/mailtools.toml)."
        ),
        version: bool = typer.Option(False, "--version", help="Print the version and exit."),
    ) -> None:
        if version:
            typer.echo(f"mailtools {__version__}")
            raise typer.Exit(0)
        if config:
            from mailtools.core import config as cfgmod

            cfgmod.set_path(config)

    for name, cmd in COMMANDS.items():
        if only is None or name == only:
            importlib.import_module(cmd.cli).register(app)
    return app


def run_typer(name: str, args: list[str]) -> int:
    """Run one command through typer/click and return its exit code."""
    app = build_app(only=name)

    def call() -> int:
        try:
            rv = app(args=[name, *args], prog_name="mailtools", standalone_mode=False)
        except Exception as exc:  # typer's own click: match its exceptions by kind
            kind = type(exc).__name__
            if hasattr(exc, "exit_code") and kind == "Exit":
                return exc.exit_code
            if kind == "Abort":
                return 130
            if hasattr(exc, "show") and hasattr(exc, "format_message"):
                exc.show()
                return exitcodes.USAGE
            raise
        return rv if isinstance(rv, int) else exitcodes.OK

    return exitcodes.run(f"mailtools {name}", call)
