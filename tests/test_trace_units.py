"""Unit tests for the trace-headers pieces: dates, IPs, TLS notations, auth, mbox splitting,
and the two text views."""

from __future__ import annotations

import io

import pytest

from mailtools.trace import render
from mailtools.trace.auth import parse_results, summary
from mailtools.trace.dates import iso, parse_date
from mailtools.trace.headers import NotAMessage, check_header, fields, split_mbox
from mailtools.trace.received import normalise_ip, parse_received
from mailtools.trace.report import build
from mailtools.trace.tls import version


@pytest.mark.parametrize("text,expected", [
    ("Thu, 28 Nov 2026 10:00:00 +0000", "2026-11-28T10:00:00Z"),
    ("Thu, 28 Nov 2026 10:00:00 +0130 (odd zone)", "2026-11-28T08:30:00Z"),
    ("28 Nov 2026 10:00:00 -0000", "2026-11-28T10:00:00Z"),  # -0000: UTC (RFC 5322 3.3)
    ("Thu, 28 Nov 26 10:00 EST", "2026-11-28T15:00:00Z"),  # 2-digit year, no seconds
    ("Sun, 28 Nov 99 10:00:00 GMT", "1999-11-28T10:00:00Z"),  # 50-99 -> 19xx
    ("Thu, 28 Nov 126 10:00:00 UT", "2026-11-28T10:00:00Z"),  # 3-digit year: + 1900
    ("Thu, 28 Nov 2026 10:00:00 PDT", "2026-11-28T17:00:00Z"),
    ("Thu, 28 Nov 2026 10:00:00 M", "2026-11-28T10:00:00Z"),  # military zones carry no offset
    ("Thu, 28 Nov 2026 10:00:00 XYZT", "2026-11-28T10:00:00Z"),  # unknown zone: UTC (4.3)
    ("Thu, 28 Nov 2026 10:00:00", "2026-11-28T10:00:00Z"),  # no zone at all: UTC
    ("Thu, 28 Nov 2026 23:59:60 +0000", "2026-11-28T23:59:59Z"),  # leap second
    ("  (comment first) Thu, 28 Nov 2026 10:00:00 +0000", "2026-11-28T10:00:00Z"),
    ("Thu Nov 28 10:00:00 2026", "2026-11-28T10:00:00Z"),  # asctime
    ("Thu, 28 No\n v 2026 10:00:00 +0000", "2026-11-28T10:00:00Z"),  # folded mid-token
])
def test_dates(text, expected):
    assert iso(parse_date(text)) == expected


@pytest.mark.parametrize("text", [
    "", "yesterday", "Thu, 31 Feb 2026 10:00:00 +0000", "Thu, 28 Nov 2026 25:00:00 +0000",
    "Thu, 28 Nov 2026 10:61:00 +0000", "Thu, 28 Foo 2026 10:00:00 +0000",
    "Thu, 28 Nov 2026 10:00:00 +9999", "Thu, 28 Nov 1066 10:00:00 +0000", None,
])
def test_impossible_dates_are_none(text):
    assert parse_date(text) is None


@pytest.mark.parametrize("text,expected", [
    ("192.0.2.1", "192.0.2.1"), ("[192.0.2.1]", "192.0.2.1"), ("192.0.2.1:25", "192.0.2.1"),
    ("[IPv6:2001:DB8::1]", "2001:db8::1"), ("fe80::1%eth0", "fe80::1"), ("user@192.0.2.9", "192.0.2.9"),
    ("::ffff:192.0.2.1", "::ffff:192.0.2.1"), ("256.0.0.1", None), ("10:00:00", None), ("host", None),
])
def test_normalise_ip(text, expected):
    assert normalise_ip(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("TLS1_2", "TLSv1.2"), ("TLSv1.3", "TLSv1.3"), ("TLS1.0", "TLSv1"), ("TLSv1", "TLSv1"),
    ("SSLv3", "SSLv3"), ("TLSv1/SSLv3", "TLSv1/SSLv3"),
])
def test_tls_version_spelling(text, expected):
    assert version(text) == expected


def test_ipv6_from_exchange_with_zone_and_port_forms():
    hop = parse_received("from h ([2001:db8::5]:4321 helo=h.example) by x with esmtp; Thu, 28 Nov 2026 10:00:00 +0000")
    assert (hop["from_ip"], hop["from_host"]) == ("2001:db8::5", "h.example")


def test_semicolon_inside_comment_and_quoted_pair():
    hop = parse_received(r"from a (x\); y; z) by b (c; d) with SMTP id 1; Thu, 28 Nov 2026 10:00:00 +0000 (UTC; x)")
    assert (hop["from_host"], hop["by_host"], hop["with"], hop["id"]) == ("a", "b", "SMTP", "1")
    assert iso(hop["epoch"]) == "2026-11-28T10:00:00Z"


def test_received_without_semicolon_but_with_a_date():
    hop = parse_received("from a by b with SMTP Thu, 28 Nov 2026 10:00:00 +0000")
    assert hop["by_host"] == "b" and hop["with"] == "SMTP"
    assert iso(hop["epoch"]) == "2026-11-28T10:00:00Z"


