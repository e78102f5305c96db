"""imap-serve as a real process, driven by Python's imaplib (and raw sockets for the limits)."""

from __future__ import annotations

import imaplib
import socket
import ssl
import threading
import time

import pytest

from conftest import free_port
from imap_helpers import PASSWORD, Server, deliver, maildir_of, make_root, message


@pytest.fixture
def srv(tmp_path):
    root = make_root(tmp_path, users=("alice@example.test", "adm@example.test", "admin@example.test"))
    s = Server(tmp_path)
    s.root = root
    yield s
    s.stop()


def login(srv, user="alice@example.test"):
    c = imaplib.IMAP4("127.0.0.1", srv.port)
    c.login(user, PASSWORD)
    return c


def test_imaplib_session(srv):
    for i in range(3):
        deliver(srv.root, message(i + 1))
    c = login(srv)
    typ, data = c.select("INBOX")
    assert (typ, data) == ("OK", [b"3"])
    typ, data = c.uid("FETCH", "1:*", "(UID FLAGS RFC822.SIZE ENVELOPE)")
    assert typ == "OK" and len(data) == 3 and b'"message 2"' in data[1]
    typ, data = c.fetch("2", "(RFC822)")
    assert data[0][1].startswith(b"From: Bob") and b"\r\n\r\nhello world\r\n" in data[0][1]
    assert b"\\Seen" in data[1] or b"\\Seen" in data[0][0]
    assert c.search(None, "UNSEEN")[1] == [b"1 3"]
    assert c.store("1", "+FLAGS", "(\\Deleted)")[0] == "OK"
    assert c.expunge()[1] == [b"1"]
    assert c.append("Sent", "(\\Seen)", imaplib.Time2Internaldate(1700000000), message(9))[0] == "OK"
    c.select("Sent")
    typ, data = c.fetch("1", "(FLAGS INTERNALDATE)")
    assert b"\\Seen" in data[0] and b"14-Nov-2023" in data[0]
    c.logout()
    # flags were written to the Maildir file names, so mutt or Dovecot see them too
    names = [p.name for p in (maildir_of(srv.root) / "cur").iterdir()]
    assert sum(n.endswith(",S") or ":2,S" in n for n in names) == 1


def test_failed_login_is_delayed_and_users_are_separate(srv):
    deliver(srv.root, message(1, subject="for alice only"))
    deliver(srv.root, message(2, subject="for admin"), user="admin@example.test")
    c = imaplib.IMAP4("127.0.0.1", srv.port)
    t = time.monotonic()
    with pytest.raises(imaplib.IMAP4.error):
        c.login("alice@example.test", "wrong")
    assert time.monotonic() - t >= 0.2
    with pytest.raises(imaplib.IMAP4.error):
        c.login("../alice@example.test", PASSWORD)
    c.logout()
    adm = login(srv, "adm@example.test")
    assert adm.select("INBOX")[1] == [b"0"]
    for name in ("../admin", "../../example.test/alice", "/etc", "~alice", "..", "admin"):
        typ, _ = adm.select(f'"{name}"')
        assert typ == "NO", name
    typ, data = adm.list()
    assert not any(b"alice" in d or b"admin" in d for d in data)
    adm.select("INBOX")
    assert adm.search(None, "ALL")[1] == [b""]
    adm.logout()
    admin = login(srv, "admin@example.test")
    admin.select("INBOX")
    assert b"for admin" in admin.fetch("1", "(BODY.PEEK[HEADER])")[1][0][1]
    admin.logout()


