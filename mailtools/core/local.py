"""Our own domains: who exists, and final delivery of one copy into a user's Maildir.

The one definition of "a local user", shared by `deliver` (exit 67), the inbound SMTP server
(550 5.1.1) and the queue runner (local recipients, bounces to local senders). Light imports
only (os, time): `deliver` runs once per message.

Messages written by deliver_local() are stored with LF line ends, as Postfix's virtual(8) and
Dovecot's LDA store them; the IMAP and POP3 servers add the CR back on the wire.
"""

from __future__ import annotations

import os
import time

SENT, DEFERRED, BOUNCED = "sent", "deferred", "bounced"


def is_known_user(cfg, address: str) -> bool:
    """The domain is local, and the users file lists the address or its Maildir exists."""
    from mailtools.core.address import normalise, split_address

    try:
        _, domain = split_address(address)
        path = cfg.maildir_for(address)
    except ValueError:
        return False
    if not cfg.is_local_domain(domain):
        return False
    if os.path.isdir(path):
        return True
    try:
        from mailtools.core.auth import load_users

        return load_users(cfg).exists(normalise(address))
    except (OSError, ValueError):  # an unreadable users file: only existing Maildirs count
        return False


def mailbox_owner(cfg, address: str) -> str | None:
    """The local user whose Maildir gets mail for address: the address itself, else without a
    '+extension' (bob+lists@ -> bob@, as Postfix and Dovecot do with recipient_delimiter '+');
    None for an unknown user."""
    if is_known_user(cfg, address):
        return address
    local, at, domain = address.rpartition("@")
    if at and "+" in local.lstrip("+"):
        base = local.split("+", 1)[0] + "@" + domain
        if base != address and is_known_user(cfg, base):
            return base
    return None


def with_headers(data: bytes, headers: list) -> bytes:
    """Prepend already-formatted header lines and convert the message to LF line ends."""
    body = data.replace(b"\r\n", b"\n")
    return b"".join(h.replace(b"\r\n", b"\n") for h in headers) + body


def trace_headers(sender: str, rcpt: str) -> list:
    return [f"Return-Path: <{sender}>\n".encode("utf-8"), f"Delivered-To: {rcpt}\n".encode("utf-8")]


def deliver_local(cfg, sender: str, rcpt: str, data: bytes, *, received: bytes | None = None,
                  check_user: bool = True) -> tuple:
    """Deliver one copy; returns (state, RFC 3463 status, text). Never raises for I/O: a Maildir
    that cannot be written is a temporary failure (4.3.0) and leaves nothing half-written
    (core.maildir writes in tmp/ and links into new/ only once fsynced)."""
    from mailtools.core import maildir

    owner = mailbox_owner(cfg, rcpt) if check_user else rcpt
    if owner is None:
        return BOUNCED, "5.1.1", "550 5.1.1 <%s>: Recipient address rejected: User unknown" % rcpt
    try:
        path = cfg.maildir_for(owner)
    except ValueError:
        return BOUNCED, "5.1.3", "550 5.1.3 <%s>: bad recipient address syntax" % rcpt
    hdrs = trace_headers(sender, rcpt) + ([received] if received else [])
    try:
        final = maildir.deliver_path(path, with_headers(data, hdrs))
    except OSError as exc:
        return DEFERRED, "4.3.0", f"451 4.3.0 cannot write to the mailbox: {exc.strerror or exc}"
    return SENT, "2.0.0", f"250 2.0.0 delivered to maildir ({os.path.basename(final)}) at {time.strftime('%H:%M:%S')}"
