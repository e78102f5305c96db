"""IMAP4rev1 server over the users' Maildirs (RFC 3501 plus IDLE, UIDPLUS, MOVE, LITERAL+, ...).

parser (sans-I/O command reader and grammar), session (state table and commands), fetch and
search (command families), mime (ENVELOPE/BODYSTRUCTURE), store (shared folder state over
core.maildir), cache (rebuildable SQLite beside each folder), server (thin asyncio transport).
"""

from mailtools.imap.server import start  # noqa: F401  (the entry `serve` calls)
