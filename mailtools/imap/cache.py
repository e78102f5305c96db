"""Rebuildable per-mailbox cache: SQLite beside the Maildir folder, never the only copy.

Keyed by the Maildir base name (the unique part before ':2,'), whose content never changes, so
a row is valid for as long as the message exists; rows of vanished messages are dropped when
seen. Deleting the file loses nothing: every value is recomputed from the message on demand.
Holds what would otherwise need the whole file read per command: the CRLF size, INTERNALDATE,
the header block, the rendered ENVELOPE and BODYSTRUCTURE.

Room for CONDSTORE/QRESYNC later: a per-message modseq column and a mailbox HIGHESTMODSEQ row.

The server writes in the background (flush(background=True)): one thread takes every
cache's writes in order, so committing 10,000 new rows after a first FETCH neither delays
that answer nor stalls the other connections. A lock per cache keeps reads and writes apart.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CACHE_NAME = "mailtools-imap.cache"
SCHEMA_VERSION = 2  # bump when a cached rendering changes


class Info:
    """What the cache knows about one message."""

    __slots__ = ("size", "idate", "header", "envelope", "bs", "body")

    def __init__(self, size, idate, header, envelope, bs=None, body=None):
        self.size, self.idate, self.header, self.envelope = size, idate, header, envelope
        self.bs, self.body = bs, body


_writer: ThreadPoolExecutor | None = None


def _background() -> ThreadPoolExecutor:
    global _writer
    if _writer is None:
        _writer = ThreadPoolExecutor(1, thread_name_prefix="imap-cache")
    return _writer


class Cache:
    def __init__(self, folder: Path):
        self.path = Path(folder) / CACHE_NAME
        self.db: sqlite3.Connection | None = None
        self.pending: dict[str, Info] = {}
        self.gone: set[str] = set()
        self.lock = threading.Lock()

    def _open(self) -> sqlite3.Connection | None:
        if self.db is not None:
            return self.db
        try:
            db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=OFF")  # a cache: losing it costs time, not mail
            ver = db.execute("PRAGMA user_version").fetchone()[0]
            if ver != SCHEMA_VERSION:
                db.execute("DROP TABLE IF EXISTS msg")
                db.execute(
                    "CREATE TABLE msg (base TEXT PRIMARY KEY, size INTEGER, idate INTEGER,"
                    " header BLOB, envelope BLOB, bs BLOB, body BLOB)"
                )
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self.db = db
        except sqlite3.Error:
            self._reset_file()
            return None
        return self.db

    def _reset_file(self) -> None:
        self.db = None
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(str(self.path) + suffix)
            except OSError:
                pass

    def load(self) -> dict[str, Info]:
        with self.lock:
            db = self._open()
            if db is None:
                return {}
            try:
                rows = db.execute("SELECT base, size, idate, header, envelope, bs, body FROM msg").fetchall()
            except sqlite3.Error:
                self._reset_file()
                return {}
        return {r[0]: Info(r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows}

    def put(self, base: str, info: Info) -> None:
        self.pending[base] = info

    def drop(self, bases) -> None:
        self.gone.update(bases)

    def flush(self, background: bool = False) -> None:
        """Write what changed: now, or queued to the writer thread (the rows are taken now:
        Info objects change later)."""
        if not self.pending and not self.gone:
            return
        pending, gone = self.pending, self.gone
        self.pending, self.gone = {}, set()
        rows = [(b, i.size, i.idate, i.header, i.envelope, i.bs, i.body) for b, i in pending.items()]
        if background:
            _background().submit(self._write, rows, gone)
        else:
            self._write(rows, gone)

    def _write(self, rows: list, gone: set) -> None:
        with self.lock:
            db = self._open()
            if db is None:
                return
            try:
                db.execute("BEGIN")
                db.executemany("INSERT OR REPLACE INTO msg VALUES (?,?,?,?,?,?,?)", rows)
                db.executemany("DELETE FROM msg WHERE base=?", [(b,) for b in gone])
                db.execute("COMMIT")
            except sqlite3.Error:
                self._reset_file()

    def close(self) -> None:
        with self.lock:
            if self.db is not None:
                self.db.close()
                self.db = None
