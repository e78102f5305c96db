"""Long commands pause: a cooperative session hands back a Resume action in the middle of a
FETCH or SEARCH, commands pipelined behind it wait, and the answers are the same as when the
command runs in one go. Over the real server, a long SEARCH TEXT of one client does not stall
another client."""

from __future__ import annotations

import imaplib
import select

import pytest

from imap_helpers import PASSWORD, Server, deliver, make_root, message
from mailtools.imap import search as searchmod
from mailtools.imap import session as sessmod


class Users:
    def verify(self, user, password):
        return user == "alice@example.test" and password == PASSWORD


def _session(tmp_path, cooperative: bool):
    """A logged-in session with INBOX selected, on a Maildir of its own (SELECT takes \\Recent)."""
    from mailtools.core import config

    d = tmp_path / ("coop" if cooperative else "plain")
    d.mkdir()
    root = make_root(d)
    for i in range(40):
        deliver(root, message(i + 1, subject="wanted" if i % 3 else None, body=f"line {i}\n" * 50))
    cfg = config.load(str(d / "mailtools.toml"), reload=True)
    s = sessmod.Session(cfg, users=Users(), loopback=True)
    s.cooperative = cooperative
    s.feed(f'a LOGIN alice@example.test "{PASSWORD}"\r\nb SELECT INBOX\r\n'.encode())
    return s


def _drive(s, data: bytes) -> tuple[bytes, int]:
    """Feed data, then resume while the session asks to; (all output, number of pauses)."""
    out = s.feed(data)
    text, pauses = b"", 0
    while True:
        text += b"".join(x for x in out if isinstance(x, bytes))
        if not out or not isinstance(out[-1], sessmod.Resume):
            return text, pauses
        assert all(not isinstance(x, sessmod.Resume) for x in out[:-1])
        pauses += 1
        if pauses == 1:
            # paused: the pipelined NOOP has not run, and input meanwhile is only buffered
            assert b"n1 OK" not in text
            assert s.feed(b"n2 NOOP\r\n") == []
        out = s.resume()


@pytest.mark.parametrize("command", [
    b"c1 SEARCH TEXT line\r\n",
    b'c1 UID SEARCH SUBJECT "wanted" UNSEEN TEXT "line 3"\r\n',
    b"c1 FETCH 1:* (UID FLAGS BODY.PEEK[] BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n",
    b"c1 FETCH 1:* (FLAGS BODY[TEXT])\r\n",
])
def test_paused_command_answers_as_in_one_go(tmp_path, monkeypatch, command):
    whole, pauses = _drive(_session(tmp_path, False), command + b"n1 NOOP\r\nn2 NOOP\r\n")
    assert pauses == 0
    monkeypatch.setattr(searchmod, "SLICE", 0.0)  # pause at every chance
    monkeypatch.setattr(sessmod, "FETCH_CHUNK", 1)
    paused, pauses = _drive(_session(tmp_path, True), command + b"n1 NOOP\r\n")
    assert pauses >= 2
    assert paused == whole
    assert whole.count(b"c1 OK") == 1 and whole.endswith(b"n2 OK NOOP completed\r\n")


def test_long_search_does_not_stall_other_clients(tmp_path):
    root = make_root(tmp_path)
    body = "".join(f"line {i} of a long message body, nothing to find here\n" for i in range(4000))
    for i in range(200):  # about 50 MB to search
        deliver(root, message(i + 1, body=body))
    srv = Server(tmp_path)
    try:
        a = imaplib.IMAP4("127.0.0.1", srv.port)
        a.login("alice@example.test", PASSWORD)
        a.select("INBOX")
        b = imaplib.IMAP4("127.0.0.1", srv.port)
        b.login("alice@example.test", PASSWORD)
        b.select("INBOX")
        a.sock.sendall(b"s1 SEARCH TEXT needle-not-there\r\n")
        got, answered_meanwhile = b"", 0
        while b"s1 OK" not in got:
            assert b.noop()[0] == "OK"
            if select.select([a.sock], [], [], 0)[0]:
                got += a.sock.recv(65536)
            if b"s1 OK" not in got:
                answered_meanwhile += 1
            assert answered_meanwhile < 100000
        assert b"* SEARCH\r\n" in got
        # B's NOOPs were answered while A's search went on (a blocked server answers none)
        assert answered_meanwhile >= 3, answered_meanwhile
        b.logout()
    finally:
        srv.stop()
