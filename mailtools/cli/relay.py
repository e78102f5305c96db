"""CLI for `mailtools relay`: options only; the work is in mailtools.relay."""

from __future__ import annotations

from typing import List, Optional

import typer

from mailtools.cli import CONTEXT


def register(app: typer.Typer) -> None:
    from mailtools.commands import COMMANDS

    @app.command(
        "relay",
        help=COMMANDS["relay"].summary
        + ". Without --once/--list/--flush/--hold/--release/--delete: the queue daemon plus the"
        " inbound SMTP listeners ([relay] listen, or --listen), until SIGTERM.",
        epilog="Exit status: 0 success (also an overlapping --once run, and a pass that deferred or"
        " bounced recipients: see the log lines on stderr), 64 usage (conflicting options, a malformed"
        " queue id or --smarthost), 66 no such queue entry, 69 a listener cannot be opened, 75 the"
        " entry is being delivered right now (try again), 78 bad configuration.",
        context_settings=CONTEXT,
    )
    def relay_cmd(
        once: bool = typer.Option(False, "--once", help="One pass over the queue, then exit (for cron); an overlapping --once run exits at once with status 0."),
        listen: Optional[List[str]] = typer.Option(None, "--listen", metavar="HOST:PORT", help="Accept inbound SMTP for the local domains here (repeatable; replaces [relay] listen).", show_default=False),
        list_: bool = typer.Option(False, "--list", help="List the queue (same as submit -bp / mailq)."),
        json_mode: bool = typer.Option(False, "--json", help="With --list: one JSON object per queue entry."),
        flush: bool = typer.Option(False, "--flush", help="Retry every deferred entry now (one pass, then exit)."),
        smarthost: Optional[str] = typer.Option(None, "--smarthost", metavar="HOST:PORT", help="Send everything through this relay (AUTH from [relay.auth]; port 465 is implicit TLS).", show_default=False),
        hold: Optional[str] = typer.Option(None, "--hold", metavar="ID", help="Put a queue entry on hold (no delivery until --release).", show_default=False),
        release: Optional[str] = typer.Option(None, "--release", metavar="ID", help="Release a held queue entry.", show_default=False),
        delete: Optional[str] = typer.Option(None, "--delete", metavar="ID", help="Delete a queue entry (no bounce).", show_default=False),
    ) -> int:
        from mailtools.relay import main

        return main.run(once=once, listen=listen, list_=list_, json_mode=json_mode, flush=flush,
                        smarthost=smarthost, hold=hold, release=release, delete=delete)
