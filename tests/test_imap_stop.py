"""imap-serve on SIGTERM: every session gets an untagged BYE, as Dovecot says it ("* BYE Server
shutting down."), then the process exits 0; a command under way finishes first."""

from __future__ import annotations

import imaplib
import signal

from imap_helpers import PASSWORD, Server, deliver, lines_to_eof, make_root, message


def test_sigterm_says_bye_to_every_session_and_exits_0(tmp_path):
    root = make_root(tmp_path)
    deliver(root, message(1))
    s = Server(tmp_path)
    try:
        selected = imaplib.IMAP4("127.0.0.1", s.port, timeout=30)
        selected.login("alice@example.test", PASSWORD)
        selected.select("INBOX")
        idling = imaplib.IMAP4("127.0.0.1", s.port, timeout=30)
        idling.login("alice@example.test", PASSWORD)
        idling.select("INBOX")
        idling.send(b"i1 IDLE\r\n")
        assert idling.readline().startswith(b"+")
        fresh = imaplib.IMAP4("127.0.0.1", s.port, timeout=30)  # not logged in
        s.proc.send_signal(signal.SIGTERM)
        for c in (selected, idling, fresh):
            lines = lines_to_eof(c)
            assert lines[-1:] == [b"* BYE Server shutting down.\r\n"], lines
        assert s.proc.wait(30) == 0
    finally:
        s.stop()
