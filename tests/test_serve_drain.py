"""`serve` with submission in its own loop (`--submission-workers 0`): a stop signal lets a
session's blocking step that is under way (a login's hash, a message's fsync to the queue)
finish and answer before serve exits, as `submit --listen` does (RFC 5321 3.8: 421 to idle
sessions). Before, serve only closed the listening sockets and ended its loop: the client got
the connection closed with no reply, so a message queued in that instant was sent again by a
client that never saw its 250 (a duplicate)."""

from __future__ import annotations

import signal
import smtplib

from support_net import wait_for
from conftest import slow_login
from test_serve import _insecure, serve  # noqa: F401 - serve is a fixture
from test_serve_processes import cpu_seconds


def test_a_login_under_way_at_sigterm_is_answered_before_serve_exits(serve):
    s = serve(extra_args=["--submission-workers", "0"])
    auth = slow_login(s.root / "users", "slow@localhost")  # a login of seconds
    c = smtplib.SMTP("127.0.0.1", s.ports["submission"], timeout=60)
    c.starttls(context=_insecure())
    c.ehlo("client.example.test")
    idle_cpu = cpu_seconds(s.proc.pid)
    c.sock.sendall(auth)
    # the stop comes once serve is in the hash (its CPU time grows)
    wait_for(lambda: cpu_seconds(s.proc.pid) - idle_cpu >= 0.2, what="serve to be in the slow login")
    s.proc.send_signal(signal.SIGTERM)
    replies = b""
    while True:
        try:
            chunk = c.sock.recv(4096)
        except OSError:
            break
        if not chunk:
            break
        replies += chunk
    c.close()
    assert s.proc.wait(60) == 0
    assert replies.startswith(b"235 "), (replies, s.output())
    assert b"421 4.3.2" in replies, replies  # then the drain's goodbye


def test_imap_sessions_get_bye_when_serve_stops(serve):
    import imaplib

    from imap_helpers import lines_to_eof

    s = serve()
    c = imaplib.IMAP4("127.0.0.1", s.ports["imap"], timeout=30)  # (greeting read)
    s.proc.send_signal(signal.SIGTERM)
    lines = lines_to_eof(c)
    assert s.proc.wait(60) == 0
    assert lines[-1:] == [b"* BYE Server shutting down.\r\n"], lines
