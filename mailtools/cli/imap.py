"""CLI for `mailtools imap-serve`: parse options, run mailtools.imap.server."""

from __future__ import annotations

from typing import List, Optional

import typer

import mailtools.cli


def register(app: typer.Typer) -> None:
    from mailtools.commands import COMMANDS

    @app.command(
        "imap-serve", help=COMMANDS["imap-serve"].summary + ".", context_settings=mailtools.cli.CONTEXT,
        epilog="Exit status: 0 stopped by SIGTERM or SIGINT, 64 bad command line, 69 a listener cannot"
        " be opened, 78 bad configuration (a listen address without a port, a TLS listener without a"
        " certificate).",
    )
    def imap_serve_cmd(
        listen: Optional[List[str]] = typer.Option(
            None, "--listen", metavar="HOST:PORT",
            help="Plain IMAP (STARTTLS offered when [tls] is set); repeatable; replaces [imap] listen."),
        tls_listen: Optional[List[str]] = typer.Option(
            None, "--tls-listen", metavar="HOST:PORT",
            help="IMAP over implicit TLS; repeatable; replaces [imap] tls_listen."),
    ) -> int:
        import sys

        from mailtools.core import config
        from mailtools.imap import server

        cfg = config.load()
        return server.run(cfg, listen or None, tls_listen or None,
                          announce=lambda s: print(s, file=sys.stderr, flush=True))
