"""pop3-serve as a real process, driven by Python's poplib and raw sockets on loopback."""

from __future__ import annotations

import poplib
import socket
import ssl
import time

import pytest

from mailtools.core import maildir
from conftest import tls_first_command_with_finished
from pop3_support import PASSWORD, Server, add_user, write_config
from support_net import wait_for

USER = "alice@example.test"
MESSAGES = [
    b"From: a@example.test\nSubject: first\n\nline one\n.starts with a dot\n",
    b"From: b@example.test\nSubject: second\n\n.\n..\nend\n",
    b"From: c@example.test\r\nSubject: third (CRLF)\r\n\r\nbody\r\n",
    b"Subject: no final newline\n\nlast line",
]


@pytest.fixture
def pop(home, tls_ca):
    write_config(home, tls=tls_ca)
    md = add_user(home)
    paths = [maildir.deliver(md, m) for m in MESSAGES]
    srv = Server(home, tls=True)
    srv.maildir, srv.paths, srv.ca = md, paths, tls_ca
    yield srv
    code, out, err = srv.stop()
    assert code == 0, err
    assert b"Traceback" not in err, err


def connect(srv) -> poplib.POP3:
    p = poplib.POP3("127.0.0.1", srv.port, timeout=10)
    p.user(USER)
    p.pass_(PASSWORD)
    return p


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def wire_body(lines: list[bytes]) -> bytes:
    return b"".join(ln + b"\r\n" for ln in lines)


def test_greeting_and_capa(pop):
    p = poplib.POP3("127.0.0.1", pop.port, timeout=10)
    assert p.getwelcome() == b"+OK mx.example.test mailtools POP3 ready."
    caps = p.capa()
    for c in ("TOP", "UIDL", "USER", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "STLS"):
        assert c in caps
    assert caps["SASL"] == ["PLAIN"]
    assert p.quit().startswith(b"+OK")


def test_stat_list_retr_byte_exact(pop):
    p = connect(pop)
    sizes = [len(crlf(m)) for m in MESSAGES]
    assert p.stat() == (4, sum(sizes))
    resp, lines, _ = p.list()
    assert lines == [f"{i + 1} {s}".encode() for i, s in enumerate(sizes)]
    for i, m in enumerate(MESSAGES):
        resp, lines, octets = p.retr(i + 1)
        assert resp == f"+OK {sizes[i]} octets".encode()
        got = wire_body(lines)
        want = crlf(m) if m.endswith(b"\n") else crlf(m) + b"\r\n"
        assert got == want  # poplib has undone the dot-stuffing
    p.quit()


def test_raw_wire_is_dot_stuffed(pop):
    s = socket.create_connection(("127.0.0.1", pop.port), timeout=10)
    f = s.makefile("rb")
    f.readline()
    s.sendall(f"USER {USER}\r\nPASS {PASSWORD}\r\nRETR 2\r\nQUIT\r\n".encode())
    data = b""
    while not data.endswith(b"+OK Logging out.\r\n"):
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    assert f"+OK {len(crlf(MESSAGES[1]))} octets".encode() + b"\r\nFrom: b@example.test\r\nSubject: second\r\n\r\n..\r\n...\r\nend\r\n.\r\n" in data
    s.close()


def test_uidl_is_dovecot_format_and_stable_across_restarts(pop, home):
    ul = maildir.UidList.sync(pop.maildir)
    want = [f"{i + 1} {uid:08x}{ul.uidvalidity:08x}".encode() for i, uid in enumerate(sorted(ul.uids))]
    p = connect(pop)
    assert p.uidl()[1] == want
    assert p.uidl(3) == want[2].join([b"+OK ", b""])
    p.quit()
    pop.stop()
    maildir.deliver(pop.maildir, b"Subject: newer\n\nx\n")
    srv2 = Server(home)
    try:
        p = connect(srv2)
        lines = p.uidl()[1]
        assert lines[:4] == want and len(lines) == 5
        p.quit()
    finally:
        srv2.stop()


def test_top(pop):
    p = connect(pop)
    resp, lines, _ = p.top(1, 1)
    assert lines == [b"From: a@example.test", b"Subject: first", b"", b"line one"]
    resp, lines, _ = p.top(3, 0)
    assert lines == [b"From: c@example.test", b"Subject: third (CRLF)", b""]
    p.quit()


