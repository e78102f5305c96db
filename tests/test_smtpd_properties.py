"""Property tests (hypothesis) for the SMTP session parser and the address-list parser."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from mailtools.smtpd import replies as R
from mailtools.smtpd.session import ConnInfo, Handler, Limits, Session, run_blocking
from mailtools.submit.prepare import parse_address_list

CONVERSATION = (
    b"EHLO c.example.test\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n"
    b"Subject: x\r\n\r\n..dot\r\nbare\nlf\n.\nstill\r\n.\r\nNOOP\r\nRSET\r\nMAIL FROM:<>\r\n"
    b"RCPT TO:<c@example.test>\r\nDATA\r\n.\r\nQUIT\r\n"
)


class Keep(Handler):
    def __init__(self):
        self.messages = []

    def data(self, info, tx, message):
        self.messages.append(message)
        return R.QUEUED


def replay(chunks):
    handler = Keep()
    s = Session(handler, ConnInfo(hostname="mx.example.test"), Limits(auth_fail_delay=0))
    out = bytearray()
    run_blocking(s, s.start(), out.extend)
    for c in chunks:
        run_blocking(s, s.feed(c), out.extend)
    return bytes(out), handler.messages


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, prev = [], 0
    for p in points + [len(data)]:
        pieces.append(data[prev:p])
        prev = p
    return pieces


WHOLE = replay([CONVERSATION])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=40))
def test_chunking_never_changes_the_conversation(cuts):
    assert replay(split(CONVERSATION, cuts)) == WHOLE
    assert WHOLE[1] == [b"Subject: x\r\n\r\n.dot\r\nbare\nlf\n.\nstill\r\n", b""]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=20))
def test_garbage_never_breaks_the_session(chunks):
    out, _ = replay([b"EHLO x\r\n", *chunks, b"\r\nQUIT\r\n"])
    # every reply line is well formed: 3 digits then space or dash, CRLF-terminated
    for line in out.split(b"\r\n")[:-1]:
        assert line[:3].isdigit() and line[3:4] in (b" ", b"-"), line


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_address_list_parser_total(value):
    for addr in parse_address_list(value):
        assert addr and "\n" not in addr


def test_address_list_examples():
    assert parse_address_list('"Doe, J" <j@x.test>, a@b.test (c, d), team: c@d.test, e@f.test;, ') == [
        "j@x.test", "a@b.test", "c@d.test", "e@f.test"]
    assert parse_address_list("undisclosed-recipients:;") == []
