"""The asyncio server around the session, over real loopback sockets with smtplib and raw
sockets: STARTTLS, implicit TLS, AUTH off the loop, timeouts, the connection limit, smuggling."""

from __future__ import annotations

import asyncio
import base64
import smtplib
import socket
import ssl
import threading
import time

import pytest

from conftest import free_port, tls_first_command_with_finished
from mailtools.smtpd import replies as R
from mailtools.core.tls import server_context as server_ssl_context
from mailtools.core.listen import bound_addresses, parse_listen
from mailtools.smtpd.server import shutdown, start_server
from mailtools.smtpd.session import Handler, Limits


class Recorder(Handler):
    auth_mechanisms = ("PLAIN", "LOGIN")
    messages: list = []
    threads: list = []

    def auth(self, info, authzid, user, password):
        Recorder.threads.append(threading.current_thread().name)
        time.sleep(0.05)  # like a password hash: must not stall other connections
        return (user, password) == ("alice@example.test", "secret")

    def mail_from(self, info, tx, address):
        return None if info.auth_user else R.AUTH_REQUIRED

    def data(self, info, tx, message):
        Recorder.messages.append((info.tls, info.auth_user, tx.sender, list(tx.recipients), message))
        return R.QUEUED.with_text(f"Ok: queued as T{len(Recorder.messages)}")


class Server:
    def __init__(self, ssl_ctx, limits=None, max_connections=100):
        self.port, self.tls_port = free_port(), free_port()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def main():
            self.servers = await start_server(
                Recorder, [f"127.0.0.1:{self.port}"], [f"127.0.0.1:{self.tls_port}"] if ssl_ctx else [], ssl_ctx,
                hostname="mx.example.test", limits=limits or Limits(auth_fail_delay=0.2),
                max_connections=max_connections)
            ready.set()

        self.thread = threading.Thread(target=lambda: (self.loop.run_until_complete(main()), self.loop.run_forever()), daemon=True)
        self.thread.start()
        assert ready.wait(30)

    def stop(self):
        def _stop():
            shutdown(self.servers)
            self.loop.call_later(0.05, self.loop.stop)
        self.loop.call_soon_threadsafe(_stop)
        self.thread.join(5)


@pytest.fixture
def server(tls_ca):
    Recorder.messages.clear()
    s = Server(server_ssl_context(tls_ca.cert_file, tls_ca.key_file))
    yield s
    s.stop()


def client_ctx(tls_ca):
    return ssl.create_default_context(cafile=tls_ca.ca_file)


def test_parse_listen():
    assert parse_listen("127.0.0.1:587") == ("127.0.0.1", 587)
    assert parse_listen("[::1]:25") == ("::1", 25)
    assert parse_listen(":2525") == (None, 2525)
    with pytest.raises(ValueError):
        parse_listen("127.0.0.1:notaport")


def test_starttls_auth_and_send(server, tls_ca):
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as c:
        code, caps = c.ehlo("client.example.test")
        assert code == 250 and b"STARTTLS" in caps
        # loopback listener: AUTH is offered before TLS too
        assert c.has_extn("auth")
        c.starttls(context=client_ctx(tls_ca))
        c.ehlo("client.example.test")
        assert not c.has_extn("starttls")
        c.login("alice@example.test", "secret")
        refused = c.sendmail("alice@example.test", ["bob@example.test"], b"Subject: x\r\n\r\nhello\r\n")
        assert refused == {}
    tls, user, sender, rcpts, msg = Recorder.messages[-1]
    assert tls["version"].startswith("TLSv1.") and user == "alice@example.test"
    assert msg == b"Subject: x\r\n\r\nhello\r\n"
    # password checks ran in the executor, not on the event loop's thread
    assert Recorder.threads and all(t.startswith("smtpd-hook") for t in Recorder.threads)


def test_implicit_tls(server, tls_ca):
    with smtplib.SMTP_SSL("127.0.0.1", server.tls_port, context=client_ctx(tls_ca), timeout=10) as c:
        c.ehlo("client.example.test")
        assert not c.has_extn("starttls")
        with pytest.raises(smtplib.SMTPAuthenticationError) as exc:
            c.login("alice@example.test", "wrong")
        assert exc.value.smtp_code == 535 and b"5.7.8" in exc.value.smtp_error


def test_no_auth_530(server):
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as c:
        c.ehlo("c.example.test")
        with pytest.raises(smtplib.SMTPSenderRefused) as exc:
            c.sendmail("alice@example.test", ["b@example.test"], b"x\r\n")
        assert exc.value.smtp_code == 530


