"""CLI for `mailtools submit`: options only; the work is in mailtools.submit.

`mailtools submit` and `sendmail` normally run through mailtools.submit.front (a getopt-style
parser: no typer at start-up, and it understands `-oi`, `-odi`, `-FCronDaemon`, `-B8BITMIME`
as sendmail callers send them). This definition gives --help, the man page check and the shell
completions; tests/test_submit_cli.py keeps its long options equal to the front's.
"""

from __future__ import annotations

from typing import List, Optional

import typer

from mailtools.cli import CONTEXT

_EPILOG = (
    "Sendmail-style options typer cannot show: -oi (same as -i), -oXXX (other sendmail options, "
    "e.g. -oem -odi: ignored), -FNAME/-fADDR/-B8BITMIME (values may be glued), -bm (default), "
    "-bp (list the queue, as mailq), -bs (SMTP on stdin/stdout), -bd (the server on [submit] "
    "listen/tls_listen), -bi (no-op), -h N, -L LABEL, "
    "-O OPT, -n, -U, -m (ignored). Refused (exit 64): -C, -X, -oQ and unknown options. Exit "
    "status: 0 queued (fsynced), 64 usage (bad option or address, no recipients), 65 bad data "
    "(empty message, line over 998 octets), 75 the queue cannot be written (try again), 78 bad "
    "configuration. Called as 'sendmail' it is this command; as 'mailq' it is 'submit -bp'."
)


def register(app: typer.Typer) -> None:
    from mailtools.commands import COMMANDS

    @app.command("submit", help=COMMANDS["submit"].summary + ". Reads the message on standard input.",
                 epilog=_EPILOG, context_settings=CONTEXT)
    def submit_cmd(
        recipients: Optional[List[str]] = typer.Argument(None, metavar="RECIPIENT", help="Envelope recipients; bare names get @hostname."),
        extract: bool = typer.Option(False, "-t", help="Also send to the To, Cc and Bcc addresses of the message."),
        ignore_dots: bool = typer.Option(False, "-i", help="A line with a lone '.' does not end the message (also -oi)."),
        sender: Optional[str] = typer.Option(None, "-f", "-r", metavar="SENDER", help="Envelope sender (default: your login name @hostname)."),
        full_name: Optional[str] = typer.Option(None, "-F", metavar="NAME", help="Full name for the From header when the message has none."),
        notify: Optional[str] = typer.Option(None, "-N", metavar="DSN", help="DSN NOTIFY: never, or success,failure,delay."),
        ret: Optional[str] = typer.Option(None, "-R", metavar="RET", help="DSN RET: hdrs or full."),
        envid: Optional[str] = typer.Option(None, "-V", metavar="ENVID", help="DSN envelope id."),
        body: Optional[str] = typer.Option(None, "-B", metavar="TYPE", help="Body type: 7BIT or 8BITMIME."),
        mode: Optional[str] = typer.Option(None, "-b", metavar="MODE", help="m: queue the message (default); p: list the queue; s: SMTP on stdin/stdout; d: run the submission server on the configured listeners."),
        option: Optional[List[str]] = typer.Option(None, "-o", metavar="OPT", help="Sendmail option: -oi is -i; the rest are ignored; -oQ is refused."),
        queue_run: bool = typer.Option(False, "-q", help="Run the queue once (as 'relay --once')."),
        verbose: bool = typer.Option(False, "-v", help="Print the queue log line on stderr."),
        listen: Optional[List[str]] = typer.Option(None, "--listen", metavar="HOST:PORT", help="Run the SMTP submission server here (STARTTLS, AUTH); repeatable; replaces [submit] listen."),
        tls_listen: Optional[List[str]] = typer.Option(None, "--tls-listen", metavar="HOST:PORT", help="Submission over implicit TLS (port 465 style); repeatable; replaces [submit] tls_listen."),
        workers: Optional[int] = typer.Option(None, "--workers", metavar="N", help="Server processes sharing the listeners (default [submit] workers: one per CPU); 1: a single process."),
        json_out: bool = typer.Option(False, "--json", help="With -bp: one JSON object per queue entry."),
        install: Optional[str] = typer.Option(None, "--install-sendmail", metavar="PATH", help="Write a fast sendmail launcher (python -I -S) at PATH, e.g. /usr/sbin/sendmail, and exit."),
    ) -> int:
        from mailtools.submit import front

        argv: list[str] = []
        argv += ["-t"] if extract else []
        argv += ["-i"] if ignore_dots else []
        argv += ["-v"] if verbose else []
        argv += ["-q"] if queue_run else []
        argv += ["--json"] if json_out else []
        argv += ["--install-sendmail", install] if install is not None else []
        for flag, value in (("-f", sender), ("-F", full_name), ("-N", notify), ("-R", ret),
                            ("-V", envid), ("-B", body), ("-b", mode)):
            if value is not None:
                argv += [flag, value]
        for value in option or []:
            argv += ["-o" + value]
        for value in listen or []:
            argv += ["--listen", value]
        for value in tls_listen or []:
            argv += ["--tls-listen", value]
        argv += ["--workers", str(workers)] if workers is not None else []
        argv += ["--", *(recipients or [])]
        return front.run_parsed(argv)
