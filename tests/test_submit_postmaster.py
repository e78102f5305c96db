"""RCPT TO:<postmaster> without a domain (RFC 5321 4.5.1: every server must take it) through
the submission server and `sendmail -bs` is queued for postmaster at the configured host name,
as the sendmail command line qualifies `root`. Before, the queue entry named the bare
"postmaster", which the relay took for a domain called "postmaster": no such host, a bounce."""

from __future__ import annotations

from conftest import submit_pipelined
from mailtools.core.queue import Queue

SESSION = (b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<postmaster>\r\nDATA\r\n"
           b"Subject: to the postmaster\r\n\r\nhello\r\n.\r\nQUIT\r\n")


def _recipients(home) -> list[str]:
    return [r.address for e in Queue(home / "queue").entries() for r in e.recipients]


def test_submission_server_qualifies_bare_postmaster(home):
    out = submit_pipelined(home, SESSION)
    assert b"250 2.0.0 Ok: queued as" in out, out
    assert _recipients(home) == ["postmaster@mx.example.test"]


def test_sendmail_bs_qualifies_bare_postmaster(home, run):
    r = run("submit", "-bs", input=b"EHLO localhost\r\n" + SESSION)
    assert b"250 2.0.0 Ok: queued as" in r.stdout, r.stdout
    assert _recipients(home) == ["postmaster@mx.example.test"]