def test_header_helpers():
    with pytest.raises(NotAMessage):
        check_header(b"\x00\x01garbage")
    with pytest.raises(NotAMessage):
        check_header(b"From x Thu Nov 28 10:00:00 2026\n")
    check_header(b"From x Thu Nov 28 10:00:00 2026\nSubject: x\n")
    got = fields(b"X-Received: no\nReceived: a\n b\nSubject : hi\nReceived-SPF: no\n")
    assert got == [("received", " a\n b"), ("subject", " hi")]


def test_mbox_split_needs_a_blank_line_before_from():
    box = b"From a Thu\nS: 1\n\nbody\nFrom here, not a separator\n\nFrom b Thu\nS: 2\n\nx\n"
    parts = [box[s:e] for s, e in split_mbox(box)]
    assert len(parts) == 2
    assert parts[1].startswith(b"From b")


def test_auth_results_fallback_and_arc():
    warnings = []
    bad = parse_results("authentication-results", "mx.example; dkim=fail; spf=", warnings)
    assert [w["kind"] for w in warnings] == ["unparseable-auth-results"]
    assert bad["authserv_id"] == "mx.example"
    assert bad["results"][0]["method"] == "dkim" and bad["results"][0]["result"] == "fail"
    arc = parse_results("arc-authentication-results", "i=2; mx.example; arc=pass; dkim=pass header.d=example.org", [])
    assert arc["instance"] == 2 and arc["field"] == "ARC-Authentication-Results"
    s = summary([arc], [])
    assert s["arc"] == "pass" and s["dkim"] == "pass" and s["authserv_id"] == "mx.example"


def test_topmost_authserv_fields_count_and_lower_ones_do_not():
    head = (b"Authentication-Results: mx.example.net; spf=fail smtp.mailfrom=a.example\n"
            b"Authentication-Results: mx.example.net; dkim=pass header.d=a.example\n"
            b"Authentication-Results: forged.example; dmarc=pass header.from=a.example\n"
            b"Subject: x\n")
    a = build(head)["auth"]
    assert (a["authserv_id"], a["spf"], a["dkim"], a["dmarc"]) == ("mx.example.net", "fail", "pass", None)


def _report():
    return build(b"Received: from b.example (b.example [192.0.2.2]) by c.example with ESMTPS id 3; "
                 b"Thu, 28 Nov 2026 10:10:00 +0000\n"
                 b"Received: from a.example (a.example [192.0.2.1]) by b.example with SMTP id 2; "
                 b"Thu, 28 Nov 2026 10:00:30 +0000\n"
                 b"Received: by a.example id 1; Thu, 28 Nov 2026 10:00:00 +0000\n"
                 b"Message-ID: <x@example>\nSubject: three hops\n")


def test_plain_view():
    text = render.plain(_report())
    assert text.splitlines() == [
        "message-id: <x@example>",
        "subject: three hops",
        "hop 1  2026-11-28T10:00:00Z  -  by a.example  id 1",
        "hop 2  2026-11-28T10:00:30Z  +30s  from a.example [192.0.2.1]  by b.example  with SMTP  id 2",
        "hop 3  2026-11-28T10:10:00Z  +9m30s  from b.example [192.0.2.2]  by c.example  with ESMTPS  tls yes  id 3",
        "total: 10m00s over 3 hops",
    ]


def test_rich_view_bar_scaled_to_the_slowest_hop():
    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=200, force_terminal=True, color_system="standard").print(render.table(_report()))
    out = buf.getvalue()
    lines = [l for l in out.splitlines() if "+30s" in l or "+9m30s" in l]
    slow, fast = (lines[1], lines[0]) if "+9m30s" in lines[1] else (lines[0], lines[1])
    assert slow.count("█") == render.BAR_WIDTH
    assert 0 < fast.count("█") < 3
    assert "\x1b[1;31m" in slow  # highlighted
    assert render.slowest(_report()) == 3
    assert "Total transit: 10m00s over 3 hops" in out
    # every header fact is labelled, the subject too (it used to float above the table, unnamed)
    assert any("Subject" in l and "three hops" in l for l in out.splitlines())


def test_delay_format():
    assert [render.fmt_delay(s) for s in (None, 0, 59, 61, 3600, 90000, -5)] == [
        "-", "+0s", "+59s", "+1m01s", "+1h00m", "+1d01h", "-5s"]


def test_control_characters_never_reach_the_terminal():
    r = build(b"Received: from evil\x1b[2J.example (x [192.0.2.1]) by \x1b]0;pwned\x07mx.example with SMTP; "
              b"Thu, 28 Nov 2026 10:00:00 +0000\nSubject: \x1b[31mred\n")
    assert "\x1b" not in render.plain(r)
    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=200, force_terminal=True).print(render.table(r))
    assert "\x1b[2J" not in buf.getvalue() and "\x1b]0;" not in buf.getvalue()


def test_latin1_header_is_read_as_latin1():
    r = build("From: J\u00fcrgen <j@example.test>\nReceived: by x id 1; Thu, 28 Nov 2026 10:00:00 +0000\n".encode("latin-1"))
    assert r["from"] == "J\u00fcrgen <j@example.test>"


def test_rich_view_without_hops_has_no_empty_table():
    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=120, force_terminal=True).print(render.table(build(b"Subject: none\n\nbody\n")))
    out = buf.getvalue()
    assert "\u250f" not in out and "Hop" not in out  # no table frame
    assert "no-received" in out and "none" in out
