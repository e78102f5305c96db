"""relay through a smarthost (the dma/nullmailer use): AUTH over verified TLS, against a local
aiosmtpd server with the trustme certificate; plus the client's implicit TLS and TLS record."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import free_port, mailtools_cmd  # noqa: E402

aiosmtpd = pytest.importorskip("aiosmtpd")
from aiosmtpd.controller import Controller  # noqa: E402
from aiosmtpd.smtp import AuthResult, LoginPassword  # noqa: E402


class Recorder:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append({
            "sender": envelope.mail_from, "rcpts": list(envelope.rcpt_tos),
            "data": envelope.original_content or envelope.content,
            "auth": session.authenticated, "tls": session.ssl is not None,
        })
        return "250 2.0.0 OK queued"


def _auth(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (b"relayuser", b"s3cret pw")
    return AuthResult(success=ok, handled=False)


def _server_ctx(tls_ca):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls_ca.cert_file, tls_ca.key_file)
    return ctx


@pytest.fixture
def smarthost(tls_ca):
    rec = Recorder()
    port = free_port()
    c = Controller(rec, hostname="127.0.0.1", port=port, tls_context=_server_ctx(tls_ca),
                   require_starttls=True, authenticator=_auth, auth_require_tls=True,
                   server_hostname="localhost")
    c.start()
    rec.port = port
    yield rec
    c.stop()


def _setup(tmp_path, extra_auth, ca_file=None):
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    (tmp_path / "pw").write_text("s3cret pw\n")
    cfg = tmp_path / "mailtools.toml"
    ca = f'ca_file = "{ca_file}"\n' if ca_file else ""
    cfg.write_text(
        f'hostname = "laptop.example.test"\nroot = "{root}"\nlocal_domains = ["example.test"]\n'
        f'[dns]\nnameservers = ["127.0.0.1:9"]\ntimeout = 1\n'  # never used: smarthost mode
        f'[relay]\nlisten = []\nretry = ["1s"]\n{ca}[relay.auth]\nusername = "relayuser"\n{extra_auth}\n'
    )
    from mailtools.core.queue import Queue

    q = Queue(root / "queue")
    return cfg, q


def _run(cfg, *args):
    return subprocess.run([*mailtools_cmd(), "relay", *args], capture_output=True, timeout=60,
                          env={**os.environ, "MAILTOOLS_CONFIG": str(cfg)})


def test_smarthost_auth_over_verified_tls(tmp_path, smarthost, tls_ca):
    cfg, q = _setup(tmp_path, f'password_file = "{tmp_path / "pw"}"', tls_ca.ca_file)
    q.enqueue("me@example.test", ["friend@far.invalid", "other@else.invalid"], b"Subject: via smarthost\r\n\r\nhi\r\n")
    r = _run(cfg, "--once", "--smarthost", f"localhost:{smarthost.port}")
    assert r.returncode == 0, r.stderr
    assert len(smarthost.messages) == 1, r.stderr.decode()
    m = smarthost.messages[0]
    assert m["auth"] and m["tls"]
    assert m["sender"] == "me@example.test"
    assert sorted(m["rcpts"]) == ["friend@far.invalid", "other@else.invalid"]
    assert b"by laptop.example.test (mailtools relay)" in m["data"]
    assert "status=sent" in r.stderr.decode() and q.entries() == []


def test_smarthost_from_config_wrong_password_defers(tmp_path, smarthost, tls_ca):
    cfg, q = _setup(tmp_path, 'password = "wrong"', tls_ca.ca_file)
    cfg.write_text(cfg.read_text().replace("[relay]\n", f'[relay]\nsmarthost = "127.0.0.1:{smarthost.port}"\n'))
    q.enqueue("me@example.test", ["friend@far.invalid"], b"Subject: x\r\n\r\nhi\r\n")
    r = _run(cfg, "--once")
    assert "status=deferred" in r.stderr.decode() and "authentication failed" in r.stderr.decode()
    assert smarthost.messages == []
    (e,) = q.entries()
    assert e.recipients[0].state == "deferred"


def test_smarthost_untrusted_certificate_defers(tmp_path, smarthost):
    cfg, q = _setup(tmp_path, 'password = "s3cret pw"')  # no ca_file: the trustme CA is unknown
    q.enqueue("me@example.test", ["friend@far.invalid"], b"Subject: x\r\n\r\nhi\r\n")
    r = _run(cfg, "--once", "--smarthost", f"127.0.0.1:{smarthost.port}")
    assert "status=deferred" in r.stderr.decode() and "CERTIFICATE_VERIFY_FAILED" in r.stderr.decode()
    assert smarthost.messages == []


def test_client_implicit_tls_and_tls_record(tls_ca):
    """The client's implicit TLS (port 465 style) and what it records about the certificate."""
    from mailtools.relay import client

    rec = Recorder()
    port = free_port()
    # aiosmtpd does not count implicit TLS as TLS for AUTH: the socket is TLS all the same
    c = Controller(rec, hostname="127.0.0.1", port=port, ssl_context=_server_ctx(tls_ca),
                   authenticator=_auth, auth_require_tls=False, server_hostname="localhost")
    c.start()
    try:
        async def go():
            cc = client.ClientConfig(helo="laptop.example.test", implicit_tls=True, tls="required",
                                     verify=False, ca_file=tls_ca.ca_file, username="relayuser",
                                     password="s3cret pw")
            conn = client.SMTPConnection(cc)
            await conn.open("localhost", "127.0.0.1", port)
            res = await conn.send("a@example.test", ["b@far.invalid"], client.prepare_data(b"Subject: t\n\nx\n"))
            await conn.quit()
            return conn, res

        conn, res = asyncio.run(go())
        assert res.outcome(0).ok
        assert conn.tls is not None and conn.tls.version.startswith("TLSv1.")
        assert conn.tls.verified, conn.tls.verify_error  # recorded: the chain checks out via ca_file
        assert rec.messages and rec.messages[0]["auth"]
    finally:
        c.stop()