def test_dele_then_quit_removes_files_durably(pop):
    p = connect(pop)
    p.dele(1)
    p.dele(3)
    assert p.stat()[0] == 2
    with pytest.raises(poplib.error_proto, match="deleted"):
        p.retr(1)
    assert all(x.exists() for x in pop.paths)  # nothing happens before QUIT
    assert p.quit() == b"+OK Logging out, 2 messages deleted."
    assert not pop.paths[0].exists() and not pop.paths[2].exists()
    assert len(maildir.Maildir(pop.maildir).scan()) == 2
    p = connect(pop)
    assert p.stat()[0] == 2
    p.quit()


def test_rset_and_drop_without_quit_delete_nothing(pop):
    p = connect(pop)
    p.dele(1)
    p.rset()
    p.quit()
    p = connect(pop)
    p.dele(1)
    p.dele(2)
    p.sock.shutdown(socket.SHUT_RDWR)  # connection dropped, no QUIT
    p.close()

    def login():  # the lock is released once the server has noticed the drop: soon, not at once
        c = poplib.POP3("127.0.0.1", pop.port, timeout=10)
        c.user(USER)
        try:
            c.pass_(PASSWORD)
        except poplib.error_proto as exc:
            c.close()
            assert b"[IN-USE]" in exc.args[0], exc
            return None
        return c

    p = wait_for(login, what="the lock to be released with the dropped connection")
    assert p.stat()[0] == 4
    p.quit()
    assert len(maildir.Maildir(pop.maildir).scan()) == 4


def test_retrieved_messages_get_seen_flag(pop):
    p = connect(pop)
    p.retr(2)
    p.top(3, 0)
    p.quit()
    flags = {m.base: (m.subdir, m.flags) for m in maildir.Maildir(pop.maildir).scan()}
    base2 = maildir.parse_name(pop.paths[1].name)[0]
    base3 = maildir.parse_name(pop.paths[2].name)[0]
    assert flags[base2] == ("cur", "S")
    assert flags[base3] == ("new", "")


def test_second_session_gets_in_use(pop, home):
    p1 = connect(pop)
    p2 = poplib.POP3("127.0.0.1", pop.port, timeout=10)
    p2.user(USER)
    with pytest.raises(poplib.error_proto, match=r"-ERR \[IN-USE\]"):
        p2.pass_(PASSWORD)
    # another pop3-serve process on the same tree is excluded too
    other = Server(home)
    try:
        p3 = poplib.POP3("127.0.0.1", other.port, timeout=10)
        p3.user(USER)
        with pytest.raises(poplib.error_proto, match=r"-ERR \[IN-USE\]"):
            p3.pass_(PASSWORD)
        p1.quit()
        p3.user(USER)
        p3.pass_(PASSWORD)
        assert p3.stat()[0] == 4
        p3.quit()
    finally:
        other.stop()
    p2.user(USER)
    p2.pass_(PASSWORD)
    p2.quit()


def test_failed_login_delayed_and_auth_code(pop):
    p = poplib.POP3("127.0.0.1", pop.port, timeout=10)
    p.user(USER)
    t = time.monotonic()
    with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\] Authentication failed"):
        p.pass_("wrong")
    assert time.monotonic() - t >= 0.3
    p.user("nobody@example.test")
    with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\]"):
        p.pass_(PASSWORD)
    p.user(USER)
    assert p.pass_(PASSWORD) == b"+OK Logged in."
    p.quit()


def test_other_users_mail_untouched(pop, home):
    add_user(home, "bob@example.test", "bobs password")
    p = poplib.POP3("127.0.0.1", pop.port, timeout=10)
    p.user("bob@example.test")
    p.pass_("bobs password")
    assert p.stat() == (0, 0)
    p.quit()


def test_stls(pop):
    ctx = ssl.create_default_context(cafile=pop.ca.ca_file)
    p = poplib.POP3("127.0.0.1", pop.port, timeout=10)
    p.stls(ctx)
    assert p.sock.version() in ("TLSv1.2", "TLSv1.3")
    assert "STLS" not in p.capa()  # the fresh CAPA after STLS (RFC 2595 4)
    p.user(USER)
    p.pass_(PASSWORD)
    assert p.stat()[0] == 4
    p.quit()