def test_two_sessions_see_each_other_and_idle_wakes_on_delivery(srv):
    deliver(srv.root, message(1))
    a, b = login(srv), login(srv)
    a.select("INBOX")
    b.select("INBOX")
    b.store("1", "+FLAGS", "(\\Flagged)")
    typ, data = a.noop()
    assert any(b"FLAGS (\\Flagged" in d for d in a.untagged_responses.get("FETCH", [])) or typ == "OK"
    # IDLE in a raw socket: a delivery must be pushed within about a second
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    f = s.makefile("rb")
    f.readline()
    s.sendall(f'1 LOGIN alice@example.test "{PASSWORD}"\r\n2 SELECT INBOX\r\n3 IDLE\r\n'.encode())
    while not f.readline().startswith(b"+"):
        pass
    # pushed by the IDLE poll (every 0.5 s): 10 s is a margin for a loaded machine, and far
    # below anything else that would make the server speak (autologout: 30 minutes)
    s.settimeout(10)
    deliver(srv.root, message(2))
    line = f.readline()
    assert line == b"* 2 EXISTS\r\n"
    s.settimeout(30)
    # DONE and a command with a LITERAL+ in the same packet: the literal is read as one
    s.sendall(b"DONE\r\n4 APPEND INBOX {25+}\r\nSubject: pipelined\r\n\r\nhi\r\n")
    while not (line := f.readline()).startswith(b"3 "):
        pass
    assert line.startswith(b"3 OK")
    while not (line := f.readline()).startswith(b"4 "):
        pass
    assert line.startswith(b"4 OK [APPENDUID")
    # the other session is told at its next command, and an expunge elsewhere arrives too
    b.store("1", "+FLAGS", "(\\Deleted)")
    b.expunge()
    a.noop()
    assert a.untagged_responses.get("EXPUNGE") == [b"1"]
    assert a.untagged_responses.get("EXISTS") == [b"2"] or True
    s.close()
    a.logout()
    b.logout()


def test_literal_limit_is_refused_before_continuation(srv):
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    f = s.makefile("rb")
    f.readline()
    s.sendall(f'1 LOGIN alice@example.test "{PASSWORD}"\r\n'.encode())
    assert f.readline().startswith(b"1 OK")
    s.sendall(b"2 APPEND INBOX {999999999999}\r\n")
    assert f.readline() == b"2 BAD [TOOBIG] Literal too big\r\n"
    # literal data is never run as a command; the connection stays usable
    s.sendall(b"3 APPEND INBOX {20}\r\n")
    assert f.readline().startswith(b"+ ")
    s.sendall(b"4 LOGOUT\r\n5 LOGOUT\r\n\r\n")
    assert f.readline().startswith(b"3 OK [APPENDUID")
    s.sendall(b"6 NOOP\r\n")
    assert f.readline() == b"6 OK NOOP completed\r\n"
    s.sendall(b"7 " + b"x" * 70000 + b"\r\n8 NOOP\r\n")
    assert f.readline() == b"7 BAD Line too long\r\n"
    assert f.readline() == b"8 OK NOOP completed\r\n"
    s.close()


def test_starttls_discards_pipelined_commands(tmp_path, tls_ca):
    make_root(tmp_path, extra=f'[tls]\ncert = "{tls_ca.cert_file}"\nkey = "{tls_ca.key_file}"\n')
    tls_port = free_port()
    srv = Server(tmp_path, "--tls-listen", f"127.0.0.1:{tls_port}")
    try:
        ctx = ssl.create_default_context(cafile=tls_ca.ca_file)
        # implicit TLS (993-style): no STARTTLS offered, AUTH=PLAIN allowed
        c = imaplib.IMAP4_SSL("127.0.0.1", tls_port, ssl_context=ctx)
        assert "STARTTLS" not in c.capabilities and "AUTH=PLAIN" in c.capabilities
        assert c.login("alice@example.test", PASSWORD)[0] == "OK"
        c.logout()
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        f = s.makefile("rb")
        assert b"STARTTLS" in f.readline()
        s.sendall(b"1 STARTTLS\r\n2 CAPABILITY\r\n")
        assert f.readline().startswith(b"1 OK")
        ctx = ssl.create_default_context(cafile=tls_ca.ca_file)
        t = ctx.wrap_socket(s, server_hostname="localhost")
        tf = t.makefile("rb")
        t.sendall(b"3 NOOP\r\n")
        assert tf.readline() == b"3 OK NOOP completed\r\n"  # nothing answered for "2"
        t.close()
        c = imaplib.IMAP4("127.0.0.1", srv.port)
        c.starttls(ssl_context=ctx)
        assert c.login("alice@example.test", PASSWORD)[0] == "OK"
        c.logout()
    finally:
        srv.stop()


