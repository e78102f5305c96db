"""Final delivery for our own domains: who exists, and the Maildir write.

Shared by the queue runner (entries with local recipients, bounces to local senders) and the
inbound SMTP server. Messages are stored with LF line ends, as Postfix's virtual(8) and Dovecot's
LDA store them; the IMAP and POP3 servers add the CR back on the wire.
"""

from __future__ import annotations

import os
import time
from typing import Optional

SENT, DEFERRED, BOUNCED = "sent", "deferred", "bounced"

_users_cache: dict = {}


def _users(cfg):
    try:
        from mailtools.core.auth import load_users
    except ImportError:
        return None
    try:
        return load_users(cfg)
    except Exception:  # noqa: BLE001 - an unreadable users file: fall back to the Maildirs
        return None


def user_exists(cfg, address: str) -> bool:
    """A local address exists when the users file lists it, or (no users file, or not listed)
    its Maildir has already been created by the administrator or an earlier delivery."""
    try:
        path = cfg.maildir_for(address)
    except ValueError:
        return False
    if cfg.users_file.exists():
        users = _users(cfg)
        if users is not None:
            try:
                from mailtools.core.address import normalise

                if users.exists(normalise(address)):
                    return True
            except ValueError:
                return False
    return os.path.isdir(os.path.join(path, "new"))


def with_headers(data: bytes, headers: list[bytes]) -> bytes:
    """Prepend already-formatted header lines and convert the message to LF line ends."""
    body = data.replace(b"\r\n", b"\n")
    return b"".join(h.replace(b"\r\n", b"\n") for h in headers) + body


def trace_headers(sender: str, rcpt: str) -> list[bytes]:
    return [f"Return-Path: <{sender}>\n".encode("utf-8"), f"Delivered-To: {rcpt}\n".encode("utf-8")]


def deliver_local(cfg, sender: str, rcpt: str, data: bytes, *, received: Optional[bytes] = None,
                  check_user: bool = True) -> tuple[str, str, str]:
    """Deliver one copy; returns (state, RFC 3463 status, text). Never raises for I/O: a Maildir
    that cannot be written is a temporary failure (4.3.0) and leaves nothing half-written
    (core.maildir writes in tmp/ and links into new/ only once fsynced)."""
    from mailtools.core import maildir

    if check_user and not user_exists(cfg, rcpt):
        return BOUNCED, "5.1.1", "550 5.1.1 <%s>: Recipient address rejected: User unknown" % rcpt
    try:
        path = cfg.maildir_for(rcpt)
    except ValueError:
        return BOUNCED, "5.1.3", "550 5.1.3 <%s>: bad recipient address syntax" % rcpt
    hdrs = trace_headers(sender, rcpt) + ([received] if received else [])
    try:
        final = maildir.deliver_path(path, with_headers(data, hdrs))
    except OSError as exc:
        return DEFERRED, "4.3.0", f"451 4.3.0 cannot write to the mailbox: {exc.strerror or exc}"
    return SENT, "2.0.0", f"250 2.0.0 delivered to maildir ({os.path.basename(final)}) at {time.strftime('%H:%M:%S')}"