def _stls_then_first_command_in_one_segment(srv, pipelined: bytes, first: bytes) -> bytes:
    """STLS, then the client's TLS Finished and its first command in one TCP segment, as GnuTLS
    clients send them; returns what the server answers to that command (b"" if nothing)."""
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"STLS\r\n" + pipelined)
    assert f.readline().startswith(b"+OK")
    got = tls_first_command_with_finished(s, ssl.create_default_context(cafile=srv.ca.ca_file), first)
    s.close()
    return got


def test_stls_command_right_behind_the_handshake_is_answered(pop):
    # msmtp, mutt and other GnuTLS clients: the first command rides with the TLS Finished.
    assert _stls_then_first_command_in_one_segment(pop, b"", b"CAPA\r\n").startswith(b"+OK")
    # plaintext pipelined behind STLS is still dropped (RFC 2595 4): the first reply over TLS
    # answers the command sent over TLS (NOOP before login is an error), not the plaintext CAPA
    got = _stls_then_first_command_in_one_segment(pop, b"CAPA\r\n", b"NOOP\r\n")
    assert got.startswith(b"-ERR"), got


def test_implicit_tls(pop):
    ctx = ssl.create_default_context(cafile=pop.ca.ca_file)
    p = poplib.POP3_SSL("127.0.0.1", pop.tls_port, context=ctx, timeout=10)
    assert "STLS" not in p.capa()
    p.user(USER)
    p.pass_(PASSWORD)
    assert p.retr(1)[0].startswith(b"+OK")
    p.quit()


def test_auth_plain(pop):
    import base64

    s = socket.create_connection(("127.0.0.1", pop.port), timeout=10)
    f = s.makefile("rb")
    f.readline()
    ir = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    s.sendall(f"AUTH PLAIN {ir}\r\nSTAT\r\nQUIT\r\n".encode())
    assert f.readline() == b"+OK Logged in.\r\n"
    assert f.readline().startswith(b"+OK 4 ")
    s.close()


def test_malformed_input(pop):
    s = socket.create_connection(("127.0.0.1", pop.port), timeout=10)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"\x00\xff\xfe garbage\r\n")
    assert f.readline().startswith(b"-ERR")
    s.sendall(b"USER " + b"x" * 100_000 + b"\r\n")
    assert f.readline() == b"-ERR Line too long.\r\n"
    s.sendall(b"RETR 1\r\n")
    assert f.readline().startswith(b"-ERR Command not valid in this state")
    s.sendall(b"NOOP\r\n" * 30)
    replies = [f.readline() for _ in range(18)]
    assert replies[-1] == b"-ERR Too many invalid commands.\r\n"
    assert f.readline() == b""  # closed
    s.close()
    p = connect(pop)  # the server is fine
    p.quit()


def test_cli_errors(run, home):
    write_config(home)
    r = run("pop3-serve", "--listen", "nonsense")
    assert r.returncode == 64, r.stderr
    assert b"HOST:PORT" in r.stderr
    assert r.stderr.count(b"HOST:PORT") == 1  # said once, not twice
    write_config(home, extra='[pop3]\nlisten = ["127.0.0.1:99999"]\n')
    r = run("pop3-serve")  # the same mistake in the config is a configuration error
    assert r.returncode == 78 and b"pop3: " in r.stderr and b"99999" in r.stderr, r.stderr
    write_config(home)
    r = run("pop3-serve", "--tls-listen", "127.0.0.1:0")
    assert r.returncode == 78 and b"certificate" in r.stderr


def test_log_lines(pop):
    p = connect(pop)
    p.retr(1)
    p.dele(2)
    p.quit()
    p = poplib.POP3("127.0.0.1", pop.port, timeout=10)
    p.user(USER)
    with pytest.raises(poplib.error_proto):
        p.pass_("wrong")
    p.close()
    time.sleep(0.3)
    code, out, err = pop.stop()
    assert code == 0
    assert b"mailtools pop3-serve: listening on 127.0.0.1:" in out
    log = err.decode()
    assert f"Login: user=<{USER}>, rip=127.0.0.1, messages=4" in log
    assert f"Disconnected: Logged out top=0/0, retr=1/{len(crlf(MESSAGES[0]))}, del=1/4, user=<{USER}>" in log
    assert "Aborted login (auth failed, 1 attempts): rip=127.0.0.1" in log


