"""POP3 server over the Maildirs (RFC 1939, 2449, 2595, 3206, 5034).

session.py  the protocol as a sans-I/O state machine (no sockets, transcript-tested)
replies.py  every reply, named, with its RFC response code
maildrop.py a user's Maildir as a locked maildrop (UIDLs shared with imap-serve and Dovecot)
server.py   the thin asyncio transport (STLS, implicit TLS, timeouts, connection limit)
"""

from __future__ import annotations


async def start(cfg, listen=None, tls_listen=None) -> list:
    """Start the POP3 listeners in the running loop (see server.start)."""
    from mailtools.pop3.server import start as _start

    return await _start(cfg, listen=listen, tls_listen=tls_listen)
