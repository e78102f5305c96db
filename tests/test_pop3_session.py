"""The POP3 session without sockets: transcripts (tests/transcripts/pop3_*.txt) and unit tests.

Transcript format: `! key=value` lines set Session options (plaintext_ok, tls_available,
tls_active); `C: ` lines are sent (consecutive ones together, as a pipelining client would);
the `S: ` lines after them are exactly what the server must answer; `# ` lines are comments;
`= closed` asserts the server has closed the connection.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from mailtools.pop3.session import (
    MAX_LINE, Close, Delay, Login, Session, StartTLS, dot_stuff, top_of)
from pop3_memory import MemoryBackend, drive

TRANSCRIPTS = sorted((Path(__file__).parent / "transcripts").glob("pop3_*.txt"))


def _bool(v: str) -> bool:
    return v.lower() in ("1", "true", "yes")


def run_transcript(path: Path) -> None:
    opts = {"plaintext_ok": True, "tls_available": False, "tls_active": False}
    backend = MemoryBackend()
    lines = path.read_text().splitlines()
    for ln in lines:
        if ln.startswith("! "):
            k, _, v = ln[2:].partition("=")
            opts[k.strip()] = _bool(v.strip())
    session = Session(backend, hostname="mx.example.test", fail_delay=0, **opts)
    pending_c: list[str] = []
    expected: list[str] = []
    got = b"".join(session.greeting())

    def flush(lineno):
        nonlocal got, pending_c, expected
        if pending_c:
            out, _ = drive(session, backend, "".join(c + "\r\n" for c in pending_c).encode())
            got += out
        want = "".join(s + "\r\n" for s in expected).encode()
        assert got == want, f"{path.name}:{lineno}: after {pending_c!r}\nwant {want!r}\ngot  {got!r}"
        got, pending_c, expected = b"", [], []

    for n, ln in enumerate(lines, 1):
        if ln.startswith("C:"):
            if expected:
                flush(n)
            pending_c.append(ln[3:] if ln.startswith("C: ") else ln[2:])
        elif ln.startswith("S:"):
            expected.append(ln[3:] if ln.startswith("S: ") else ln[2:])
        elif ln.startswith("= closed"):
            flush(n)
            assert session.closed, f"{path.name}:{n}: session still open"
    flush(len(lines))


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=[p.stem for p in TRANSCRIPTS])
def test_transcript(path):
    run_transcript(path)


def test_transcripts_exist():
    assert len(TRANSCRIPTS) >= 5


def new_session(**kw):
    backend = MemoryBackend()
    opts = dict(hostname="mx.example.test", plaintext_ok=True, fail_delay=0)
    opts.update(kw)
    return Session(backend, **opts), backend


def login(session, backend, user="alice@example.test", pw="secret word"):
    out, _ = drive(session, backend, f"USER {user}\r\nPASS {pw}\r\n".encode())
    assert out.endswith(b"+OK Logged in.\r\n"), out
    return out


def test_quit_applies_deletions_only_then():
    s, b = new_session()
    login(s, b)
    out, _ = drive(s, b, b"DELE 1\r\nDELE 3\r\nRETR 2\r\n")
    assert b.drops[0].committed is None
    out, acts = drive(s, b, b"QUIT\r\n")
    assert out == b"+OK Logging out, 2 messages deleted.\r\n"
    assert b.drops[0].committed == ([0, 2], [1])
    assert b.drops[0].closed and isinstance(acts[-1], Close)


def test_drop_without_quit_deletes_nothing():
    s, b = new_session()
    login(s, b)
    drive(s, b, b"DELE 1\r\nDELE 2\r\n")
    s.connection_lost()
    assert b.drops[0].committed is None
    assert b.drops[0].closed and not b.locks


def test_rset_undeletes():
    s, b = new_session()
    login(s, b)
    out, _ = drive(s, b, b"DELE 1\r\nRSET\r\nQUIT\r\n")
    assert b.drops[0].committed == ([], [])


def test_failed_login_is_delayed_and_third_failure_closes():
    s, b = new_session(fail_delay=1.5)
    for i in range(3):
        out, acts = drive(s, b, b"USER alice@example.test\r\nPASS wrong\r\n")
        assert Delay(1.5) in acts
    assert out.endswith(b"-ERR [AUTH] Too many authentication failures.\r\n")
    assert s.closed and isinstance(acts[-1], Close)


def test_in_use():
    b = MemoryBackend()
    s1 = Session(b, plaintext_ok=True, fail_delay=0)
    s2 = Session(b, plaintext_ok=True, fail_delay=0)
    login(s1, b)
    out, _ = drive(s2, b, b"USER alice@example.test\r\nPASS secret word\r\n")
    assert out == b"+OK\r\n-ERR [IN-USE] Mailbox is locked by another POP3 session.\r\n"
    assert s2.state == "AUTHORIZATION"
    drive(s1, b, b"QUIT\r\n")
    login(s2, b)


def test_auth_plain_initial_response_and_continuation():
    s, b = new_session()
    ir = base64.b64encode(b"\0alice@example.test\0secret word").decode()
    out, acts = drive(s, b, f"AUTH PLAIN {ir}\r\n".encode())
    assert out == b"+OK Logged in.\r\n" and acts == [Login("alice@example.test", "secret word")]
    s, b = new_session()
    out, _ = drive(s, b, b"AUTH PLAIN\r\n")
    assert out == b"+ \r\n"
    out, _ = drive(s, b, ir.encode() + b"\r\n")
    assert out == b"+OK Logged in.\r\n"


def test_overlong_line_is_refused_and_session_goes_on():
    s, b = new_session()
    out, _ = drive(s, b, b"USER " + b"a" * (MAX_LINE * 3))
    assert out == b""  # still waiting for the end of the line, buffer not growing
    assert len(s._buf) == 0
    out, _ = drive(s, b, b"aaaa\r\nCAPA\r\n")
    assert out.startswith(b"-ERR Line too long.\r\n+OK Capability list follows\r\n")


def test_too_many_bad_commands_closes():
    s, b = new_session()
    out, acts = drive(s, b, b"BOGUS\r\n" * 22)
    assert out.count(b"-ERR Unknown command") == 20
    assert out.endswith(b"-ERR Too many invalid commands.\r\n") and s.closed


def test_stls_discards_pipelined_commands():
    s, b = new_session(plaintext_ok=False, tls_available=True)
    out, acts = drive(s, b, b"STLS\r\nUSER alice@example.test\r\nPASS secret word\r\n")
    assert out == b"+OK Begin TLS negotiation now.\r\n"
    assert [a for a in acts if isinstance(a, Login)] == []
    assert isinstance(acts[0], StartTLS) and s.tls_active


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_garbage_never_crashes(data):
    s, b = new_session()
    login(s, b)
    out, _ = drive(s, b, data + b"\r\n")
    for ln in out.split(b"\r\n"):
        pass
    assert out == b"" or out.startswith((b"+OK", b"-ERR", b"+ "))


@given(st.lists(st.sampled_from([b"\r\n", b"\n", b".", b"..", b"a", b" ", b"\r", b"From x"]), max_size=40))
@settings(max_examples=300, deadline=None)
def test_dot_stuffing_round_trips(parts):
    data = b"".join(parts).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    wire = dot_stuff(data)
    assert wire.endswith(b"\r\n.\r\n") or wire == b".\r\n"
    # what poplib does: split on CRLF, stop at ".", unstuff a leading "."
    body = wire[: -len(b".\r\n")]
    lines = body.split(b"\r\n")[:-1] if body else []
    assert b"." not in lines
    unstuffed = b"\r\n".join(ln[1:] if ln.startswith(b".") else ln for ln in lines)
    expect = data[:-2] if data.endswith(b"\r\n") else data
    assert unstuffed == expect


def test_top():
    msg = b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\nl3\r\n"
    assert top_of(msg, 0) == b"A: 1\r\nB: 2\r\n\r\n"
    assert top_of(msg, 2) == b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\n"
    assert top_of(msg, 99) == msg
    assert top_of(b"\r\nbody\r\n", 0) == b"\r\n"
    assert top_of(b"A: 1\r\n", 5) == b"A: 1\r\n"


_COMMANDS = st.sampled_from([
    b"STAT", b"LIST", b"LIST 1", b"LIST 9", b"UIDL", b"UIDL 2", b"RETR 1", b"RETR 2", b"RETR 3",
    b"TOP 2 1", b"DELE 1", b"DELE 2", b"DELE 3", b"DELE 4", b"RSET", b"NOOP", b"CAPA",
    b"STLS", b"USER x", b"AUTH PLAIN", b"*", b"RETR", b"DELE x", b"\xff",
])


@given(st.lists(_COMMANDS, max_size=30), st.booleans())
@settings(max_examples=300, deadline=None)
def test_deletions_only_at_quit(commands, quit_at_end):
    """Whatever a logged-in client sends, the maildrop changes only at QUIT, and then exactly
    the messages marked since the last RSET are deleted."""
    s, b = new_session()
    login(s, b)
    marked: set[int] = set()
    for c in commands:
        out, _ = drive(s, b, c + b"\r\n")
        assert b.drops[0].committed is None
        if out.startswith(b"+OK Marked"):
            marked.add(int(c.split()[1]) - 1)
        elif c == b"RSET" and out.startswith(b"+OK"):
            marked.clear()
        if s.closed:
            break
    if s.closed:  # too many bad commands: nothing deleted
        assert b.drops[0].committed is None
        return
    if quit_at_end:
        out, _ = drive(s, b, b"QUIT\r\n")
        assert b.drops[0].committed is not None
        assert set(b.drops[0].committed[0]) == marked
    else:
        s.connection_lost()
        assert b.drops[0].committed is None
    assert b.drops[0].closed
