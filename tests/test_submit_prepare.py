"""The MSA fix-ups and header helpers of mailtools.submit.prepare, in memory."""

from __future__ import annotations

import re

from mailtools.submit.prepare import fixup, from_value, header_recipients, longest_line, remove_fields

TRACE = [("Received", "by h;\r\n\tSat, 28 Nov 2026 16:00:00 +0000")]


def fx(data: bytes, **kw) -> bytes:
    return fixup(data, from_address="me@h.example.test", hostname="h.example.test", trace=TRACE, **kw)


def test_adds_missing_fields_at_the_end_of_the_header_lf():
    out = fx(b"Subject: x\n\nbody\n")
    assert re.fullmatch(
        rb"Received: by h;\n\tSat, 28 Nov 2026 16:00:00 \+0000\nSubject: x\nDate: .+\n"
        rb"Message-ID: <[0-9a-f]+\.[0-9a-f]+@h\.example\.test>\nFrom: me@h\.example\.test\n\nbody\n", out), out


def test_crlf_kept_and_body_untouched():
    body = b"line one\r\n\r\n.leading dot\r\nFrom me\r\n"
    out = fx(b"Subject: x\r\n\r\n" + body)
    assert out.endswith(b"\r\n\r\n" + body) and b"\n\t" in out and b"\r\n\t" in out
    assert b"\n" not in out.replace(b"\r\n", b"")


def test_existing_fields_kept_bcc_removed_with_continuation():
    out = fx(b"From: a@b\nDate: Mon, 1 Jan 2024 00:00:00 +0000\nMessage-ID: <m@x>\nBcc: x@y,\n  z@y\nBCC: w@y\nSubject: s\n\nb\n")
    assert b"Bcc" not in out and b"BCC" not in out and b"z@y" not in out
    assert out.count(b"Date:") == 1 and out.count(b"Message-ID:") == 1 and out.count(b"From:") == 1
    assert out.endswith(b"Subject: s\n\nb\n")


def test_no_header_or_no_body():
    assert fx(b"hello world\n").endswith(b"From: me@h.example.test\n\nhello world\n")
    assert fx(b"Subject: only\n").endswith(b"\n\n")


def test_full_name():
    assert from_value("a@b", "Cron Daemon") == "Cron Daemon <a@b>"
    assert from_value("a@b", "Doe, John") == '"Doe, John" <a@b>'
    assert from_value("a@b", "Jörg").startswith("=?utf-8?b?")
    assert from_value("a@b", None) == "a@b"


def test_header_recipients_and_remove_fields():
    h = b'To: "A, B" <a@x.test>, c@x.test\nCc: team: d@x.test;\nBcc: e@x.test\nSubject: To: f@x.test\n\n'
    assert header_recipients(h) == ["a@x.test", "c@x.test", "d@x.test", "e@x.test"]
    assert remove_fields(b"A: 1\nB: 2\n 3\nC: 4\n", ("b",)) == b"A: 1\nC: 4\n"


def test_longest_line():
    assert longest_line(b"a" * 998 + b"\r\nb\n") == 998
    assert longest_line(b"x\n" + b"a" * 999 + b"\r\n") == 999
    assert longest_line(b"x\n" + b"a" * 1200) == 1200
