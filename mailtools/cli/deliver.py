"""CLI for `mailtools deliver`: options only; the work is in mailtools.deliver.

Normally `mailtools deliver` runs through mailtools.deliver.fast_main (no typer at start-up);
this definition gives --help, the man page check and the shell completions, and runs the
command when typer is used directly. tests/test_deliver.py keeps the two option sets equal.
"""

from __future__ import annotations

from typing import List, Optional

import typer

from mailtools.cli import CONTEXT
from mailtools.deliver import OPTIONS

_EPILOG = (
    "Exit status: 0 delivered, 64 usage, 65 empty input, 67 unknown user, 73/74 cannot be "
    "stored here (permanent), 75 try again later (disk full, I/O error), 78 bad configuration."
)


def _opt(name: str, default=None):
    _key, metavar, help_ = OPTIONS[name]
    return typer.Option(default, name, metavar=metavar, help=help_)


def register(app: typer.Typer) -> None:
    from mailtools.commands import COMMANDS

    @app.command(
        "deliver",
        help=COMMANDS["deliver"].summary
        + ". Adds Return-Path (from -f) and Delivered-To (per ADDRESS); keeps every other byte.",
        epilog=_EPILOG,
        context_settings=CONTEXT,
    )
    def deliver_cmd(
        addresses: Optional[List[str]] = typer.Argument(
            None, metavar="ADDRESS", help="Local recipients (user@domain); each gets a copy in ROOT/mail/DOMAIN/USER."
        ),
        maildir: Optional[str] = _opt("--maildir"),
        folder: Optional[str] = _opt("--folder"),
        sender: Optional[str] = _opt("-f"),
    ) -> int:
        from mailtools import deliver

        return deliver.run(maildir, folder, sender, addresses or [])
