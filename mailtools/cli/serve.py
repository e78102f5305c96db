"""CLI for `mailtools serve` (placeholder until the tool lands)."""

from __future__ import annotations

import typer

from mailtools.core.exitcodes import Unavailable


def register(app: typer.Typer) -> None:
    from mailtools.commands import COMMANDS

    @app.command("serve", help=COMMANDS["serve"].summary)
    def serve_cmd() -> int:
        raise Unavailable("not implemented yet")
