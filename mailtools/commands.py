"""The command registry: names, one-line summaries, and where each command's code lives.

Light on purpose: `mailtools --help`, `sendmail` and `deliver` read this without importing typer.
Each `cli` module defines `register(app)` adding its typer command(s); `fast` names a
`module:function(argv) -> int` front that runs the command without typer (start-up time is a
feature for programs that cron and MTAs run once per message). A test checks the two agree.
"""

from __future__ import annotations

from collections import namedtuple

# cli: module with register(app); summary: one line; fast: "module:function" taking argv (after
# the command name), or None. (collections.namedtuple: typing costs start-up time.)
Command = namedtuple("Command", "cli summary fast", defaults=(None,))


COMMANDS: dict[str, Command] = {
    "mx-lookup": Command("mailtools.cli.mx", "Show where mail for a domain goes: MX hosts in delivery order, diagnosis", "mailtools.mx:fast_main"),
    "submit": Command("mailtools.cli.submit", "Queue a message (sendmail drop-in), or run the SMTP submission server", "mailtools.submit.front:submit_main"),
    "relay": Command("mailtools.cli.relay", "Run the mail queue to MX hosts or a smarthost; accept inbound SMTP for local domains", "mailtools.relay.main:fast_main"),
    "deliver": Command("mailtools.cli.deliver", "Deliver a message from stdin into a Maildir (MDA)", "mailtools.deliver:fast_main"),
    "imap-serve": Command("mailtools.cli.imap", "Serve the Maildirs over IMAP4rev1"),
    "pop3-serve": Command("mailtools.cli.pop3", "Serve the Maildirs over POP3"),
    "trace-headers": Command("mailtools.cli.trace", "Show the path a message took, hop by hop, from its Received headers", "mailtools.trace.command:fast_main"),
    "serve": Command("mailtools.cli.serve", "Run the whole mail system with one command on unprivileged ports"),
    "user": Command("mailtools.cli.user", "Manage the users file (add, del, list, passwd)"),
}

DESCRIPTION = (
    "Composable Unix mail utilities: submit (sendmail), relay (MTA), deliver (MDA),\n"
    "imap-serve, pop3-serve, mx-lookup and trace-headers over one spool and one Maildir tree."
)


def help_text() -> str:
    width = max(len(n) for n in COMMANDS) + 2
    lines = [
        "Usage: mailtools [--config FILE] [--version] COMMAND [ARGS]...",
        "",
        *("  " + line for line in DESCRIPTION.splitlines()),
        "",
        "Options:",
        "  --config FILE  configuration file (else $MAILTOOLS_CONFIG, /etc/mailtools/mailtools.toml)",
        "  --version      print the version and exit",
        "  --help         show this message and exit",
        "",
        "Commands:",
        *(f"  {name:<{width}}{cmd.summary}" for name, cmd in COMMANDS.items()),
        "",
        "Run 'mailtools COMMAND --help' for a command's options; see mailtools(1).",
    ]
    return "\n".join(lines) + "\n"
