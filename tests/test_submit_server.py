"""`mailtools submit --listen/--tls-listen` as a real process, with swaks and smtplib."""

from __future__ import annotations

import base64
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from conftest import free_port, mailtools_cmd, stop_proc, wait_port
from mailtools.core.auth import Users
from mailtools.core.queue import Queue

PLAIN_OK = base64.b64encode(b"\0alice@example.test\0secret")


class MSA:
    def __init__(self, home: Path, tls_ca, extra: str = ""):
        cfg = Path(str(home) + "/../mailtools.toml").resolve()
        cfg.write_text(cfg.read_text() + (
            f'[tls]\ncert = "{tls_ca.cert_file}"\nkey = "{tls_ca.key_file}"\n'
            f"[auth]\nfail_delay = 0.5\n{extra}"))
        self.home = home
        Users(home / "users").add("alice@example.test", "secret", scheme="BLF-CRYPT")
        Users(home / "users").add("bob@example.test", "bobpw", scheme="BLF-CRYPT")
        self.port, self.tls_port = free_port(), free_port()
        self.stderr = open(home / "msa.log", "wb")
        self.proc = subprocess.Popen(
            [*mailtools_cmd(), "submit", "--listen", f"127.0.0.1:{self.port}",
             "--tls-listen", f"127.0.0.1:{self.tls_port}"], stderr=self.stderr)
        wait_port(self.port, proc=self.proc)
        wait_port(self.tls_port, proc=self.proc)
        self.ctx = ssl.create_default_context(cafile=tls_ca.ca_file)

    def log(self) -> str:
        return (self.home / "msa.log").read_text()

    def entries(self):
        return Queue(self.home / "queue").entries() if (self.home / "queue").exists() else []

    def message(self, entry) -> bytes:
        return Queue(self.home / "queue").read_message(entry)

    def stop(self):
        stop_proc(self.proc, timeout=30)  # (a stop that is not clean within it: SIGKILL, rc -9)
        self.stderr.close()

    def client(self) -> smtplib.SMTP:
        c = smtplib.SMTP("127.0.0.1", self.port, timeout=10)
        c.ehlo("client.example.test")
        c.starttls(context=self.ctx)
        c.ehlo("client.example.test")
        return c


@pytest.fixture
def msa(home, tls_ca):
    m = MSA(home, tls_ca, "[submit]\nmax_message_size = 20000\nmax_recipients = 3\n")
    yield m
    m.stop()


@pytest.mark.skipif(not shutil.which("swaks"), reason="swaks not installed")
def test_swaks_starttls_auth_plain(msa, tls_ca):
    p = subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(msa.port), "--tls", "--tls-ca-path", tls_ca.ca_file,
         "--auth", "PLAIN", "--auth-user", "alice@example.test", "--auth-password", "secret",
         "--from", "alice@example.test", "--to", "bob@remote.test", "--helo", "client.example.test",
         "--header", "Subject: swaks test", "--body", "hello from swaks"],
        capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert re.search(r"<~\s+235 2\.7\.0", p.stdout)
    qid = re.search(r"<~\s+250 2\.0\.0 Ok: queued as (\w+)", p.stdout).group(1)
    [e] = msa.entries()
    assert e.id == qid and e.sender == "alice@example.test"
    assert [r.address for r in e.recipients] == ["bob@remote.test"]
    data = msa.message(e)
    first = data.split(b"\r\n\r\n", 1)[0].decode()
    assert first.startswith("Received: from client.example.test ([127.0.0.1])")
    assert f"with ESMTPSA id {qid}" in first and "using TLSv1." in first
    assert "authenticated sender: alice@example.test" in first
    assert b"hello from swaks" in data
    assert re.search(rf"submit\[\d+\]: {qid}: client=unknown\[127\.0\.0\.1\], sasl_username=alice@example.test, "
                     rf"from=<alice@example.test>, size=\d+, nrcpt=1", msa.log())


@pytest.mark.skipif(not shutil.which("swaks"), reason="swaks not installed")
def test_swaks_wrong_password_535_and_logged(msa, tls_ca):
    t0 = time.monotonic()
    p = subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(msa.port), "--tls", "--tls-ca-path", tls_ca.ca_file,
         "--auth", "PLAIN", "--auth-user", "alice@example.test", "--auth-password", "wrong",
         "--from", "alice@example.test", "--to", "bob@remote.test"],
        capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    assert re.search(r"<~\*\s+535 5\.7\.8", p.stdout), p.stdout
    assert time.monotonic() - t0 >= 0.5  # the failure was delayed
    assert "SASL authentication failed: user=<alice@example.test>" in msa.log()
    assert msa.entries() == []


