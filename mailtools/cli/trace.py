"""CLI for `mailtools trace-headers`: options only; the work is in mailtools.trace."""

from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    from mailtools.cli import CONTEXT
    from mailtools.commands import COMMANDS

    @app.command(
        "trace-headers", help=COMMANDS["trace-headers"].summary + ".", context_settings=CONTEXT,
        epilog="Exit status: 0 every input item reported (warnings do not change it), 64 usage, 65 an"
        " input item is not a message (empty, no header section), 66 FILE is missing, unreadable or a"
        " directory.",
    )
    def trace_headers_cmd(
        file: Optional[str] = typer.Argument(
            None, metavar="FILE|-", help="A message or an mbox (default: standard input)."
        ),
        json_mode: bool = typer.Option(
            False, "--json", help="One JSON object per message, one per line (fields: man mailtools-trace-headers)."
        ),
        keep_going: bool = typer.Option(
            False, "--all", help="Keep going past input items that are not messages (exit 65 at the end)."
        ),
    ) -> int:
        from mailtools.trace.command import run

        return run(file, json_mode=json_mode, keep_going=keep_going)