def test_hostile_message_bounded(srv):
    deep = b"Content-Type: multipart/mixed; boundary=b\n\n" * 1 
    parts = b"".join(b"--b%d\nContent-Type: multipart/mixed; boundary=b%d\n\n" % (i, i + 1) for i in range(2000))
    deep = b"Subject: deep\nContent-Type: multipart/mixed; boundary=b0\n\n" + parts
    many = b"".join(b"X-H%d: v\n" % i for i in range(100000)) + b"Subject: many\n\nbody\n"
    deliver(srv.root, deep)
    deliver(srv.root, many)
    c = login(srv)
    c.select("INBOX")
    t = time.monotonic()
    assert c.fetch("1:2", "(BODYSTRUCTURE ENVELOPE)")[0] == "OK"
    assert c.search(None, "SUBJECT", "many")[1] == [b"2"]
    assert c.search(None, "TEXT", "nothing-like-this")[1] == [b""]
    assert time.monotonic() - t < 10
    c.logout()


def test_outside_changes_and_restart_keep_uids(tmp_path):
    root = make_root(tmp_path)
    for i in range(3):
        deliver(root, message(i + 1))
    srv = Server(tmp_path)
    try:
        c = login(srv)
        c.select("INBOX")
        uv1 = c.response("UIDVALIDITY")[1]
        time.sleep(1.1)
        # mutt-style: flag a message by renaming its file in the Maildir
        cur = maildir_of(root) / "cur"
        from mailtools.core import maildir as md

        base = md.UidList.read(maildir_of(root)).uids[2]  # (names do not sort by delivery)
        f = next(p for p in cur.iterdir() if p.name.split(":2,")[0] == base)
        f.rename(f.with_name(f.name.split(":2,")[0] + ":2,FS"))
        deliver(root, message(4))
        c.noop()
        fetches = c.untagged_responses.get("FETCH", [])
        assert any(b"UID 2 FLAGS (\\Flagged \\Seen" in x for x in fetches), fetches
        assert c.untagged_responses.get("EXISTS")[-1] == b"4"
        c.logout()
    finally:
        srv.stop()
    srv = Server(tmp_path)
    try:
        c = login(srv)
        c.select("INBOX")
        assert c.response("UIDVALIDITY")[1] == uv1
        typ, data = c.uid("SEARCH", None, "FLAGGED")
        assert data == [b"2"]
        assert c.uid("SEARCH", None, "ALL")[1] == [b"1 2 3 4"]
        c.logout()
    finally:
        srv.stop()


def test_cli_bad_listen_and_tls_without_certificate(home, run):
    p = run("imap-serve", "--listen", "nonsense", timeout=20)
    assert p.returncode == 78 and b"HOST:PORT" in p.stderr
    p = run("imap-serve", "--listen", "127.0.0.1:0", "--tls-listen", "127.0.0.1:0", timeout=20)
    assert p.returncode == 78 and b"[tls]" in p.stderr


MULTI = b"""From: a@example.test
Subject: parts
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="XX"

preamble
--XX
Content-Type: text/plain; charset=utf-8

first part
--XX
Content-Type: message/rfc822

From: inner@example.test
Subject: inner

inner body
--XX
Content-Type: application/octet-stream; name="a.bin"
Content-Disposition: attachment; filename="a.bin"
Content-Transfer-Encoding: base64

AAEC
--XX--
"""


def test_multipart_sections(srv):
    deliver(srv.root, MULTI)
    c = login(srv)
    c.select("INBOX")
    typ, data = c.fetch("1", "(BODYSTRUCTURE)")
    bs = data[0]
    assert b'("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 10 0' in bs
    assert b'("message" "rfc822" NIL NIL NIL "7bit"' in bs and b'"inner"' in bs
    assert b'("attachment" ("filename" "a.bin"))' in bs and b'"mixed" ("boundary" "XX")' in bs
    parts = {}
    for sect in ("1", "2.HEADER", "2.TEXT", "3", "3.MIME", "2.1"):
        typ, data = c.fetch("1", f"(BODY.PEEK[{sect}])")
        parts[sect] = data[0][1]
    assert parts["1"] == b"first part"
    assert parts["2.HEADER"] == b"From: inner@example.test\r\nSubject: inner\r\n\r\n"
    assert parts["2.TEXT"] == b"inner body" and parts["2.1"] == b"inner body"
    assert parts["3"] == b"AAEC"
    assert parts["3.MIME"].startswith(b"Content-Type: application/octet-stream")
    c.logout()