def test_smtplib_flow_and_fixups(msa):
    with msa.client() as c:
        c.login("alice@example.test", "secret")
        c.sendmail("alice@example.test", ["x@remote.test", "y@remote.test"],
                   b"Subject: no date\r\nBcc: z@remote.test\r\n\r\nbody\r\n")
    [e] = msa.entries()
    data = msa.message(e)
    assert b"\r\nDate: " in data and b"\r\nMessage-ID: <" in data
    assert b"\r\nFrom: alice@example.test\r\n" in data and b"Bcc" not in data


def test_smtplib_wrong_password(msa):
    with msa.client() as c:
        with pytest.raises(smtplib.SMTPAuthenticationError) as exc:
            c.login("alice@example.test", "nope")
        assert exc.value.smtp_code == 535 and exc.value.smtp_error.startswith(b"5.7.8")


def test_no_auth_530(msa):
    with msa.client() as c:
        with pytest.raises(smtplib.SMTPSenderRefused) as exc:
            c.sendmail("alice@example.test", ["x@remote.test"], b"Subject: x\r\n\r\nx\r\n")
        assert exc.value.smtp_code == 530 and exc.value.smtp_error.startswith(b"5.7.0")
    assert msa.entries() == []


def test_someone_elses_sender_553(msa):
    with msa.client() as c:
        c.login("alice@example.test", "secret")
        with pytest.raises(smtplib.SMTPSenderRefused) as exc:
            c.sendmail("bob@example.test", ["x@remote.test"], b"Subject: x\r\n\r\nx\r\n")
        assert exc.value.smtp_code == 553 and exc.value.smtp_error.startswith(b"5.7.1")
        # the envelope is hers, the From header is not
        with pytest.raises(smtplib.SMTPDataError) as exc:
            c.sendmail("alice+tag@example.test", ["x@remote.test"], b"From: bob@example.test\r\n\r\nx\r\n")
        assert exc.value.smtp_code == 553
        c.sendmail("Alice+lists@Example.TEST", ["x@remote.test"], b"From: Alice <alice@example.test>\r\n\r\nx\r\n")
    assert len(msa.entries()) == 1


def test_implicit_tls_login_plain(msa):
    with smtplib.SMTP_SSL("127.0.0.1", msa.tls_port, context=msa.ctx, timeout=10) as c:
        c.ehlo("client.example.test")
        assert not c.has_extn("starttls") and "PLAIN" in c.esmtp_features["auth"]
        c.login("bob@example.test", "bobpw")
        c.sendmail("bob@example.test", ["x@remote.test"], b"Subject: 465\r\n\r\nx\r\n")
    [e] = msa.entries()
    assert b"with ESMTPSA" in msa.message(e)


def test_ehlo_advertises(msa):
    with smtplib.SMTP("127.0.0.1", msa.port, timeout=10) as c:
        c.ehlo("c.example.test")
        for ext in ("size", "8bitmime", "smtputf8", "pipelining", "enhancedstatuscodes", "starttls"):
            assert c.has_extn(ext), ext
        assert c.esmtp_features["size"] == "20000"


def _recv_until(s, marker: bytes, timeout=10) -> bytes:
    s.settimeout(timeout)
    data = b""
    while marker not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_pipelined_before_starttls_is_discarded(msa):
    raw = socket.create_connection(("127.0.0.1", msa.port), timeout=10)
    _recv_until(raw, b"220 ")
    raw.sendall(b"EHLO c\r\n")
    _recv_until(raw, b"250 ")
    raw.sendall(b"STARTTLS\r\nAUTH PLAIN " + PLAIN_OK + b"\r\nMAIL FROM:<alice@example.test>\r\n")
    assert _recv_until(raw, b"\r\n").startswith(b"220 2.0.0")
    tls = msa.ctx.wrap_socket(raw, server_hostname="localhost")
    tls.sendall(b"EHLO c\r\n")
    ehlo = _recv_until(tls, b"250 ")
    assert b"AUTH PLAIN LOGIN" in ehlo
    tls.sendall(b"MAIL FROM:<alice@example.test>\r\n")
    assert _recv_until(tls, b"\r\n").startswith(b"530 5.7.0")  # the pipelined AUTH never ran
    tls.close()


