"""`mailtools user`: manage the users file (add, del, list, passwd) and new users' Maildirs.

The file format, hashing and atomic rewrites are in mailtools.core.auth; this module adds what
an operator needs around them: reading a password (TTY prompt twice, or one line on stdin for
scripts), creating a new user's Maildir with the RFC 6154 special-use folders, and output.
"""

from __future__ import annotations

import os
import sys

from mailtools.core import auth
from mailtools.core.exitcodes import DataError, NoUser, UsageError

SPECIAL_FOLDERS = ("Sent", "Drafts", "Trash", "Junk", "Archive")
MAX_PASSWORD = 255  # RFC 4616 2: SASL PLAIN carries at most 255 octets of password


def read_password(from_stdin: bool, prompt: str = "Password") -> str:
    """One line from stdin (--password-stdin), or asked twice on the terminal."""
    if from_stdin:
        line = sys.stdin.buffer.readline()
        try:
            password = line.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise DataError("the password on stdin is not UTF-8") from None
    else:
        if not sys.stdin.isatty():
            raise UsageError("no terminal to ask for a password on: use --password-stdin")
        import getpass

        password = getpass.getpass(f"{prompt}: ")
        if getpass.getpass(f"{prompt} (again): ") != password:
            raise DataError("the passwords do not match")
    if not password:
        raise DataError("empty password")
    if len(password.encode("utf-8")) > MAX_PASSWORD:
        raise DataError(f"password longer than {MAX_PASSWORD} bytes (SASL PLAIN cannot carry it)")
    if any(c in password for c in "\0\r\n"):
        raise DataError("the password contains a NUL or line break")
    return password


def _users(cfg) -> auth.Users:
    return auth.Users(cfg.users_file)


def _note(message: str) -> None:
    sys.stderr.write(f"mailtools user: {message}\n")


def check_new(cfg, address: str) -> str:
    """Before asking for a password: the canonical name, or DataError (65) / CantCreate (73).
    A domain that is not local gets a note (the user can log in and send, nothing more)."""
    name = auth.check_username(address)
    if auth.Users(cfg.users_file).exists(name):
        raise auth.CantCreate(f"user {name} already exists")
    domain = name.rpartition("@")[2]
    if not cfg.is_local_domain(domain):
        _note(f"note: {domain} is not in local_domains: this user can log in and send, "
              "but mail to it is relayed elsewhere, not delivered here")
    return name


def add(cfg, address: str, password: str, scheme: str = "ARGON2ID", make_maildir: bool = True) -> str:
    """Add a user, then create its Maildir; returns the canonical user name."""
    name = auth.check_username(address)
    if make_maildir:
        # first, so a user never exists without its Maildir (a failed add leaves an empty one)
        create_maildir(cfg, name)
    auth.Users(cfg.users_file).add(name, password, scheme)
    return name


def create_maildir(cfg, name: str):
    """ROOT/mail/DOMAIN/LOCAL with cur/new/tmp, the special-use folders and a Dovecot
    `subscriptions` file naming them (kept if it exists). Returns the path."""
    from mailtools.core.maildir import Maildir

    path = cfg.maildir_for(name)
    md = Maildir(path)
    md.create()
    for folder in SPECIAL_FOLDERS:
        try:
            md.create_folder(folder)
        except FileExistsError:
            pass
    subs = os.path.join(path, "subscriptions")
    if not os.path.exists(subs):
        # Dovecot's format, version 2: header, blank line, one folder a line.
        tmp = f"{subs}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("V\t2\n\n" + "".join(n + "\n" for n in SPECIAL_FOLDERS))
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, subs)
    return path


def delete(cfg, address: str) -> str:
    """Remove a user from the users file (the Maildir stays); returns the name removed."""
    users = _users(cfg)
    rec = users.get(address)
    if rec is None:
        raise NoUser(f"no such user: {address}")
    users.delete(address)
    return rec.name


def passwd(cfg, address: str, password: str, scheme: str = "ARGON2ID") -> None:
    users = _users(cfg)
    if not users.exists(address):
        raise NoUser(f"no such user: {address}")
    users.set_password(address, password, scheme)


def check_exists(cfg, address: str) -> None:
    """Raise NoUser before asking for a password nobody will use."""
    if not _users(cfg).exists(address):
        raise NoUser(f"no such user: {address}")


def records(cfg) -> tuple[list[dict], list[str]]:
    """(one dict per user, problems in the file) for `user list`."""
    users = _users(cfg)
    out = []
    for rec in sorted(users.records.values(), key=lambda r: r.lineno):
        try:
            maildir = str(cfg.maildir_for(rec.name))
        except ValueError:
            maildir = None
        out.append({"user": rec.name, "scheme": rec.scheme, "maildir": maildir,
                    "maildir_exists": bool(maildir) and os.path.isdir(os.path.join(maildir, "cur"))})
    return out, users.problems


def list_users(cfg, json_mode: bool = False) -> int:
    from mailtools.core import output

    rows, problems = records(cfg)
    for p in problems:
        _note(p)
    if json_mode:
        for row in rows:
            output.emit_json(row)
    elif output.use_rich() and not rows:
        output.console().print(f"No users in {cfg.users_file}; add one with: mailtools user add ADDRESS")
    elif output.use_rich():
        from rich.table import Table

        table = Table(title=str(cfg.users_file))
        for col in ("user", "scheme", "maildir"):
            table.add_column(col)
        for row in rows:
            md = row["maildir"] if row["maildir_exists"] else f"{row['maildir']} (missing)"
            table.add_row(row["user"], row["scheme"], md)
        output.console().print(table)
    else:
        for row in rows:
            sys.stdout.write(row["user"] + "\n")
    return 0
