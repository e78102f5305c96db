"""Shared fixtures: a private data root and config per test, free loopback ports, and running
the real `mailtools` program as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from support_net import free_port, stop_proc, wait_port  # noqa: F401 - tests import them from here

REPO = Path(__file__).resolve().parent.parent


def mailtools_cmd() -> list[str]:
    return [sys.executable, "-m", "mailtools"]


def slow_login(users_file: Path, user: str) -> bytes:
    """Add `user` with a bcrypt hash of cost 15 (a login takes seconds: long enough to stop a
    server in the middle of it) and return the AUTH PLAIN command line that logs it in."""
    import base64

    import bcrypt

    slow = bcrypt.hashpw(b"slowpw", bcrypt.gensalt(15, b"2b")).decode()
    with open(users_file, "a") as f:
        f.write(f"{user}:{{BLF-CRYPT}}$2y${slow[4:]}::::::\n")
    return b"AUTH PLAIN " + base64.b64encode(b"\0" + user.encode() + b"\0slowpw") + b"\r\n"


def submit_pipelined(home: Path, commands: bytes) -> bytes:
    """Everything `submit --listen --workers 1` answers to EHLO, AUTH PLAIN as alice (added to
    the users file) and then `commands`, all sent at once; the server stopped afterwards."""
    import base64
    import socket

    from mailtools.core.auth import Users

    Users(home / "users").add("alice@example.test", "secret", scheme="BLF-CRYPT")
    port = free_port()
    proc = subprocess.Popen([*mailtools_cmd(), "submit", "--listen", f"127.0.0.1:{port}",
                             "--workers", "1"], stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc=proc)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            f = s.makefile("rb")
            s.sendall(b"EHLO client.example.test\r\nAUTH PLAIN "
                      + base64.b64encode(b"\0alice@example.test\0secret") + b"\r\n" + commands)
            return f.read()
    finally:
        stop_proc(proc, timeout=30)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh data root and config file; MAILTOOLS_CONFIG points at it for subprocesses."""
    root = tmp_path / "root"
    root.mkdir()
    cfg = tmp_path / "mailtools.toml"
    cfg.write_text(
        f'hostname = "mx.example.test"\nroot = "{root}"\nlocal_domains = ["example.test"]\n'
    )
    monkeypatch.setenv("MAILTOOLS_CONFIG", str(cfg))
    monkeypatch.setenv("MAILTOOLS_HOME", str(root))
    from mailtools.core import config

    config.set_path(None)
    return root


@pytest.fixture
def run():
    """Run `mailtools ARGS...` as a real process; returns CompletedProcess (bytes)."""

    def _run(*args, input=b"", env=None, timeout=60, **kw):
        e = dict(os.environ)
        if env:
            e.update(env)
        return subprocess.run(
            [*mailtools_cmd(), *map(str, args)],
            input=input,
            capture_output=True,
            env=e,
            timeout=timeout,
            **kw,
        )

    return _run


@pytest.fixture(scope="session")
def tls_ca(tmp_path_factory):
    """A trustme CA and a server certificate for localhost / 127.0.0.1 / mx.example.test.

    Returns an object with .ca (trustme.CA), .cert_file, .key_file, .ca_file (paths as str).
    """
    import trustme

    d = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1", "mx.example.test", "smtp.example.test")
    cert_file, key_file, ca_file = d / "cert.pem", d / "key.pem", d / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))

    class TLS:
        pass

    t = TLS()
    t.ca, t.cert_file, t.key_file, t.ca_file = ca, str(cert_file), str(key_file), str(ca_file)
    return t


def tls_first_command_with_finished(s, ctx, first: bytes, server_hostname="localhost") -> bytes:
    """On a connected socket whose server just agreed to STARTTLS/STLS: the TLS handshake, then
    the client's Finished and FIRST in one TCP segment, as GnuTLS clients (msmtp, mutt) send
    them. Returns the server's answer to FIRST up to its first CRLF (b"" if none came)."""
    import ssl

    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            if outgoing.pending:
                s.sendall(outgoing.read())
            incoming.write(s.recv(65536))
    tls.write(first)
    s.sendall(outgoing.read())  # Finished + command together
    got = b""
    try:
        while b"\r\n" not in got:
            data = s.recv(65536)
            if not data:
                break
            incoming.write(data)
            try:
                got += tls.read(65536)
            except ssl.SSLWantReadError:
                pass
    except OSError:  # socket.timeout: nothing came
        pass
    return got
