"""Replay tests/transcripts/smtp_*.txt against the sans-I/O session, in memory.

File format, one item per line:
  # comment                      ignored
  @ key=value ...                 setup before the first line: loopback, tls_available, tls,
                                  require_auth, restrict (sender must be the user), and any Limits
                                  field (max_message_size=200)
  C: text                         the client sends text + CRLF (consecutive C:/R: lines are fed
                                  as one pipelined write)
  R: python-escaped bytes         the client sends exactly these bytes ("a\\r\\n.\\n")
  S: text                         the next reply line the server sends ('*' matches anything)
  M: python-escaped bytes         the last message handed to the data hook is exactly this
  TLS                             the client completes the TLS handshake here
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from mailtools.smtpd import replies as R
from mailtools.smtpd.session import ConnInfo, Handler, Limits, Session, run_blocking

HERE = Path(__file__).parent / "transcripts"
FILES = sorted(HERE.glob("smtp_*.txt"))


class FakeHandler(Handler):
    auth_mechanisms = ("PLAIN", "LOGIN")

    def __init__(self, require_auth=False, restrict=False):
        self.require_auth = require_auth
        self.restrict = restrict
        self.messages: list[bytes] = []
        self.auth_calls = 0

    def auth(self, info, authzid, user, password):
        self.auth_calls += 1
        return user == "alice@example.test" and password == "secret"

    def mail_from(self, info, tx, address):
        if self.require_auth and info.auth_user is None:
            return R.AUTH_REQUIRED
        if self.restrict and info.auth_user and address.lower() != info.auth_user.lower():
            return R.SENDER_NOT_OWNED
        return None

    def rcpt_to(self, info, tx, address):
        if address.endswith("@unknown.test"):
            return R.NO_SUCH_USER
        return None

    def data(self, info, tx, message):
        self.messages.append(message)
        return R.QUEUED.with_text(f"Ok: queued as Q{len(self.messages)}")


def _match(pattern: str, text: str) -> bool:
    return re.fullmatch(".*".join(map(re.escape, pattern.split("*"))), text) is not None


def _bool(v: str) -> bool:
    return v.lower() in ("1", "true", "yes")


def run_transcript(path: Path) -> None:
    lines = path.read_text().splitlines()
    opts: dict[str, str] = {}
    for line in lines:
        if line.startswith("@"):
            for item in line[1:].split():
                k, _, v = item.partition("=")
                opts[k] = v
    limits = Limits(auth_fail_delay=0)
    for k, v in opts.items():
        if hasattr(limits, k):
            setattr(limits, k, type(getattr(limits, k))(v))
    info = ConnInfo(peer=("192.0.2.7", 40000), local=("192.0.2.1", 587), hostname="mx.example.test",
                    loopback=_bool(opts.get("loopback", "false")),
                    tls_available=_bool(opts.get("tls_available", "true")),
                    tls={"version": "TLSv1.3", "cipher": "X", "bits": 256} if _bool(opts.get("tls", "false")) else None)
    handler = FakeHandler(require_auth=_bool(opts.get("require_auth", "false")),
                          restrict=_bool(opts.get("restrict", "false")))
    session = Session(handler, info, limits)
    received = bytearray()
    tls_pending = [False]

    def starttls():
        tls_pending[0] = True
        return {"version": "TLSv1.3", "cipher": "TEST", "bits": 256}

    alive = run_blocking(session, session.start(), received.extend, on_starttls=starttls)
    pending = bytearray()
    for n, line in enumerate(lines, 1):
        where = f"{path.name}:{n}"
        if not line.strip() or line.startswith("#") or line.startswith("@"):
            continue
        tag, _, rest = line.partition(": ")
        if line == "TLS":
            assert tls_pending[0], f"{where}: no STARTTLS happened"
            continue
        if tag in ("C", "R"):
            pending += (rest.encode() + b"\r\n") if tag == "C" else ast.literal_eval(f'b"{rest}"')
            continue
        if pending:
            assert alive, f"{where}: the session closed before the client sent {bytes(pending)!r}"
            alive = run_blocking(session, session.feed(bytes(pending)), received.extend,
                                 on_starttls=starttls)
            pending.clear()
        if tag == "S":
            nl = received.find(b"\r\n")
            assert nl >= 0, f"{where}: expected {rest!r}, the server sent nothing more"
            got = received[:nl].decode()
            del received[: nl + 2]
            assert _match(rest, got), f"{where}: expected {rest!r}, got {got!r}"
        elif tag == "M":
            want = ast.literal_eval(f'b"{rest}"')
            assert handler.messages, f"{where}: no message was accepted"
            assert handler.messages[-1] == want, f"{where}: message {handler.messages[-1]!r}"
        elif line.strip() == "CLOSED":
            assert not alive, f"{where}: the session is still open"
        else:
            raise AssertionError(f"{where}: bad transcript line {line!r}")
    if pending:
        alive = run_blocking(session, session.feed(bytes(pending)), received.extend, on_starttls=starttls)
    assert not received, f"{path.name}: unexpected server output at the end: {bytes(received)!r}"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_transcript(path):
    run_transcript(path)


def test_there_are_transcripts():
    assert len(FILES) >= 8
