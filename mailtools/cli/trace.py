"""CLI for `mailtools trace-headers` (placeholder until the tool lands)."""

from __future__ import annotations

import typer

from mailtools.core.exitcodes import Unavailable


def register(app: typer.Typer) -> None:
    from mailtools.commands import COMMANDS

    @app.command("trace-headers", help=COMMANDS["trace-headers"].summary)
    def trace_headers_cmd() -> int:
        raise Unavailable("not implemented yet")
