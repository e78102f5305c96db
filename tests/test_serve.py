"""`mailtools serve` end to end, as a new user would do it: start it on a fresh root, add a
user, submit with smtplib over STARTTLS + AUTH, read the message back over IMAP and POP3, trace
its hops; relay a message to a remote domain through a real DNS server and smtp-sink; SIGTERM
with mail in flight loses nothing."""

from __future__ import annotations

import imaplib
import json
import os
import poplib
import signal
import smtplib
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import free_port, mailtools_cmd, stop_proc, wait_port
from support_net import wait_for

PASSWORD = "correct horse battery staple"


def _insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # serve's certificate is self-signed
    return ctx


class Serve:
    def __init__(self, root: Path, extra_env=None, extra_args=()):
        self.root = root
        self.extra_args = list(extra_args)
        self.ports = {k: free_port() for k in ("smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s")}
        self.env = {k: v for k, v in os.environ.items() if k not in ("MAILTOOLS_CONFIG", "MAILTOOLS_HOME")}
        self.env.update(extra_env or {})
        self.proc = None
        self.log = root.parent / f"serve-{root.name}.log"

    def args(self):
        a = [*mailtools_cmd(), "serve", "--root", str(self.root), "--hostname", "mx.example.test"]
        for k, p in self.ports.items():
            a += [f"--{k}", f"127.0.0.1:{p}"]
        return a + self.extra_args

    def start(self):
        self.logf = open(self.log, "ab")
        self.proc = subprocess.Popen(self.args(), stdout=self.logf, stderr=subprocess.STDOUT, env=self.env)
        for p in self.ports.values():
            wait_port(p, proc=self.proc)
        deadline = time.monotonic() + 30
        while b"Ready." not in self.log.read_bytes():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)
        return self

    def output(self) -> str:
        return self.log.read_text()

    def mailtools(self, *args, input=b""):
        env = dict(self.env, MAILTOOLS_HOME=str(self.root))
        return subprocess.run([*mailtools_cmd(), *args], input=input, capture_output=True, env=env, timeout=60)

    def stop(self, sig=signal.SIGTERM, timeout=20):
        stop_proc(self.proc, sig, timeout)
        self.logf.close()
        return self.proc.returncode


@pytest.fixture
def serve(tmp_path):
    started = []

    def _start(root=None, extra_env=None, extra_args=()):
        s = Serve(root or tmp_path / "root", extra_env, extra_args).start()
        started.append(s)
        return s

    yield _start
    for s in started:
        s.stop(signal.SIGKILL)


def add_user(s: Serve, user="me@localhost"):
    r = s.mailtools("user", "add", "--password-stdin", user, input=PASSWORD.encode() + b"\n")
    assert r.returncode == 0, r.stderr


def submit(s: Serve, sender, rcpts, subject, body="hello\r\n"):
    msg = f"From: <{sender}>\r\nTo: {', '.join(rcpts)}\r\nSubject: {subject}\r\n\r\n{body}"
    with smtplib.SMTP("127.0.0.1", s.ports["submission"], timeout=30) as c:
        c.starttls(context=_insecure())
        c.login(sender, PASSWORD)
        c.sendmail(sender, rcpts, msg)


def wait_imap_message(s: Serve, user, count=1, timeout=60) -> list[bytes]:
    deadline = time.monotonic() + timeout
    while True:
        with imaplib.IMAP4("127.0.0.1", s.ports["imap"]) as m:
            m.starttls(_insecure())
            m.login(user, PASSWORD)
            typ, data = m.select("INBOX", readonly=True)
            n = int(data[0])
            if n >= count:
                msgs = []
                for i in range(1, n + 1):
                    typ, d = m.fetch(str(i), "(BODY.PEEK[])")
                    msgs.append(d[0][1])
                return msgs
        assert time.monotonic() < deadline, f"only {n} message(s) after {timeout}s\n{s.output()}"
        time.sleep(0.2)


