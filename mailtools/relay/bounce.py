"""Delivery status notifications (RFC 3464, RFC 3462 multipart/report) for bounces and delays.

A DSN is sent from the null sender `<>` (RFC 5321 4.5.5) to the original envelope sender, and
never for a message whose own sender was null: that is what stops bounce loops. It carries a
human-readable part, the machine-readable `message/delivery-status` part, and the original
message's header section (`text/rfc822-headers`, RFC 3462) rather than the whole body.
"""

from __future__ import annotations

import email.utils
import os
import time
from dataclasses import dataclass
from typing import Optional


@dataclass
class Failure:
    """One recipient's outcome for the report."""

    recipient: str
    status: str  # RFC 3463 "5.1.1"
    diagnostic: str  # the remote reply or our own reason
    remote_mta: str = ""  # host name of the MX that answered, when one did
    action: str = "failed"  # "failed" | "delayed"
    last_attempt: Optional[float] = None
    will_retry_until: Optional[float] = None


def _boundary(qid: str) -> str:
    return f"{qid}.{int(time.time())}.{os.urandom(4).hex()}/mailtools"


def _header_section(data: bytes) -> bytes:
    """The original header section, CRLF-terminated lines, without the blank line."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = data.find(sep)
        if i >= 0:
            head = data[:i]
            break
    else:
        head = data
    head = head.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return head + b"\r\n" if head else b""


def _rfc822(addr: str) -> str:
    # RFC 6533: utf-8 address type for internationalised addresses
    return ("utf-8; " if not addr.isascii() else "rfc822; ") + addr


def build_dsn(
    *, reporting_mta: str, qid: str, sender: str, arrival: float, failures: list[Failure],
    original: bytes, delayed: bool = False,
) -> bytes:
    """The whole DSN message as bytes (CRLF line ends), ready for the queue."""
    now = time.time()
    boundary = _boundary(qid)
    date = email.utils.formatdate(now)
    msgid = f"<{time.strftime('%Y%m%d%H%M%S', time.gmtime(now))}.{qid}.{os.urandom(3).hex()}@{reporting_mta}>"
    if delayed:
        subject = "Delayed Mail (still being retried)"
        intro = (
            "This is the mail system at host {h}.\r\n\r\n"
            "####################################################################\r\n"
            "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\r\n"
            "####################################################################\r\n\r\n"
            "Your message could not be delivered for some time. It will be retried\r\n"
            "until it is too old. The mail system gave the following reasons:\r\n\r\n"
        )
    else:
        subject = "Undelivered Mail Returned to Sender"
        intro = (
            "This is the mail system at host {h}.\r\n\r\n"
            "I'm sorry to have to inform you that your message could not\r\n"
            "be delivered to one or more recipients. It's attached below.\r\n\r\n"
            "The mail system\r\n\r\n"
        )
    human = intro.format(h=reporting_mta)
    for f in failures:
        human += f"<{f.recipient}>: {f.diagnostic}\r\n"
    status = [
        f"Reporting-MTA: dns; {reporting_mta}",
        f"X-Mailtools-Queue-ID: {qid}",
        f"Arrival-Date: {email.utils.formatdate(arrival)}",
        "",
    ]
    for f in failures:
        status += [
            f"Final-Recipient: {_rfc822(f.recipient)}",
            f"Original-Recipient: {_rfc822(f.recipient)}",
            f"Action: {f.action}",
            f"Status: {f.status}",
        ]
        if f.remote_mta:
            status.append(f"Remote-MTA: dns; {f.remote_mta}")
        diag = " ".join(f.diagnostic.split())[:900]
        status.append(f"Diagnostic-Code: {'smtp' if f.remote_mta else 'x-mailtools'}; {diag}")
        status.append(f"Last-Attempt-Date: {email.utils.formatdate(f.last_attempt or now)}")
        if f.will_retry_until:
            status.append(f"Will-Retry-Until: {email.utils.formatdate(f.will_retry_until)}")
        status.append("")
    utf8 = not all(f.recipient.isascii() for f in failures) or not sender.isascii()
    ds_type = "message/global-delivery-status" if utf8 else "message/delivery-status"
    parts = [
        f"Date: {date}",
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: <{sender}>",
        f"Subject: {subject}",
        f"Message-ID: {msgid}",
        "Auto-Submitted: auto-replied",  # RFC 3834: no autoresponder answers this
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="{boundary}"',
        "Content-Transfer-Encoding: 8bit",
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=utf-8",
        "",
        human,
        f"--{boundary}",
        "Content-Description: Delivery report",
        f"Content-Type: {ds_type}",
        "",
        "\r\n".join(status),
        f"--{boundary}",
        "Content-Description: Undelivered Message Headers",
        "Content-Type: text/rfc822-headers",
        "",
    ]
    head = "\r\n".join(parts).encode("utf-8") + b"\r\n"
    return head + _header_section(original) + f"\r\n--{boundary}--\r\n".encode()
