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
from imap_helpers import PASSWORD, deliver, make_root, message
from mailtools.imap import server


@pytest.fixture
def inproc(tmp_path, tls_ca, monkeypatch):
    from mailtools.core import config

    root = make_root(tmp_path, extra=f'[tls]\ncert = "{tls_ca.cert_file}"\nkey = "{tls_ca.key_file}"\n'
                                     "[imap]\nmax_connections = 3\n")
    body = "".join(f"line {i} of a message of about 160 KB\n" for i in range(4000))
    for i in range(30):
        deliver(root, message(i + 1, body=body))
    cfg = config.load(str(tmp_path / "mailtools.toml"), reload=True)
    monkeypatch.setattr(server, "COMMAND_TIMEOUT", 0.5)
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


def test_silent_client_is_logged_out_and_limit_holds(inproc):
    conns = [socket.create_connection(("127.0.0.1", inproc.port), timeout=10) for _ in range(3)]
    files = [c.makefile("rb") for c in conns]
    for f in files:
        assert f.readline().startswith(b"* OK")
    extra = socket.create_connection(("127.0.0.1", inproc.port), timeout=10)
    assert extra.makefile("rb").readline().startswith(b"* BYE [UNAVAILABLE]")
    extra.close()
    # never logging in: BYE once COMMAND_TIMEOUT has passed, then the connection is closed
    assert files[0].readline() == b"* BYE Autologout; idle for too long\r\n"
    assert files[0].readline() == b""
    for c in conns:
        c.close()
    time.sleep(0.2)  # the server notices the closed connections: a new one is taken
    c = imaplib.IMAP4("127.0.0.1", inproc.port)
    assert c.login("alice@example.test", PASSWORD)[0] == "OK"
    c.logout()


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
