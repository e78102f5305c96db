"""CLI for `mailtools mx-lookup`: options only; the work is in mailtools.mx."""

from __future__ import annotations

from typing import List, Optional

import typer

from mailtools.cli import CONTEXT


def register(app: typer.Typer) -> None:
    from mailtools.commands import COMMANDS

    @app.command("mx-lookup", help=COMMANDS["mx-lookup"].summary + ". '-' reads names from stdin, one per line, resolved concurrently.", context_settings=CONTEXT,
                 epilog="Exit status: 0 a usable exchanger (explicit or implicit), 64 not a domain or address, 68 no mail there (NXDOMAIN, null MX, no exchanger with an address), 75 DNS temporary failure (try again; never a fallback to the A record), 78 bad [dns] configuration. With several names the most urgent wins: 75, 68, 64, 0. --check does not change it.")
    def mx_lookup_cmd(
        names: Optional[List[str]] = typer.Argument(None, metavar="DOMAIN|ADDRESS... | -", help="Domains or mail addresses (the domain after the last '@'); '-' reads them from stdin.", show_default=False),
        json_mode: bool = typer.Option(False, "--json", help="One JSON object per name, one per line."),
        nameserver: Optional[List[str]] = typer.Option(None, "--nameserver", metavar="IP[:PORT]", help="Ask this name server (repeatable; else [dns] nameservers, else /etc/resolv.conf).", show_default=False),
        timeout: Optional[float] = typer.Option(None, "--timeout", metavar="S", help="Seconds per DNS lookup and per SMTP step of --check (else [dns] timeout, 5).", show_default=False),
        check: bool = typer.Option(False, "--check", help="Also connect to each exchanger: banner, EHLO, STARTTLS, TLS version, certificate; and show SPF, DMARC, MTA-STS and TLS-RPT records."),
        port: int = typer.Option(25, "--port", metavar="PORT", help="SMTP port for --check."),
        concurrency: int = typer.Option(200, "--concurrency", metavar="N", help="DNS queries in flight at once (names from stdin resolved together)."),
    ) -> int:
        from mailtools import mx

        return mx.run(names or [], json_mode=json_mode, nameservers=nameserver, timeout=timeout, check=check, port=port, concurrency=concurrency)
