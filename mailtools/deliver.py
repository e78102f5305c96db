"""`mailtools deliver`: the MDA. A message on stdin goes into a Maildir, atomically and durably.

    mailtools deliver --maildir PATH [--folder NAME] [-f SENDER] [ADDRESS...] < message
    mailtools deliver [-f SENDER] [--folder NAME] ADDRESS... < message

With --maildir the message goes into that Maildir (ADDRESS, if given, only names the recipient
for Delivered-To). Without it each ADDRESS is a local user whose Maildir is
ROOT/mail/DOMAIN/LOCALPART (from the configuration). Each copy gets `Return-Path: <SENDER>`
(with -f) and `Delivered-To: ADDRESS` in front; every other byte stays as it came, and the added
lines use the message's own line ending (CRLF or LF).

Exit status (sysexits, what an MTA such as Postfix acts on): 0 delivered; 64 usage; 65 empty
or unreadable input; 67 unknown user; 73 a Maildir that can never be created here (permission,
a file in the way); 74 the message cannot be stored as such (too big for the file system);
75 anything a later retry may fix (disk full, quota, I/O error, a lock, a read-only mount);
78 bad configuration. Nothing is half-delivered: see core/maildir.py for the crash states.

This module is on the hot path (one process per message): `fast_main` parses options by hand
and imports neither typer nor email nor argparse; the configuration (tomllib) is loaded only
when an ADDRESS has to be turned into a Maildir. cli/deliver.py defines the same options for
typer (--help, the man page, the completions); a test keeps the two in agreement.
"""

from __future__ import annotations

import errno
import os
import sys

from mailtools.core.exitcodes import CantCreate, DataError, IOFailure, NoUser, TempFail, UsageError

# The options, shared by fast_main and cli/deliver.py: option -> (keyword, metavar, help).
OPTIONS = {
    "--maildir": ("maildir", "PATH", "Deliver into this Maildir instead of the users' Maildirs."),
    "--folder": ("folder", "NAME", "Deliver into this Maildir++ folder (IMAP name, '/' for levels; created when missing)."),
    "-f": ("sender", "SENDER", "Envelope sender: added as 'Return-Path: <SENDER>' ('' or '<>' for a bounce)."),
}
HINT = "(try 'mailtools deliver --help')"

# errno -> exit code for a failed write. A permanent code (73, 74) makes the MTA bounce; use
# it only when no retry can help. Everything else is 75, so the MTA keeps the message.
_PERMANENT = {
    errno.EACCES: CantCreate, errno.EPERM: CantCreate, errno.ENOTDIR: CantCreate,
    errno.EISDIR: CantCreate, errno.ENAMETOOLONG: CantCreate, errno.ELOOP: CantCreate,
    errno.EEXIST: CantCreate, errno.EFBIG: IOFailure,
}


def parse_args(argv: list[str]) -> dict:
    """getopt-style: --opt VALUE, --opt=VALUE, -fSENDER, '--' ends options; options and
    addresses may be mixed (as typer/click allow). Raises UsageError."""
    opts: dict = {"maildir": None, "folder": None, "sender": None, "addresses": []}
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            opts["addresses"].extend(argv[i:])
            break
        if not arg.startswith("-") or arg == "-":
            opts["addresses"].append(arg)
            continue
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
        else:
            name, value, eq = arg[:2], arg[2:], bool(arg[2:])
        if name not in OPTIONS:
            raise UsageError(f"unknown option {name!r} {HINT}")
        key = OPTIONS[name][0]
        if not eq:
            if i >= len(argv):
                raise UsageError(f"option {name} needs a {OPTIONS[name][1]} {HINT}")
            value = argv[i]
            i += 1
        if opts[key] is not None:
            raise UsageError(f"option {name} given twice")
        opts[key] = value
    return opts


def read_input(fd: int = 0) -> bytes:
    """The whole message from fd; DataError (65) when it is empty or cannot be read."""
    chunks = []
    try:
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError as exc:
        raise DataError(f"cannot read the message from standard input: {exc.strerror or exc}") from None
    data = b"".join(chunks)
    if not data:
        raise DataError("empty message on standard input")
    return strip_from_line(data)


def strip_from_line(data: bytes) -> bytes:
    """Drop an mbox 'From ' separator line at the very start (as dovecot-lda does): it is not
    part of the message and would corrupt the Maildir file."""
    if data.startswith(b"From "):
        nl = data.find(b"\n")
        rest = b"" if nl < 0 else data[nl + 1 :]
        if not rest:
            raise DataError("empty message on standard input (only an mbox 'From ' line)")
        return rest
    return data


