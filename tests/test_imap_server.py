"""The asyncio transport (mailtools.imap.server) hosted in this process, so its timers can be
shortened: the timeout of a client that never logs in, the connection limit, and a big FETCH
over TLS to a client that reads slowly (flow control: the paused command resumes as the
client drains)."""

from __future__ import annotations

import asyncio
import imaplib
import re
import socket
import ssl
import threading
import time

import pytest

from conftest import free_port
from support_net import wait_for
from imap_helpers import PASSWORD, deliver, make_root, message
from mailtools.imap import server


@pytest.fixture
def inproc(tmp_path, tls_ca):
    from mailtools.core import config

    root = make_root(tmp_path, extra=f'[tls]\ncert = "{tls_ca.cert_file}"\nkey = "{tls_ca.key_file}"\n'
                                     "[imap]\nmax_connections = 3\n")
    body = "".join(f"line {i} of a message of about 160 KB\n" for i in range(4000))
    for i in range(30):
        deliver(root, message(i + 1, body=body))
    cfg = config.load(str(tmp_path / "mailtools.toml"), reload=True)
    plain, tls = free_port(), free_port()
    loop = asyncio.new_event_loop()
    servers = loop.run_until_complete(server.start(cfg, [f"127.0.0.1:{plain}"], [f"127.0.0.1:{tls}"]))
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()

    class S:
        pass

    s = S()
    s.port, s.tls_port = plain, tls
    s.ctx = ssl.create_default_context(cafile=tls_ca.ca_file)
    yield s

    async def stop():
        for sv in servers:
            sv.close()
            await sv.wait_closed()

    asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    t.join(10)


def _take(port: int):
    """A new connection (socket, its file) once the server has a free slot for it: a closed
    connection's slot is free when the server has noticed the close, soon but not at once."""

    def attempt():
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        f = s.makefile("rb")
        line = f.readline()
        if line.startswith(b"* OK"):
            return s, f
        assert line.startswith(b"* BYE [UNAVAILABLE]"), line
        f.close()
        s.close()
        return None

    return wait_for(attempt, what="a free connection slot")


def test_silent_client_is_logged_out_and_limit_holds(inproc, monkeypatch):
    # The limit, with logged-in clients: silent ones could be logged out before the extra
    # connection arrives on a slow machine, and a short COMMAND_TIMEOUT could log out a client
    # still on its way to LOGIN.
    clients = [imaplib.IMAP4("127.0.0.1", inproc.port, timeout=30) for _ in range(3)]
    for c in clients:
        assert c.login("alice@example.test", PASSWORD)[0] == "OK"
    extra = socket.create_connection(("127.0.0.1", inproc.port), timeout=10)
    assert extra.makefile("rb").readline().startswith(b"* BYE [UNAVAILABLE]")
    extra.close()
    clients.pop().logout()
    # never logging in: BYE once COMMAND_TIMEOUT has passed, then the connection is closed
    monkeypatch.setattr(server, "COMMAND_TIMEOUT", 0.5)
    silent, f = _take(inproc.port)
    assert f.readline() == b"* BYE Autologout; idle for too long\r\n"
    assert f.readline() == b""
    silent.close()
    monkeypatch.setattr(server, "COMMAND_TIMEOUT", 300.0)
    for c in clients:
        c.logout()
    # the closed connections' slots are taken again
    conns = [_take(inproc.port) for _ in range(3)]
    s, f = conns[0]
    s.sendall(f'a LOGIN alice@example.test "{PASSWORD}"\r\n'.encode())
    while not (line := f.readline()).startswith(b"a "):
        assert line.startswith(b"* "), line
    assert line.startswith(b"a OK"), line
    for s, f in conns:
        s.close()


def test_big_fetch_to_a_slow_tls_reader(inproc):
    c = imaplib.IMAP4_SSL("127.0.0.1", inproc.tls_port, ssl_context=inproc.ctx)
    c.login("alice@example.test", PASSWORD)
    c.select("INBOX")
    sizes = [int(x.split()[-1].rstrip(b")")) for x in c.fetch("1:*", "(RFC822.SIZE)")[1]]
    other = imaplib.IMAP4_SSL("127.0.0.1", inproc.tls_port, ssl_context=inproc.ctx)
    other.login("alice@example.test", PASSWORD)
    c.send(b"f1 FETCH 1:* (BODY.PEEK[])\r\n")  # about 5 MB; read nothing for now
    time.sleep(0.3)
    assert other.noop()[0] == "OK"  # the stalled FETCH holds up nobody else
    other.logout()
    got = b""
    while not got.endswith(b"f1 OK FETCH completed\r\n"):
        chunk = c.sock.recv(65536)
        assert chunk
        got += chunk
        time.sleep(0.001)
    assert [int(n) for n in re.findall(rb"\* \d+ FETCH \(BODY\[\] \{(\d+)\}\r\n", got)] == sizes
    assert len(sizes) == 30
    assert c.noop()[0] == "OK"
    c.logout()
