"""CLI for `mailtools imap-serve` (placeholder until the tool lands)."""

from __future__ import annotations

import typer

from mailtools.core.exitcodes import Unavailable


def register(app: typer.Typer) -> None:
    from mailtools.commands import COMMANDS

    @app.command("imap-serve", help=COMMANDS["imap-serve"].summary)
    def imap_serve_cmd() -> int:
        raise Unavailable("not implemented yet")