def return_path(sender: str) -> str:
    s = sender.strip()
    if s.startswith("<") and s.endswith(">"):
        s = s[1:-1]
    if any(c in s for c in "\r\n\0<>") or len(s) > 998:
        raise UsageError(f"unusable sender for -f: {sender!r}")
    return f"<{s}>"


def trace_fields(sender: str | None, recipients: list[str]) -> list[tuple[str, str]]:
    fields = []
    if sender is not None:
        fields.append(("Return-Path", return_path(sender)))
    for rcpt in recipients:
        if any(c in rcpt for c in "\r\n\0"):
            raise UsageError(f"unusable recipient address: {rcpt!r}")
        fields.append(("Delivered-To", rcpt))
    return fields


from mailtools.core.local import mailbox_owner  # noqa: E402 - the one definition of a local user


def targets(opts: dict) -> list[tuple[str, list[str]]]:
    """[(maildir path, [Delivered-To addresses])], one per copy to write. Loads the
    configuration only for ADDRESS mode; raises UsageError, NoUser, ConfigError."""
    addresses = opts["addresses"]
    if opts["maildir"] is not None:
        if not opts["maildir"]:
            raise UsageError("--maildir needs a PATH")
        path = os.path.expanduser(opts["maildir"])
        return [(path, list(addresses))]
    if not addresses:
        raise UsageError(f"give --maildir PATH or at least one ADDRESS {HINT}")
    from mailtools.core import config
    from mailtools.core.address import normalise

    cfg = config.load()
    out, seen = [], set()
    for addr in addresses:
        owner = mailbox_owner(cfg, addr)
        if owner is None:
            raise NoUser(f"unknown user: {addr}")
        key = normalise(addr).lower()
        if key not in seen:
            seen.add(key)
            out.append((os.fspath(cfg.maildir_for(owner)), [normalise(addr)]))
    return out


def write_failure(exc: OSError, path: str):
    """The MailtoolsError for a failed Maildir write: permanent (73/74) or retry (75)."""
    cls = _PERMANENT.get(exc.errno, TempFail)
    where = exc.filename or path
    return cls(f"cannot deliver to {where}: {exc.strerror or exc}")


def deliver_message(data: bytes, opts: dict, plan=None) -> list[str]:
    """Deliver data per the parsed options; return the final file paths. Raises MailtoolsError.

    With several ADDRESSes a failure after some copies were written still fails the whole
    command (the MTA retries all of them): a duplicate is better than a lost message."""
    from mailtools.core.maildir import Maildir, deliver_path
    from mailtools.core.message import prepend_headers

    if plan is None:
        plan = targets(opts)
    written = []
    for path, rcpts in plan:
        marker = False
        if opts["folder"] is not None:
            try:
                folder = Maildir(path).folder(opts["folder"])
            except ValueError as exc:
                raise UsageError(f"--folder: {exc}") from None
            path, marker = os.fspath(folder.path), folder.is_folder
        fields = trace_fields(opts["sender"], rcpts)
        try:
            copy = prepend_headers(data, fields) if fields else data
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        try:
            written.append(deliver_path(path, copy, folder_marker=marker))
        except OSError as exc:
            raise write_failure(exc, path) from None
    return written


def run(maildir=None, folder=None, sender=None, addresses=(), fd: int = 0) -> int:
    """The whole command (shared by fast_main and the typer CLI); raises MailtoolsError."""
    opts = {"maildir": maildir, "folder": folder, "sender": sender, "addresses": list(addresses)}
    plan = targets(opts)  # usage, configuration and unknown users before reading the message
    data = read_input(fd)
    deliver_message(data, opts, plan)
    return 0


def fast_main(argv: list[str]) -> int:
    """The light front called by mailtools/__main__.py (inside exitcodes.run)."""
    if "--help" in argv:
        return NotImplemented  # typer prints the help
    opts = parse_args(argv)
    rc = run(opts["maildir"], opts["folder"], opts["sender"], opts["addresses"])
    if _is_the_program():
        # Delivered, fsynced, nothing left to say: skip the interpreter's teardown (freeing
        # every module site.py loaded costs ~10 ms of a one-message process).
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(rc)
    return rc


def _is_the_program() -> bool:
    """True when this process is `mailtools` itself (console script or python -m), not a
    test or another program calling fast_main."""
    prog = os.path.basename(sys.argv[0]) if sys.argv else ""
    return prog in ("mailtools", "__main__.py") and "deliver" in sys.argv