def test_bare_lf_dot_does_not_end_data(msa):
    raw = socket.create_connection(("127.0.0.1", msa.port), timeout=10)
    _recv_until(raw, b"220 ")
    tls_ok = raw
    tls_ok.sendall(b"EHLO c\r\nAUTH PLAIN " + PLAIN_OK + b"\r\n")
    assert b"235 2.7.0" in _recv_until(tls_ok, b"235 ")
    tls_ok.sendall(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<x@remote.test>\r\nDATA\r\n")
    assert b"354" in _recv_until(tls_ok, b"354 ")
    tls_ok.sendall(b"Subject: smuggle\r\n\r\nx\n.\nMAIL FROM:<alice@example.test>\nRCPT TO:<victim@remote.test>\n"
                   b"DATA\nSubject: smuggled\n\nevil\n.\n")
    time.sleep(0.3)
    tls_ok.sendall(b"\r\n.\r\nQUIT\r\n")
    out = _recv_until(tls_ok, b"221 ")
    assert out.count(b"queued as") == 1
    [e] = msa.entries()
    assert [r.address for r in e.recipients] == ["x@remote.test"]
    assert b"\nRCPT TO:<victim@remote.test>\n" in msa.message(e)


def test_oversize_refused(msa):
    with msa.client() as c:
        c.login("alice@example.test", "secret")
        code, msg = c.docmd("MAIL FROM:<alice@example.test> SIZE=20001")
        assert (code, msg[:5]) == (552, b"5.3.4")
        c.rset()
        # no SIZE parameter: the limit is enforced on the data itself
        assert c.docmd("MAIL FROM:<alice@example.test>")[0] == 250
        assert c.rcpt("x@remote.test")[0] == 250
        code, msg = c.data(b"Subject: big\r\n\r\n" + (b"y" * 70 + b"\r\n") * 300)
        assert (code, msg[:5]) == (552, b"5.3.4")
        code, _ = c.noop()
        assert code == 250  # the session goes on
    assert msa.entries() == []


def test_too_many_recipients(msa):
    with msa.client() as c:
        c.login("alice@example.test", "secret")
        c.mail("alice@example.test")
        for i in range(3):
            assert c.rcpt(f"r{i}@remote.test")[0] == 250
        code, msg = c.rcpt("r3@remote.test")
        assert (code, msg[:5]) == (452, b"4.5.3")


def test_sigterm_stops_cleanly(home, tls_ca):
    m = MSA(home, tls_ca)
    m.stop()
    assert m.proc.returncode == 0
    assert "listening on 127.0.0.1:" in m.log()


def test_bd_uses_the_configured_listeners(home, tls_ca):
    port = free_port()
    cfg = Path(str(home) + "/../mailtools.toml").resolve()
    cfg.write_text(cfg.read_text() + f'[submit]\nlisten = ["127.0.0.1:{port}"]\n')
    proc = subprocess.Popen([*mailtools_cmd(), "submit", "-bd"], stderr=subprocess.PIPE)
    try:
        wait_port(port, proc=proc)
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
            assert c.ehlo("c.example.test")[0] == 250 and not c.has_extn("starttls")
    finally:
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=30)[1].decode()
    assert proc.returncode == 0 and f"listening on 127.0.0.1:{port}" in err
    assert "warning: no [tls] cert" in err


@pytest.mark.skipif(not shutil.which("swaks"), reason="swaks not installed")
def test_swaks_implicit_tls_auth_login_pipelined(msa, tls_ca):
    p = subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(msa.tls_port), "--tlsc", "--tls-ca-path", tls_ca.ca_file,
         "--auth", "LOGIN", "--auth-user", "bob@example.test", "--auth-password", "bobpw", "--pipeline",
         "--from", "bob@example.test", "--to", "a@remote.test,b@remote.test", "--helo", "client.example.test"],
        capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    [e] = msa.entries()
    assert [r.address for r in e.recipients] == ["a@remote.test", "b@remote.test"]
    assert b"with ESMTPSA" in msa.message(e)


# --- the From check's quick path (msa.from_values) equals get_header ---------------------------
from hypothesis import given, settings, strategies as st  # noqa: E402

from mailtools.core.message import get_header, split_header  # noqa: E402
from mailtools.submit.msa import from_values  # noqa: E402

_PIECES = [b"From", b"from", b"FROM ", b"From\t", b"Fr om", b"To", b"X", b"", b" ", b"\t", b":",
           b"\r", b"\n", b"\r\n", b"a@b", b"<c@d>", b"\xc3\xa9", b"\x7f", b"\x00", b"From:",
           b"\r\n\r\n", b"\n\n"]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=14))
def test_from_values_equals_get_header(pieces):
    header, _ = split_header(b"".join(pieces))
    assert from_values(header) == get_header(header, "From")
