"""CLI for `mailtools user add|del|list|passwd`: options only; the work is in mailtools.user."""

from __future__ import annotations

import typer

from mailtools.cli import CONTEXT

_EPILOG = ("Exit status: 0 done, 64 usage (or no terminal without --password-stdin), 65 bad "
           "address or password, 67 no such user (del, passwd), 73 user exists (add), "
           "78 bad configuration.")

_ADDRESS = typer.Argument(..., metavar="ADDRESS", help="The user's full address (user@domain); also the login name.")
_STDIN_HELP = "Read the password from the first line of stdin instead of asking twice on the terminal."
_SCHEME_HELP = "Hash scheme to write: ARGON2ID (default, as doveadm pw -s ARGON2ID) or BLF-CRYPT (bcrypt)."


def _scheme(value: str) -> str:
    from mailtools.core.auth import WRITE_SCHEMES

    v = value.upper()
    if v not in WRITE_SCHEMES:
        raise typer.BadParameter(f"must be one of {', '.join(WRITE_SCHEMES)}")
    return v


def _ask(from_stdin: bool, prompt: str) -> str:
    """The password (mailtools.user.read_password); Ctrl-C at the prompt ends the prompt's line
    before exiting 130, so the shell prompt does not land behind "Password for ...:"."""
    from mailtools import user

    try:
        return user.read_password(from_stdin, prompt)
    except KeyboardInterrupt:
        import sys

        sys.stderr.write("\n")
        raise typer.Exit(130) from None


def register(app: typer.Typer) -> None:
    from mailtools.commands import COMMANDS

    user_app = typer.Typer(
        name="user",
        help=COMMANDS["user"].summary + ". The file is Dovecot's passwd-file format (ROOT/users).",
        epilog=_EPILOG,
        no_args_is_help=True,
        context_settings=CONTEXT,
        rich_markup_mode=None,
        add_completion=False,
    )

    @user_app.command("add", help="Add a user, and create its Maildir with Sent, Drafts, Trash, Junk and Archive.",
                      epilog=_EPILOG, context_settings=CONTEXT)
    def add_cmd(
        address: str = _ADDRESS,
        password_stdin: bool = typer.Option(False, "--password-stdin", help=_STDIN_HELP),
        scheme: str = typer.Option("ARGON2ID", "--scheme", metavar="SCHEME", callback=_scheme, help=_SCHEME_HELP),
        no_maildir: bool = typer.Option(False, "--no-maildir", help="Do not create the Maildir (for example when it lives elsewhere)."),
    ) -> int:
        from mailtools import user
        from mailtools.core import config

        cfg = config.load()
        name = user.check_new(cfg, address)  # 65/73 before asking for a password
        password = _ask(password_stdin, f"Password for {name}")
        user.add(cfg, name, password, scheme, make_maildir=not no_maildir)
        return 0

    @user_app.command("del", help="Remove a user from the users file (the Maildir is kept).",
                      epilog=_EPILOG, context_settings=CONTEXT)
    def del_cmd(address: str = _ADDRESS) -> int:
        from mailtools import user
        from mailtools.core import config

        user.delete(config.load(), address)
        return 0

    @user_app.command("passwd", help="Set a user's password.", epilog=_EPILOG, context_settings=CONTEXT)
    def passwd_cmd(
        address: str = _ADDRESS,
        password_stdin: bool = typer.Option(False, "--password-stdin", help=_STDIN_HELP),
        scheme: str = typer.Option("ARGON2ID", "--scheme", metavar="SCHEME", callback=_scheme, help=_SCHEME_HELP),
    ) -> int:
        from mailtools import user
        from mailtools.core import config

        cfg = config.load()
        user.check_exists(cfg, address)  # 67 before asking for a password
        password = _ask(password_stdin, f"New password for {address}")
        user.passwd(cfg, address, password, scheme)
        return 0

    @user_app.command("list", help="List the users (plain: one a line; a table on a terminal).",
                      epilog=_EPILOG, context_settings=CONTEXT)
    def list_cmd(
        json_mode: bool = typer.Option(False, "--json", help='One JSON object per user: {"user", "scheme", "maildir", "maildir_exists"}.'),
    ) -> int:
        from mailtools import user
        from mailtools.core import config

        return user.list_users(config.load(), json_mode)

    app.add_typer(user_app, name="user")
