"""CLI for `mailtools pop3-serve` (placeholder until the tool lands)."""

from __future__ import annotations

import typer

from mailtools.core.exitcodes import Unavailable


def register(app: typer.Typer) -> None:
    from mailtools.commands import COMMANDS

    @app.command("pop3-serve", help=COMMANDS["pop3-serve"].summary)
    def pop3_serve_cmd() -> int:
        raise Unavailable("not implemented yet")
