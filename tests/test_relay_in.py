"""relay, inbound: the real `mailtools relay --listen` with real senders (swaks, smtplib, raw
sockets) on loopback, delivering into Maildirs."""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import support_dns  # noqa: E402
from conftest import free_port, mailtools_cmd, wait_port  # noqa: E402

SWAKS = shutil.which("swaks")


@pytest.fixture(scope="module")
def dns():
    if not os.path.exists(support_dns.DNSMASQ):
        pytest.skip("needs dnsmasq")
    with support_dns.start_dnsmasq(
        mx={"sender.test": [(10, "mx.sender.test")]},
        hosts={"mx.sender.test": ["192.0.2.1"]},
        null_mx=["nomail.test"],
    ) as server:
        yield server


class Listener:
    def __init__(self, tmp_path: Path, dns, tls_ca=None, users=True):
        self.root = tmp_path / "root"
        self.root.mkdir()
        self.port = free_port()
        self.cfgfile = tmp_path / "mailtools.toml"
        tls = f'[tls]\ncert = "{tls_ca.cert_file}"\nkey = "{tls_ca.key_file}"\n' if tls_ca else ""
        self.cfgfile.write_text(
            f'hostname = "mx.example.test"\nroot = "{self.root}"\nlocal_domains = ["example.test"]\n'
            f'{dns.toml()}\n{tls}\n[relay]\nlisten = ["127.0.0.1:{self.port}"]\nmax_recipients = 5\n'
            f"max_message_size = 100000\n"
        )
        if users:
            from mailtools.core.auth import Users

            u = Users(self.root / "users")
            u.add("bob@example.test", "secret-pw-1")
            u.add("carol@example.test", "secret-pw-2")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([*mailtools_cmd(), "relay", "--listen", f"127.0.0.1:{self.port}"],
                                     env={**os.environ, "MAILTOOLS_CONFIG": str(self.cfgfile)},
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_port(self.port, proc=self.proc)
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.communicate()

    def new(self, user: str) -> list:
        local, domain = user.split("@")
        d = self.root / "mail" / domain / local / "new"
        return sorted(d.iterdir()) if d.is_dir() else []


@pytest.fixture
def mx(tmp_path, dns):
    lst = Listener(tmp_path, dns).start()
    yield lst
    lst.stop()


@pytest.mark.skipif(not SWAKS, reason="needs swaks")
def test_swaks_delivers_into_the_maildir(mx):
    r = subprocess.run([SWAKS, "--server", f"127.0.0.1:{mx.port}", "--from", "someone@sender.test",
                        "--to", "bob@example.test", "--pipeline", "--body", "hi there\n.dot line",
                        "--header", "Subject: inbound"], capture_output=True, timeout=30)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    (f,) = mx.new("bob@example.test")
    data = f.read_bytes()
    assert data.startswith(b"Return-Path: <someone@sender.test>\nDelivered-To: bob@example.test\nReceived: from ")
    assert b"by mx.example.test (mailtools) with ESMTP" in data and b"for <bob@example.test>" in data
    assert b"Subject: inbound" in data and b"\n.dot line" in data
    assert b"\r" not in data  # stored with LF line ends, like Postfix virtual / Dovecot


def test_capabilities_and_refusals(mx):
    with smtplib.SMTP("127.0.0.1", mx.port, timeout=10) as s:
        code, text = s.ehlo("client.sender.test")
        caps = text.decode().upper()
        for ext in ("PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"):
            assert ext in caps
        assert "AUTH" not in caps
        assert s.mail("someone@sender.test")[0] == 250
        # open relay attempt
        code, text = s.rcpt("victim@elsewhere.invalid")
        assert (code, text[:5]) == (554, b"5.7.1")
        code, text = s.rcpt("nobody@example.test")
        assert (code, text[:5]) == (550, b"5.1.1")
        assert s.rcpt("bob@example.test")[0] == 250
        s.rset()
        code, text = s.mail("not an address")
        assert code == 501
        code, text = s.mail("x@bad..domain")
        assert (code, text[:5]) == (501, b"5.1.7")
    assert mx.new("bob@example.test") == []


def test_null_mx_sender_refused(mx):
    with smtplib.SMTP("127.0.0.1", mx.port, timeout=10) as s:
        s.ehlo("client")
        with pytest.raises(smtplib.SMTPDataError) as exc:
            s.sendmail("x@nomail.test", ["bob@example.test"], b"Subject: x\r\n\r\nbody\r\n")
        assert exc.value.smtp_code == 550 and b"5.7.27" in exc.value.smtp_error
    assert mx.new("bob@example.test") == []


def test_multi_recipient_and_limits(mx):
    with smtplib.SMTP("127.0.0.1", mx.port, timeout=10) as s:
        refused = s.sendmail("", ["bob@example.test", "carol@example.test", "zed@example.test"],
                            b"Subject: two\r\n\r\nbody\r\n")
        assert list(refused) == ["zed@example.test"]
        with pytest.raises(smtplib.SMTPSenderRefused) as exc:
            s.sendmail("a@sender.test", ["bob@example.test"], b"x" * 200000)
        assert exc.value.smtp_code == 552
    assert len(mx.new("bob@example.test")) == 1 and len(mx.new("carol@example.test")) == 1
    assert mx.new("bob@example.test")[0].read_bytes().startswith(b"Return-Path: <>\n")


def _raw(port: int):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    f = s.makefile("rb")

    def reply():
        lines = []
        while True:
            line = f.readline()
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                return b"".join(lines)

    return s, f, reply


def test_smuggling_attempt_yields_one_message(mx):
    s, f, reply = _raw(mx.port)
    assert reply().startswith(b"220")
    s.sendall(b"EHLO attacker.sender.test\r\n")
    reply()
    s.sendall(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
    assert reply().startswith(b"250") and reply().startswith(b"250") and reply().startswith(b"354")
    # CVE-2023-51764 family: <LF>.<LF> and <LF>.<CRLF> must not end the message
    s.sendall(b"Subject: first\r\n\r\nhello\n.\nMAIL FROM:<evil@sender.test>\r\nRCPT TO:<carol@example.test>\r\n"
              b"DATA\r\nSubject: smuggled\r\n\r\nx\r\n\n.\r\nstill first\r\n.\r\n")
    assert reply().startswith(b"250")
    s.sendall(b"QUIT\r\n")
    reply()
    s.close()
    (m,) = mx.new("bob@example.test")
    body = m.read_bytes()
    assert b"Subject: smuggled" in body and b"still first" in body
    assert mx.new("carol@example.test") == []


def test_starttls_injection_discarded(tmp_path, dns, tls_ca):
    lst = Listener(tmp_path, dns, tls_ca=tls_ca).start()
    try:
        s, f, reply = _raw(lst.port)
        reply()
        s.sendall(b"EHLO client\r\n")
        assert b"STARTTLS" in reply()
        # CVE-2011-0411 family: a command pipelined after STARTTLS in the clear must be dropped
        s.sendall(b"STARTTLS\r\nMAIL FROM:<injected@sender.test>\r\n")
        assert reply().startswith(b"220")
        ctx = ssl.create_default_context(cafile=tls_ca.ca_file)
        t = ctx.wrap_socket(s, server_hostname="localhost")
        t.sendall(b"EHLO client\r\n")
        tf = t.makefile("rb")
        first = tf.readline()
        assert first.startswith(b"250-"), first  # the EHLO reply, not an answer to the injected MAIL
        while True:
            line = tf.readline()
            if line[3:4] == b" ":
                break
        t.sendall(b"RCPT TO:<bob@example.test>\r\n")
        assert tf.readline().startswith(b"503")  # no MAIL transaction survived the handshake
        t.sendall(b"MAIL FROM:<a@sender.test>\r\n")
        assert tf.readline().startswith(b"250")
        t.sendall(b"RCPT TO:<bob@example.test>\r\nDATA\r\n")
        assert tf.readline().startswith(b"250") and tf.readline().startswith(b"354")
        t.sendall(b"Subject: tls\r\n\r\nsecret\r\n.\r\nQUIT\r\n")
        assert tf.readline().startswith(b"250")
        t.close()
        (m,) = lst.new("bob@example.test")
        assert b"with ESMTPS" in m.read_bytes() and b"using TLSv1." in m.read_bytes()
    finally:
        lst.stop()


def test_sigkill_right_after_250_keeps_the_message(mx):
    s, f, reply = _raw(mx.port)
    reply()
    s.sendall(b"EHLO client\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
    for _ in range(4):
        reply()
    s.sendall(b"Subject: durable\r\n\r\nkeep me\r\n.\r\n")
    assert reply().startswith(b"250")
    os.kill(mx.proc.pid, signal.SIGKILL)
    mx.proc.wait()
    s.close()
    (m,) = mx.new("bob@example.test")
    assert b"keep me" in m.read_bytes()
    tmp = mx.root / "mail" / "example.test" / "bob" / "tmp"
    assert list(tmp.iterdir()) == []


def test_unwritable_maildir_gives_451_and_nothing_half_written(mx):
    box = mx.root / "mail" / "example.test" / "bob"
    for sub in ("cur", "tmp"):
        (box / sub).mkdir(parents=True, exist_ok=True)
    (box / "new").write_text("not a directory")
    with smtplib.SMTP("127.0.0.1", mx.port, timeout=10) as s:
        with pytest.raises(smtplib.SMTPDataError) as exc:
            s.sendmail("a@sender.test", ["bob@example.test"], b"Subject: x\r\n\r\nbody\r\n")
        assert exc.value.smtp_code == 451 and exc.value.smtp_error.startswith(b"4.3.0")
    assert list((box / "tmp").iterdir()) == [] and list((box / "cur").iterdir()) == []


def test_partial_failure_queues_the_rest(mx):
    box = mx.root / "mail" / "example.test" / "carol"
    for sub in ("cur", "tmp"):
        (box / sub).mkdir(parents=True, exist_ok=True)
    (box / "new").write_text("not a directory")
    with smtplib.SMTP("127.0.0.1", mx.port, timeout=10) as s:
        assert s.sendmail("a@sender.test", ["bob@example.test", "carol@example.test"], b"Subject: p\r\n\r\nb\r\n") == {}
    assert len(mx.new("bob@example.test")) == 1
    from mailtools.core.queue import Queue

    # The daemon may be trying carol's copy (claim, defer, release) while we list: a listing
    # made in that instant misses an entry that moves, as Postfix's mailq can. Look again.
    deadline = time.monotonic() + 30
    while not (found := Queue(mx.root / "queue").entries()) and time.monotonic() < deadline:
        time.sleep(0.05)
    (e,) = found
    assert [r.address for r in e.recipients] == ["carol@example.test"]


def test_recipient_named_twice_gets_one_copy(mx):
    with smtplib.SMTP("127.0.0.1", mx.port, timeout=10) as s:
        assert s.sendmail("a@sender.test", ["bob@example.test", "Bob@example.test".lower()], b"Subject: d\r\n\r\nb\r\n") == {}
    assert len(mx.new("bob@example.test")) == 1
