"""mailtools.imap.mime: the fast header field lookup agrees with the line-by-line parse."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mailtools.imap import mime

NAMES = ["subject", "from", "to", "x-subject", "subjects", "subject:", "sub ject", "", "Subject", "é"]
PIECES = ["Subject", "SUBJECT", "subject", "From", "To", "X-Subject", "Subjects", ":", ": ", " ", "\t", "\r\n",
          "\r\n ", "\r\n\t", "\r", "\n", "\x0b", "\x0c", "=?utf-8?q?foo?=", "foo", "é", "\x00", "garbage", "x"]


def _exact(header: bytes, name: str) -> list[bytes]:
    return [v for n, v in mime.headers(header) if n == name]


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=30), st.sampled_from(NAMES), st.booleans())
def test_field_values_is_the_parse(pieces, name, blank_end):
    header = mime.to_crlf("".join(pieces).encode("utf-8"))
    if blank_end:
        header = mime.split(header + b"\r\n\r\nbody")[0]
    assert mime.field_values(header, name) == _exact(header, name)


def test_field_values_cases():
    h = b"Subject: a\r\n b\r\nX-Subject: no\r\nsubject : c\r\nSubjects: no\r\n\r\n"
    assert mime.field_values(h, "subject") == [b"a b", b"c"]
    # a line without a colon between a field and its continuation: joined, as headers() does
    h = b"Subject: a\r\ngarbage\r\n b\r\n\r\n"
    assert mime.field_values(h, "subject") == [b"a b"]
    assert mime.field_values(b"From: x\r\n\r\n", "subject") == []