TOO_MANY = b"-ERR [SYS/TEMP] Too many connections, try again later.\r\n"


def _open(port: int):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s, s.makefile("rb")


def test_connection_limit(home):
    # (a server of its own, without a short idle timeout: the two clients that fill the limit
    # must not be logged out before the third arrives, however slow the machine)
    write_config(home, extra="[pop3]\nmax_connections = 2\n")
    add_user(home)
    srv = Server(home)
    try:
        a, fa = _open(srv.port)
        assert fa.readline().startswith(b"+OK")

        def second():  # its slot is free once the server has noticed that wait_port's probe left
            b, fb = _open(srv.port)
            line = fb.readline()
            if line.startswith(b"+OK"):
                return b, fb
            assert line == TOO_MANY, line
            b.close()
            return None

        b, fb = wait_for(second, what="the probe connection's slot")
        c, fc = _open(srv.port)
        assert fc.readline() == TOO_MANY
        for s in (a, b, c):
            s.close()
    finally:
        srv.stop()


def test_idle_timeout(home):
    write_config(home, extra='[pop3]\nidle_timeout = "1s"\n')
    add_user(home)
    srv = Server(home)
    try:
        t0 = time.monotonic()
        a, fa = _open(srv.port)
        assert fa.readline().startswith(b"+OK")
        # after the second of silence, never before it; and long before the default 10
        # minutes, which the socket's 10 s timeout stands for
        assert fa.readline() == b"-ERR Disconnected for inactivity.\r\n"
        assert time.monotonic() - t0 > 0.9
        assert fa.readline() == b""
        a.close()
    finally:
        srv.stop()


def test_pipelined_script_that_closes_its_side(pop):
    """printf 'USER..PASS..DELE 1\\r\\nQUIT\\r\\n' | nc -N: every command is answered and done."""
    s = socket.create_connection(("127.0.0.1", pop.port), timeout=10)
    s.sendall(f"USER {USER}\r\nPASS {PASSWORD}\r\nDELE 1\r\nQUIT\r\n".encode())
    s.shutdown(socket.SHUT_WR)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    assert data.endswith(b"+OK Marked to be deleted.\r\n+OK Logging out, 1 messages deleted.\r\n"), data
    assert not pop.paths[0].exists()


def test_remembered_password_stops_working_when_changed(home, monkeypatch):
    from mailtools.pop3.maildrop import MaildirBackend
    from mailtools.pop3.session import AuthFailed
    from mailtools.core import auth, config

    write_config(home)
    add_user(home)
    cfg = config.load(str(home.parent / "mailtools.toml"), reload=True)
    backend = MaildirBackend(cfg)
    backend.login(USER, PASSWORD).close()
    with monkeypatch.context() as m:
        m.setattr(auth.Users, "verify", lambda *a: pytest.fail("the slow hash was checked again"))
        backend.login(USER, PASSWORD).close()  # remembered
    with pytest.raises(AuthFailed):
        backend.login(USER, "wrong")
    time.sleep(0.01)  # a new mtime for the users file
    auth.Users(cfg.users_file).set_password(USER, "new password", scheme="BLF-CRYPT")
    with pytest.raises(AuthFailed):
        backend.login(USER, PASSWORD)
    backend.login(USER, "new password").close()


def test_large_message_byte_exact(pop):
    import hashlib

    body = b"".join(b"%06d " % i + b"x" * (i % 900) + (b"\n." if i % 7 == 0 else b"\n") for i in range(8000))
    big = b"Subject: big\n\n" + body
    maildir.deliver(pop.maildir, big)
    p = connect(pop)
    n, _ = p.stat()
    resp, lines, octets = p.retr(n)
    assert resp == f"+OK {len(crlf(big))} octets".encode()
    got = wire_body(lines)
    assert hashlib.sha256(got).digest() == hashlib.sha256(crlf(big)).digest()
    p.quit()
