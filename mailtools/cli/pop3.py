"""CLI for `mailtools pop3-serve`: options only; the work is in mailtools.pop3."""

from __future__ import annotations

from typing import List, Optional

import typer

from mailtools.cli import CONTEXT


def register(app: typer.Typer) -> None:
    from mailtools.commands import COMMANDS

    @app.command(
        "pop3-serve", help=COMMANDS["pop3-serve"].summary + ".", context_settings=CONTEXT,
        epilog="Exit status: 0 after a clean stop (SIGTERM, SIGINT), 64 a malformed --listen or"
        " --tls-listen, 69 a listener cannot be opened, 78 bad configuration (a malformed listen"
        " address in it, a TLS listener without a certificate).",
    )
    def pop3_serve_cmd(
        listen: Optional[List[str]] = typer.Option(
            None, "--listen", metavar="HOST:PORT",
            help="Listen for POP3 (STLS offered when [tls] has a certificate); repeatable; replaces [pop3] listen."),
        tls_listen: Optional[List[str]] = typer.Option(
            None, "--tls-listen", metavar="HOST:PORT",
            help="Listen for POP3 over implicit TLS (port 995 style); repeatable; replaces [pop3] tls_listen."),
    ) -> int:
        from mailtools.core import config
        from mailtools.pop3.server import run

        cfg = config.load()
        return run(cfg, listen or None, tls_listen or None)
