"""CLI for `mailtools mx-lookup` (placeholder until the tool lands)."""

from __future__ import annotations

import typer

from mailtools.core.exitcodes import Unavailable


def register(app: typer.Typer) -> None:
    from mailtools.commands import COMMANDS

    @app.command("mx-lookup", help=COMMANDS["mx-lookup"].summary)
    def mx_lookup_cmd() -> int:
        raise Unavailable("not implemented yet")