def test_fresh_root_banner_and_files(serve, tmp_path):
    s = serve()
    out = s.output()
    for k, p in s.ports.items():
        assert f"127.0.0.1:{p}" in out, (k, out)
    assert str(s.root) in out
    assert "mailtools user add me@localhost" in out  # no user yet: says how, invents nothing
    assert (s.root / "mailtools.toml").exists()
    assert (s.root / "tls" / "cert.pem").exists() and (s.root / "tls" / "key.pem").exists()
    assert oct((s.root / "tls" / "key.pem").stat().st_mode & 0o777) == "0o600"
    # A TLS listener really serves the self-signed certificate.
    import socket

    with socket.create_connection(("127.0.0.1", s.ports["imaps"])) as raw:
        with _insecure().wrap_socket(raw, server_hostname="mx.example.test") as tls:
            assert tls.recv(100).startswith(b"* OK")
    assert s.stop() == 0
    assert "stopped" in s.output()


def test_submit_then_read_over_imap_and_pop3_and_trace(serve):
    s = serve()
    add_user(s)
    submit(s, "me@localhost", ["me@localhost"], "first light")
    (msg,) = wait_imap_message(s, "me@localhost")
    assert b"Subject: first light" in msg
    head = msg.split(b"\r\n\r\n", 1)[0]
    assert head.count(b"Received:") >= 1
    assert b"ESMTPSA" in head  # RFC 3848: submission with TLS and AUTH
    # trace-headers on what the user got
    r = s.mailtools("trace-headers", "--json", "-", input=msg)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.splitlines()[0])
    assert len(report["hops"]) >= 1
    assert all(h["timestamp"] for h in report["hops"])
    # the submission hop, once: the relay's own header (queue to Maildir) names no protocol
    assert [(h["with"] or "").upper() for h in report["hops"]].count("ESMTPSA") == 1, report["hops"]
    assert len(report["hops"]) == 2, report["hops"]
    import re

    for h in report["hops"]:  # every protocol named is a real one (RFC 5321 4.4, RFC 3848)
        assert h["with"] is None or re.fullmatch(r"(UTF8)?(E?SMTP|LMTP)S?A?", h["with"], re.I), h
    # POP3 gives the same bytes
    p = poplib.POP3("127.0.0.1", s.ports["pop3"], timeout=30)
    p.stls(_insecure())
    p.user("me@localhost")
    p.pass_(PASSWORD)
    count, size = p.stat()
    assert count == 1
    lines = p.retr(1)[1]
    p.quit()
    assert b"\r\n".join(lines) + b"\r\n" == msg


def test_unauthenticated_submission_refused(serve):
    s = serve()
    with smtplib.SMTP("127.0.0.1", s.ports["submission"], timeout=30) as c:
        c.starttls(context=_insecure())
        c.ehlo()
        code, _ = c.mail("me@localhost")
        if code == 250:
            code, _ = c.rcpt("me@localhost")
        assert code == 530


def test_sigterm_with_mail_in_flight_loses_nothing(serve, tmp_path):
    s = serve()
    add_user(s)
    accepted = []
    stop = threading.Event()

    def sender():
        i = 0
        while not stop.is_set() and i < 200:
            try:
                submit(s, "me@localhost", ["me@localhost"], f"burst {i}")
                accepted.append(f"burst {i}")
            except (OSError, smtplib.SMTPException):
                return
            i += 1

    t = threading.Thread(target=sender)
    t.start()
    deadline = time.monotonic() + 60
    while len(accepted) < 3 and t.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    s.proc.send_signal(signal.SIGTERM)  # while the sender is in the middle of the next one
    stop.set()
    t.join(30)
    assert s.proc.wait(30) == 0
    assert accepted, "nothing was accepted before SIGTERM"
    s2 = serve(root=s.root)
    msgs = wait_imap_message(s2, "me@localhost", count=len(accepted))
    subjects = {m.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode() for m in msgs}
    assert set(accepted) <= subjects


def test_remote_domain_goes_out_through_mx_lookup_to_the_sink(serve, tmp_path):
    import support_dns
    import support_sink

    with support_dns.start_dnsmasq(
        mx={"remote.test": [(10, "mx.remote.test")]}, hosts={"mx.remote.test": ["127.0.0.1"]}
    ) as dns, support_sink.start_sink() as sink:
        root = tmp_path / "root"
        root.mkdir()
        (root / "mailtools.toml").write_text(
            'hostname = "mx.example.test"\nroot = "."\n'
            f"{dns.toml()}"
            f"[relay]\nremote_port = {sink.port}\nretry = [\"1s\"]\n"
            '[tls]\ncert = "tls/cert.pem"\nkey = "tls/key.pem"\n'
        )
        s = serve(root=root)
        add_user(s)
        submit(s, "me@localhost", ["friend@remote.test"], "going out")
        assert sink.wait_count(1, timeout=60) == 1, s.output()
        (m,) = sink.messages()
        assert m.recipients == ["friend@remote.test"]
        assert m.sender == "me@localhost"
        assert b"Subject: going out" in m.data
        assert m.data.count(b"Received:") >= 2  # submission hop and the relay's own hop
        # the runner logs after the sink's 250, which the sink counted already
        wait_for(lambda: "status=sent" in s.output(), what="the delivery's log line")


