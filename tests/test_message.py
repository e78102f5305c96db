"""core/message: header split, prepend and read at the byte level."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailtools.core.message import get_header, iter_fields, line_ending, prepend_headers, split_header


@pytest.mark.parametrize(
    "data,header",
    [
        (b"A: 1\nB: 2\n\nbody\n\nmore", b"A: 1\nB: 2\n\n"),
        (b"A: 1\r\nB: 2\r\n\r\nbody\r\n", b"A: 1\r\nB: 2\r\n\r\n"),
        (b"A: 1\n", b"A: 1\n"),
        (b"\nbody", b"\n"),
        (b"\r\nbody", b"\r\n"),
        (b"", b""),
        (b"A: 1\r\n\nbody", b"A: 1\r\n\n"),
    ],
)
def test_split_header(data, header):
    h, b = split_header(data)
    assert h == header and h + b == data


def test_prepend_keeps_line_ending_and_bytes():
    crlf = b"Subject: x\r\n\r\nbody\r\n"
    assert prepend_headers(crlf, [("Return-Path", "<a@b>"), ("Delivered-To", "c@d")]) == (
        b"Return-Path: <a@b>\r\nDelivered-To: c@d\r\n" + crlf
    )
    lf = b"Subject: x\n\nbody\r\n"
    assert prepend_headers(lf, [("X", "1")]) == b"X: 1\n" + lf
    assert line_ending(b"no newline") == b"\n"


@pytest.mark.parametrize("name,value", [("Bad Name", "x"), ("A:B", "x"), ("", "x"), ("X", "a\r\nB: c"), ("X", "a\n")])
def test_prepend_refuses_header_injection(name, value):
    with pytest.raises(ValueError):
        prepend_headers(b"A: b\n\n", [(name, value)])


def test_get_header_unfolds_and_is_case_insensitive():
    h = b"Received: from a\r\n\tby b\r\nSUBJECT: one\r\nsubject:two  \r\nX-Y : z\r\n\r\nSubject: body\r\n"
    assert get_header(h, "Subject") == ["one", "two"]
    assert get_header(h, "received") == ["from a\tby b"]
    assert get_header(h, "x-y") == ["z"]
    assert get_header(h, "missing") == []


def test_iter_fields_skips_mbox_from_line():
    assert list(iter_fields(b"From a@b Mon 00:00:00 2024\nA: 1\n\n")) == [("A", "1")]


NAMES = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters=":"), min_size=1,
                max_size=20)
VALUES = st.text(alphabet=st.characters(blacklist_characters="\r\n\0", blacklist_categories=("Cs",)), max_size=50)


@given(st.binary(max_size=300))
def test_split_header_is_lossless(data):
    h, b = split_header(data)
    assert h + b == data
    assert b"\n\n" not in h[:-1] or h.endswith(b"\n\n")


@given(st.lists(st.tuples(NAMES, VALUES), max_size=5), st.binary(max_size=200), st.booleans())
def test_prepend_then_read_back(fields, body, crlf):
    eol = b"\r\n" if crlf else b"\n"
    data = b"Subject: s" + eol + eol + body
    out = prepend_headers(data, fields)
    assert out.endswith(data)
    added = out[: len(out) - len(data)]
    assert added.count(b"\n") == len(fields)
    if crlf:
        assert added.count(b"\r\n") == len(fields)
    h, _ = split_header(out)
    for name, value in fields:
        assert value.strip(" \t") in get_header(h, name)
