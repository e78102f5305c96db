"""The Received trace header (RFC 5321 4.4) with the RFC 3848 protocol keyword.

Light: only core.message (for the date) beyond the standard library.
"""

from __future__ import annotations

from mailtools.core.message import rfc5322_date  # noqa: F401 - also imported from here


def protocol_keyword(esmtp: bool, tls: bool, auth: bool) -> str:
    """RFC 3848: SMTP, ESMTP, ESMTPS (TLS), ESMTPA (AUTH), ESMTPSA (both)."""
    if not esmtp:
        return "SMTP"
    return "ESMTP" + ("S" if tls else "") + ("A" if auth else "")


def _clean(text: str) -> str:
    # Nothing a client sent may break the header: no CR/LF, no parentheses that end a comment.
    return "".join(c if c.isprintable() and c not in "()" else "?" for c in text)[:200]


def received_value(*, helo: str | None, peer_ip: str, by_host: str, protocol: str,
                   queue_id: str | None = None, recipient: str | None = None,
                   tls: dict | None = None, auth_user: str | None = None,
                   when: float | None = None) -> str:
    """The value of a Received header, folded over several lines (CRLF + tab)."""
    return received_tail(received_head(helo=helo, peer_ip=peer_ip, by_host=by_host, protocol=protocol,
                                       queue_id=queue_id, tls=tls, auth_user=auth_user),
                         recipient, when)


def received_tail(head: str, recipient: str | None = None, when: float | None = None,
                  queue_id: str | None = None) -> str:
    """A received_head() (the same for every message of a connection) completed with the
    message's own parts: its queue id, the recipient when there is one, and the date."""
    if queue_id:
        head += f" id {queue_id}"
    if recipient:
        head += f"\r\n\tfor <{_clean(recipient)}>"
    return head + f"; {rfc5322_date(when)}"


def received_head(*, helo: str | None, peer_ip: str, by_host: str, protocol: str,
                  queue_id: str | None = None, tls: dict | None = None,
                  auth_user: str | None = None) -> str:
    """The part of a Received value before 'for <...>' and the date."""
    ip = f"IPv6:{peer_ip}" if ":" in peer_ip else peer_ip
    parts = [f"from {_clean(helo or 'unknown')} ([{ip}])"]
    extra = []
    if tls:
        extra.append(f"using {_clean(str(tls.get('version', '')))} with cipher "
                     f"{_clean(str(tls.get('cipher', '')))} ({tls.get('bits', 0)} bits)")
    if auth_user:
        extra.append(f"authenticated sender: {_clean(auth_user)}")
    if extra:
        parts.append("(" + "; ".join(extra) + ")")
    parts.append(f"by {by_host} (mailtools) with {protocol}" + (f" id {queue_id}" if queue_id else ""))
    return "\r\n\t".join(parts)