def test_bad_listen_address_is_a_usage_or_config_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MAILTOOLS_CONFIG", "MAILTOOLS_HOME")}
    r = subprocess.run([*mailtools_cmd(), "serve", "--root", str(tmp_path / "r"), "--smtp", "nonsense"],
                       capture_output=True, env=env, timeout=60)
    assert r.returncode == 64 and b"--smtp" in r.stderr and b"nonsense" in r.stderr, r.stderr
    cfg = tmp_path / "m.toml"
    cfg.write_text(f'root = "{tmp_path / "r2"}"\n[imap]\nlisten = ["x:y"]\n')
    r = subprocess.run([*mailtools_cmd(), "--config", str(cfg), "serve"], capture_output=True, env=env, timeout=60)
    assert r.returncode == 78 and str(cfg).encode() in r.stderr and b"x:y" in r.stderr, r.stderr


def _banner_command(out: str) -> list[str]:
    import shlex

    lines = out.splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith("No users yet"))
    return shlex.split(lines[i + 1])


def test_the_banner_command_for_the_first_user_works(serve, tmp_path):
    s = serve()
    cmd = _banner_command(s.output())
    assert cmd[0].startswith("MAILTOOLS_HOME=") and cmd[1:] == ["mailtools", "user", "add", "me@localhost"]
    env = dict(s.env, MAILTOOLS_HOME=cmd[0].split("=", 1)[1])
    r = subprocess.run([*mailtools_cmd(), *cmd[2:], "--password-stdin"], input=b"pw\n", capture_output=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "me@localhost:" in (s.root / "users").read_text()
    # and with --config naming a file elsewhere whose only domain is example.test
    root = tmp_path / "r2"
    cfg = tmp_path / "conf" / "m.toml"
    cfg.parent.mkdir()
    ports = [free_port() for _ in range(7)]
    cfg.write_text(f'root = "{root}"\nlocal_domains = ["example.test"]\n'
                   f'[relay]\nlisten = ["127.0.0.1:{ports[0]}"]\n[submit]\nlisten = ["127.0.0.1:{ports[1]}"]\n'
                   f'[imap]\nlisten = ["127.0.0.1:{ports[2]}"]\n[pop3]\nlisten = ["127.0.0.1:{ports[3]}"]\n')
    log = tmp_path / "serve2.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen([*mailtools_cmd(), "--config", str(cfg), "serve"], stdout=logf, stderr=subprocess.STDOUT, env=s.env)
        try:
            deadline = time.monotonic() + 30
            while b"Ready." not in log.read_bytes():
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        finally:
            proc.terminate()
            proc.wait(20)
    cmd = _banner_command(log.read_text())
    assert cmd == ["mailtools", "--config", str(cfg), "user", "add", "me@example.test"], cmd
    r = subprocess.run([*mailtools_cmd(), *cmd[1:], "--password-stdin"], input=b"pw\n", capture_output=True, env=s.env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "me@example.test:" in (root / "users").read_text()


def test_fresh_root_spreads_its_maildirs_on_ext4(tmp_path):
    # chattr +T on the mail/ serve creates (as on queue/active/); ext2/3/4 only; an existing
    # mail/ keeps its attributes
    import shutil

    from mailtools.serve import init_root

    fs = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True).stdout.strip()
    if fs not in ("ext2/ext3", "ext4") or not shutil.which("lsattr"):
        pytest.skip(f"file system {fs!r}: the flag is ext2/3/4's")

    def attrs(path):
        return subprocess.run(["lsattr", "-d", str(path)], capture_output=True, text=True).stdout.split()[0]

    init_root(tmp_path / "fresh", hostname="mx.example.test")
    assert "T" in attrs(tmp_path / "fresh" / "mail")
    (tmp_path / "kept" / "mail").mkdir(parents=True)
    init_root(tmp_path / "kept", hostname="mx.example.test")
    assert "T" not in attrs(tmp_path / "kept" / "mail")
