"""An in-memory POP3 backend for the sans-I/O session tests (no files, no sockets)."""

from __future__ import annotations

from mailtools.pop3.maildrop import to_crlf
from mailtools.pop3.session import AuthFailed, InUse, Session

MESSAGES = [
    b"Subject: one\n\nHello\n",
    b"Subject: two\n\n.leading dot\nline2\n.\nlast\n",
    b"Subject: three\r\nX-Note: crlf\r\n\r\nbody 1\r\nbody 2\r\nbody 3\r\n",
]
USERS = {"alice@example.test": "secret word", "bob@example.test": "hunter2"}


class MemoryDrop:
    def __init__(self, messages, locks, user):
        self.messages = [to_crlf(m) for m in messages]
        self.locks, self.user = locks, user
        self.committed = None
        self.closed = False

    def __len__(self):
        return len(self.messages)

    def size(self, i):
        return len(self.messages[i])

    def uidl(self, i):
        return f"{i + 1:08x}{1700000000:08x}"

    def read(self, i):
        return self.messages[i]

    def commit(self, deleted, retrieved):
        self.committed = (list(deleted), list(retrieved))

    def close(self):
        self.closed = True
        self.locks.discard(self.user)


class MemoryBackend:
    def __init__(self, messages=MESSAGES):
        self.messages = messages
        self.locks: set[str] = set()
        self.drops: list[MemoryDrop] = []

    def login(self, user, password):
        if USERS.get(user) != password:
            raise AuthFailed()
        if user in self.locks:
            raise InUse()
        self.locks.add(user)
        drop = MemoryDrop(self.messages, self.locks, user)
        self.drops.append(drop)
        return drop


def drive(session: Session, backend, data: bytes) -> tuple[bytes, list]:
    """Feed bytes, carry out every event synchronously; return (output, non-byte events)."""
    from mailtools.pop3.session import Close, Delay, Login, StartTLS

    out, actions = bytearray(), []
    session.receive(data)

    def run(events):
        for ev in events:
            if isinstance(ev, bytes):
                out.extend(ev)
                continue
            actions.append(ev)
            if isinstance(ev, Login):
                try:
                    result = backend.login(ev.user, ev.password)
                except Exception as exc:  # noqa: BLE001
                    result = exc
                run(session.login_result(result))
            elif isinstance(ev, StartTLS):
                session.tls_started()
            elif isinstance(ev, (Delay, Close)):
                pass

    while True:
        events = session.next_events()
        if events is None:
            break
        run(events)
    return bytes(out), actions
