"""Hypothesis fuzzing of the IMAP command reader and session, in every state."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imap_helpers import PASSWORD, deliver, make_root, message
from mailtools.imap.parser import CommandReader, Continue, Cursor, Limits, ParseError, Refused, Command

WORDS = ["a1", "UID", "FETCH", "SEARCH", "STORE", "SELECT", "INBOX", "LIST", "APPEND", "(", ")", "[", "]",
         "{3}\r\n", "{2+}\r\n", '"', "\\", "*", "%", "1:*", "BODY[", "HEADER.FIELDS", "<0.5>", " ", "\r\n",
         "NOT", "OR", "IDLE", "DONE", "AUTHENTICATE", "PLAIN", "=", "+FLAGS", "\\Seen", "LOGOUT", "\x00", "é"]

chunks = st.lists(st.one_of(st.sampled_from(WORDS), st.text(max_size=8)), max_size=40).map(
    lambda xs: "".join(xs).encode("utf-8", "surrogatepass"))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=10))
def test_reader_never_crashes_and_bounds_lines(parts):
    r = CommandReader(Limits(max_line=100, max_literal=50))
    for p in parts:
        for ev in r.feed(p):
            assert isinstance(ev, (Command, Continue, Refused))
            if isinstance(ev, Command):
                assert len(ev.data) <= 100 * 20 + 50 * 20
    assert len(r.buf) <= 101 + 64


@settings(max_examples=300, deadline=None)
@given(chunks)
def test_cursor_raises_only_parse_error(data):
    c = Cursor(data)
    for method in ("atom", "astring", "seqset", "flag_list", "string", "list_mailbox"):
        c.pos = 0
        try:
            getattr(c, method)()
        except ParseError:
            pass


@pytest.fixture(scope="module")
def fuzz_cfg(tmp_path_factory):
    from mailtools.core import config

    tmp = tmp_path_factory.mktemp("fuzz")
    root = make_root(tmp)
    for i in range(3):
        deliver(root, message(i + 1))
    return config.load(str(tmp / "mailtools.toml"), reload=True)


PREFIX = {
    "not-authenticated": b"",
    "authenticated": f'p1 LOGIN alice@example.test "{PASSWORD}"\r\n'.encode(),
    "selected": f'p1 LOGIN alice@example.test "{PASSWORD}"\r\np2 SELECT INBOX\r\n'.encode(),
}


class FastUsers:
    def verify(self, user, password):
        return user == "alice@example.test" and password == PASSWORD


@pytest.mark.parametrize("state", list(PREFIX))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(inputs=st.lists(chunks, max_size=6))
def test_session_stays_consistent(fuzz_cfg, state, inputs):
    from mailtools.imap.session import Session

    s = Session(fuzz_cfg, users=FastUsers(), loopback=True)
    s.feed(PREFIX[state])
    assert s.state == state
    for data in inputs:
        if s.closed:
            break
        out = s.feed(data)
        for item in out:
            if isinstance(item, bytes):
                assert item.endswith(b"\r\n") or b"{" in item
    if not s.closed:
        # the connection is still usable: leave IDLE/AUTHENTICATE/literals, then a NOOP answers
        for _ in range(3):
            if s.reader.literal_left:
                s.feed(b"x" * s.reader.literal_left)
            s.feed(b"\r\n")  # ends any half-sent command line
            if s.idle_tag:
                s.feed(b"DONE\r\n")
            if s.auth_tag:
                s.feed(b"*\r\n")
        out = b"".join(x for x in s.feed(b"zz9 NOOP\r\n") if isinstance(x, bytes))
        assert b"zz9 OK" in out or b"zz9 BAD" in out or s.closed
