"""CLI for `mailtools serve`: options only; the work is in mailtools.serve."""

from __future__ import annotations

from typing import Optional

import typer

from mailtools.cli import CONTEXT

_LISTEN = "HOST:PORT, or 'off'"


def register(app: typer.Typer) -> None:
    from mailtools.commands import COMMANDS

    @app.command("serve", help=COMMANDS["serve"].summary + ".", context_settings=CONTEXT,
                 epilog="Exit status: 0 after a clean stop (SIGTERM, SIGINT), 69 a listener cannot be"
                 " opened (address in use, permission), 78 bad configuration.")
    def serve_cmd(
        root: Optional[str] = typer.Option(None, "--root", metavar="DIR", help="Data root (same as MAILTOOLS_HOME=DIR); created with a config, a self-signed certificate and folders when new."),
        hostname: Optional[str] = typer.Option(None, "--hostname", metavar="NAME", help="Host name for banners and Received headers (else the config's)."),
        smtp: Optional[str] = typer.Option(None, "--smtp", metavar="HOST:PORT", help=f"Inbound SMTP listener (default 127.0.0.1:2525; {_LISTEN})."),
        submission: Optional[str] = typer.Option(None, "--submission", metavar="HOST:PORT", help=f"Submission with STARTTLS (default 127.0.0.1:5870; {_LISTEN})."),
        submissions: Optional[str] = typer.Option(None, "--submissions", metavar="HOST:PORT", help=f"Submission over implicit TLS (default 127.0.0.1:4650; {_LISTEN})."),
        imap: Optional[str] = typer.Option(None, "--imap", metavar="HOST:PORT", help=f"IMAP with STARTTLS (default 127.0.0.1:1143; {_LISTEN})."),
        imaps: Optional[str] = typer.Option(None, "--imaps", metavar="HOST:PORT", help=f"IMAP over TLS (default 127.0.0.1:9930; {_LISTEN})."),
        pop3: Optional[str] = typer.Option(None, "--pop3", metavar="HOST:PORT", help=f"POP3 with STLS (default 127.0.0.1:1100; {_LISTEN})."),
        pop3s: Optional[str] = typer.Option(None, "--pop3s", metavar="HOST:PORT", help=f"POP3 over TLS (default 127.0.0.1:9950; {_LISTEN})."),
        submission_workers: Optional[int] = typer.Option(None, "--submission-workers", metavar="N", help="Submission worker processes beside serve's own; 0: submission in serve's own process (default [serve] submission_workers: 1 with two or more CPUs, else 0)."),
    ) -> int:
        from mailtools import serve

        overrides = dict(smtp=smtp, submission=submission, submissions=submissions, imap=imap,
                         imaps=imaps, pop3=pop3, pop3s=pop3s)
        return serve.run(root, overrides, hostname, submission_workers)
