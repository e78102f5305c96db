"""fetchmail against pop3-serve (keep and no-keep, plain and STLS): a 500-message maildrop
retrieved completely, then a second run that fetches nothing new."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from mailtools.core import maildir
from pop3_support import PASSWORD, Server, add_user, write_config

USER = "alice@example.test"
COUNT = 500


def fill(md: Path, count: int = COUNT) -> None:
    """count messages in new/ (written directly: this is setup, not what is being tested)."""
    maildir.make_dirs(str(md))
    for i in range(count):
        body = f"Subject: message {i}\nMessage-ID: <{i}@example.test>\n\nline\n.dot line {i}\n"
        name = f"{1700000000 + i}.M{i}P1Q{i}.test,S={len(body)}"
        (md / "new" / name).write_bytes(body.encode())


@pytest.fixture
def pop(home, tls_ca, tmp_path):
    # fetchmail wants the name in the subject's CN too, which the shared certificate lacks
    cert = tls_ca.ca.issue_cert("localhost", "127.0.0.1", common_name="localhost")
    tls = SimpleNamespace(cert_file=str(tmp_path / "cert.pem"), key_file=str(tmp_path / "key.pem"),
                          ca_file=tls_ca.ca_file)
    cert.private_key_and_cert_chain_pem.write_to_path(tls.cert_file)
    cert.private_key_pem.write_to_path(tls.key_file)
    write_config(home, tls=tls)
    md = add_user(home)
    fill(md)
    srv = Server(home, tls=True)
    srv.maildir, srv.ca = md, tls_ca
    yield srv
    code, _, err = srv.stop()
    assert code == 0 and b"Traceback" not in err, err


def subjects(files) -> set[int]:
    out = set()
    for f in files:
        for ln in Path(f).read_bytes().splitlines():
            if ln.startswith(b"Subject: message "):
                out.add(int(ln.split()[-1]))
            assert not ln.startswith(b"..dot"), "dot-stuffing leaked into the message"
    return out


def fetchmail(tmp: Path, srv, keep: bool, tls: bool) -> tuple[subprocess.CompletedProcess, list]:
    out = tmp / "delivered"
    out.mkdir(exist_ok=True)
    before = set(out.iterdir())
    rc = tmp / "fetchmailrc"
    ssl = (f'sslproto "tls1.2+" sslcertck sslcertfile "{srv.ca.ca_file}"' if tls else "sslproto ''")
    rc.write_text(
        "set no bouncemail\n"
        f"poll localhost with proto POP3 port {srv.port} uidl\n"
        f'  user "{USER}" there with password "{PASSWORD}" is root here\n'
        f"  options {'keep' if keep else 'no keep fetchall'}\n"
    )
    with rc.open("a") as f:
        f.write(f"  {ssl}\n")
        f.write(f"  mda \"/bin/sh -c 'cat > {out}/m.$$'\"\n")
    rc.chmod(0o600)
    env = dict(os.environ, HOME=str(tmp), FETCHMAILHOME=str(tmp))
    r = subprocess.run(["fetchmail", "-f", str(rc), "-i", str(tmp / "fetchids"), "--nodetach",
                        "--nosyslog", "-v"], capture_output=True, env=env, timeout=120)
    return r, sorted(set(out.iterdir()) - before)


needs_fetchmail = pytest.mark.skipif(not shutil.which("fetchmail"), reason="fetchmail not installed")


@needs_fetchmail
def test_fetchmail_no_keep_plain(pop, tmp_path):
    r, got = fetchmail(tmp_path, pop, keep=False, tls=False)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert len(got) == COUNT
    assert subjects(got) == set(range(COUNT))
    assert maildir.Maildir(pop.maildir).scan() == []  # all deleted at QUIT
    r, got = fetchmail(tmp_path, pop, keep=False, tls=False)
    assert r.returncode == 1, r.stderr.decode()[-2000:]  # 1: no mail
    assert got == []


@needs_fetchmail
def test_fetchmail_keep_stls(pop, tmp_path):
    r, got = fetchmail(tmp_path, pop, keep=True, tls=True)
    err = r.stderr.decode()
    assert r.returncode == 0, err[-2000:]
    assert b"> STLS" in r.stdout, r.stdout.decode()[:3000]
    assert subjects(got) == set(range(COUNT))
    assert len(maildir.Maildir(pop.maildir).scan()) == COUNT  # kept
    r, got = fetchmail(tmp_path, pop, keep=True, tls=True)
    assert r.returncode == 1, r.stderr.decode()[-2000:]
    assert got == []
    maildir.deliver(pop.maildir, b"Subject: message 9999\n\nnew one\n")
    r, got = fetchmail(tmp_path, pop, keep=True, tls=True)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert subjects(got) == {9999}