def _talk(port, data: bytes, wait_for: bytes, timeout=30.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        got = b""
        deadline = time.monotonic() + timeout
        while wait_for not in got and time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def test_smuggling_over_socket(server):
    plain = base64.b64encode(b"\0alice@example.test\0secret")
    script = (b"EHLO c\r\nAUTH PLAIN " + plain + b"\r\nMAIL FROM:<alice@example.test>\r\n"
              b"RCPT TO:<b@example.test>\r\nDATA\r\n")
    body = b"Subject: s\r\n\r\nx\n.\nMAIL FROM:<evil@example.test>\r\nRCPT TO:<v@example.test>\r\nDATA\r\n\r\n.\r\nQUIT\r\n"
    got = _talk(server.port, script + body, b"221 ")
    assert got.count(b"250 2.0.0 Ok: queued") == 1, got
    assert b"Sender ok" in got and got.count(b"Sender ok") == 1
    assert b"MAIL FROM:<evil@example.test>" in Recorder.messages[-1][4]


def test_pipelined_starttls_injection_discarded(server, tls_ca):
    # Commands sent in the clear right behind STARTTLS must never run inside TLS.
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    f = raw.makefile("rb")
    f.readline()
    raw.sendall(b"EHLO c\r\n")
    while not f.readline().startswith(b"250 "):
        pass
    raw.sendall(b"STARTTLS\r\nNOOP injected\r\n")
    assert f.readline().startswith(b"220 2.0.0")
    tls = client_ctx(tls_ca).wrap_socket(raw, server_hostname="localhost")
    tls.sendall(b"NOOP\r\n")
    reply = tls.recv(1000)
    assert reply == b"250 2.0.0 Ok\r\n", reply  # one reply: the injected NOOP never ran
    tls.close()


def test_connection_limit(tls_ca):
    s = Server(None, max_connections=2)
    try:
        a = socket.create_connection(("127.0.0.1", s.port), timeout=30)
        b = socket.create_connection(("127.0.0.1", s.port), timeout=30)
        assert a.recv(100).startswith(b"220") and b.recv(100).startswith(b"220")
        c = socket.create_connection(("127.0.0.1", s.port), timeout=30)
        assert c.recv(100).startswith(b"421 4.7.0")
        for x in (a, b, c):
            x.close()
    finally:
        s.stop()


def test_idle_timeout(tls_ca):
    s = Server(None, limits=Limits(command_timeout=0.3))
    try:
        c = socket.create_connection(("127.0.0.1", s.port), timeout=30)
        data = b""
        while True:
            chunk = c.recv(1000)
            if not chunk:
                break
            data += chunk
        assert b"421 4.4.2" in data
        c.close()
    finally:
        s.stop()


def test_failed_auth_delayed_without_blocking_others(tls_ca):
    # A second's delay: far longer than a loopback exchange, even on a loaded machine.
    server = Server(server_ssl_context(tls_ca.cert_file, tls_ca.key_file), limits=Limits(auth_fail_delay=1.0))
    try:
        plain_bad = base64.b64encode(b"\0alice@example.test\0wrong")
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as slow:
            slow.sendall(b"EHLO c\r\nAUTH PLAIN " + plain_bad + b"\r\n")
            # meanwhile another client is served: its answer comes before the 535 (a server
            # that waited out the delay blocked would have sent the 535 first)
            got = _talk(server.port, b"NOOP\r\n", b"250 2.0.0")
            assert b"250 2.0.0" in got
            slow.setblocking(False)
            try:
                buf = slow.recv(65536)  # what the slow client has by now
            except BlockingIOError:
                buf = b""
            slow.settimeout(30)
            assert b"535" not in buf, buf
            while b"535" not in buf:
                buf += slow.recv(1000)
        assert time.monotonic() - t0 >= 1.0
    finally:
        server.stop()


def test_bound_addresses(server):
    addrs = bound_addresses(server.servers)
    assert f"127.0.0.1:{server.port}" in addrs


def _starttls_then_first_command_in_one_segment(port, tls_ca, pipelined: bytes, first: bytes) -> bytes:
    """STARTTLS, then the client's TLS Finished and its first command in one TCP segment (as
    GnuTLS clients such as msmtp and mutt send them); returns the server's answer to it."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"EHLO c\r\n")
    while not f.readline().startswith(b"250 "):
        pass
    s.sendall(b"STARTTLS\r\n" + pipelined)
    assert f.readline().startswith(b"220 ")
    got = tls_first_command_with_finished(s, client_ctx(tls_ca), first)
    s.close()
    return got


def test_starttls_command_right_behind_the_handshake_is_answered(server, tls_ca):
    got = _starttls_then_first_command_in_one_segment(server.port, tls_ca, b"", b"EHLO c\r\n")
    assert got.startswith(b"250-mx.example.test"), got
    # plaintext pipelined behind STARTTLS is still dropped: the first answer over TLS is to the
    # NOOP sent over TLS, and there is exactly one
    got = _starttls_then_first_command_in_one_segment(server.port, tls_ca, b"HELP\r\n", b"NOOP\r\n")
    assert got == b"250 2.0.0 Ok\r\n", got
