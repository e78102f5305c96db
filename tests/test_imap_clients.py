"""Real clients against imap-serve: mbsync (isync) both ways, and Dovecot on the same Maildir."""

from __future__ import annotations

import imaplib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import free_port, wait_port
from imap_helpers import PASSWORD, Server, deliver, maildir_of, make_root, message

MBSYNC = shutil.which("mbsync")
DOVECOT = shutil.which("dovecot") or (os.path.exists("/usr/sbin/dovecot") and "/usr/sbin/dovecot")


def _snapshot(*dirs: Path) -> dict:
    out = {}
    for d in dirs:
        for p in sorted(d.rglob("*")):
            if p.is_file() and "mailtools-imap.cache" not in p.name and "tmp" not in p.parts:
                out[str(p)] = p.stat().st_mtime_ns
    return out


@pytest.mark.skipif(not MBSYNC, reason="mbsync (Debian isync) not installed")
def test_mbsync_both_ways_twice(tmp_path):
    root = make_root(tmp_path)
    for i in range(5):
        deliver(root, message(i + 1))
    srv = Server(tmp_path)
    local = tmp_path / "local"
    local.mkdir()
    rc = tmp_path / "mbsyncrc"
    rc.write_text(f"""IMAPAccount t
Host 127.0.0.1
Port {srv.port}
User alice@example.test
Pass "{PASSWORD}"
SSLType None
AuthMechs PLAIN

IMAPStore remote
Account t

MaildirStore local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel c
Far :remote:
Near :local:
Patterns *
Create Both
Expunge Both
SyncState *
""")

    def sync():
        p = subprocess.run([MBSYNC, "-c", str(rc), "-a"], capture_output=True, timeout=60)
        assert p.returncode == 0, p.stderr.decode()
        return p

    try:
        sync()
        got = list((local / "INBOX" / "cur").iterdir()) + list((local / "INBOX" / "new").iterdir())
        assert len(got) == 5
        assert (local / "Sent").is_dir() and (local / "Trash").is_dir()
        # changes on both sides: a new local message, a local flag, a remote delivery
        (local / "INBOX" / "cur" / "1.local.msg:2,S").write_bytes(message(100, subject="from mbsync"))
        one = sorted((local / "INBOX" / "cur").iterdir())[0]
        if ":2," in one.name and "F" not in one.name.split(":2,")[1]:
            one.rename(one.with_name(one.name + "F"))
        deliver(root, message(6, subject="new on server"))
        sync()
        c = imaplib.IMAP4("127.0.0.1", srv.port)
        c.login("alice@example.test", PASSWORD)
        c.select("INBOX")
        assert c.search(None, "SUBJECT", '"from mbsync"')[1][0] != b""
        assert c.search(None, "FLAGGED")[1][0] != b""
        c.logout()
        got = list((local / "INBOX" / "cur").iterdir()) + list((local / "INBOX" / "new").iterdir())
        assert len(got) == 7
        before = _snapshot(local, maildir_of(root))
        time.sleep(1.1)
        sync()
        assert _snapshot(local, maildir_of(root)) == before, "second sync changed something"
    finally:
        srv.stop()


DOVECOT_CONF = """
protocols = imap
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/state
instance_name = mt-test-{port}
log_path = {d}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = 0
mail_location = maildir:{maildir}:INDEX=MEMORY
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={d}/home
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service auth {{
  user = root
}}
service auth-worker {{
  user = root
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
}}
"""


class Dovecot:
    def __init__(self, tmp: Path, maildir: Path):
        # a short directory: Dovecot's unix sockets live under base_dir (108-byte path limit)
        self.d = Path(tempfile.mkdtemp(prefix="mtidv"))
        self.d.chmod(0o755)
        (self.d / "run").mkdir(parents=True)
        (self.d / "state").mkdir()
        (self.d / "home").mkdir()
        (self.d / "passwd").write_text(f"alice@example.test:{{PLAIN}}{PASSWORD}\n")
        self.port = free_port()
        self.conf = self.d / "dovecot.conf"
        # Dovecot refuses to open mail as root: the Maildir is handed to 'nobody' while it runs.
        uid = gid = 65534
        for p in [maildir, *maildir.rglob("*")]:
            os.chown(p, uid, gid)
        for p in [maildir, *maildir.parents]:
            if p == Path("/"):
                break
            os.chmod(p, os.stat(p).st_mode | 0o111)
        self.conf.write_text(DOVECOT_CONF.format(d=self.d, port=self.port, maildir=maildir, uid=uid, gid=gid))
        err = self.d / "start.err"
        with open(err, "wb") as e:
            rc = subprocess.call([DOVECOT, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=e, timeout=30)
        if rc != 0:
            pytest.fail(f"dovecot did not start: {err.read_text()[:300]}")
        wait_port(self.port)

    def stop(self):
        subprocess.run(["doveadm", "-c", str(self.conf), "stop"], capture_output=True, timeout=30)
        shutil.rmtree(self.d, ignore_errors=True)


def _structures(port):
    c = imaplib.IMAP4("127.0.0.1", port)
    c.login("alice@example.test", PASSWORD)
    typ, data = c.select("INBOX", readonly=True)
    assert typ == "OK", (port, data)
    typ, data = c.fetch("1:*", "(BODYSTRUCTURE ENVELOPE BODY)")
    c.logout()
    return data


def _uids_and_flags(port):
    c = imaplib.IMAP4("127.0.0.1", port)
    c.login("alice@example.test", PASSWORD)
    typ, data = c.select("INBOX")
    assert typ == "OK", (port, data)
    uidvalidity = c.untagged_responses.get("UIDVALIDITY", [b"?"])[0] if "UIDVALIDITY" in c.untagged_responses else None
    typ, data = c.fetch("1:*", "(UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    rows = []
    for item in data:
        if isinstance(item, tuple):
            head = item[0].decode()
            uid = int(head.split("UID ")[1].split()[0])
            flags = sorted(f for f in head.split("FLAGS (")[1].split(")")[0].split() if f != "\\Recent")
            size = int(head.split("RFC822.SIZE ")[1].split()[0])
            rows.append((uid, tuple(flags), size, item[1].strip()))
    c.logout()
    return uidvalidity, rows


@pytest.mark.skipif(not DOVECOT or os.geteuid() != 0, reason="needs dovecot and root (it serves the Maildir as nobody)")
def test_dovecot_written_maildir_same_uids(tmp_path):
    from test_imap import MULTI

    root = make_root(tmp_path)
    md = maildir_of(root)
    for i in range(4):
        deliver(root, message(i + 1))
    deliver(root, MULTI)
    deliver(root, b'From: x@example.test\nTo: undisclosed-recipients:;\nCc: Team: a@example.test, "Q" <q@example.test>;\n'
                  b'Reply-To: Someone (comment) <s@example.test>\nSubject: =?utf-8?q?gr=C3=BC=C3=9Fe?=\n\nbody\n')
    dv = Dovecot(tmp_path, md)
    try:
        c = imaplib.IMAP4("127.0.0.1", dv.port)
        c.login("alice@example.test", PASSWORD)
        c.select("INBOX")
        c.store("2", "+FLAGS", "(\\Flagged $Label1)")
        c.store("3", "+FLAGS", "(\\Deleted)")
        c.expunge()
        c.append("INBOX", "(\\Seen)", None, message(9, subject="appended by dovecot").replace(b"\n", b"\r\n"))
        c.logout()
        dv_view = _uids_and_flags(dv.port)
        dv_structures = _structures(dv.port)
    finally:
        dv.stop()
    srv = Server(tmp_path)
    try:
        mt_view = _uids_and_flags(srv.port)
        assert _structures(srv.port) == dv_structures  # byte for byte, multipart included
        # and the reverse: mailtools changes, Dovecot reads them back
        c = imaplib.IMAP4("127.0.0.1", srv.port)
        c.login("alice@example.test", PASSWORD)
        c.select("INBOX")
        c.store("1", "+FLAGS", "(\\Answered Junk)")
        c.append("INBOX", None, None, message(10, subject="appended by mailtools"))
        c.logout()
        mt_view2 = _uids_and_flags(srv.port)
    finally:
        srv.stop()
    assert mt_view[1] == dv_view[1]
    assert mt_view[0] == dv_view[0]
    assert [r[0] for r in mt_view[1]] == [1, 2, 4, 5, 6, 7]
    dv = Dovecot(tmp_path / "again", md)
    try:
        dv_view2 = _uids_and_flags(dv.port)
        c = imaplib.IMAP4("127.0.0.1", dv.port)
        c.login("alice@example.test", PASSWORD)
        subscribed = c.lsub()[1]  # the subscriptions file mailtools wrote is Dovecot's format
        c.logout()
    finally:
        dv.stop()
    assert dv_view2 == mt_view2
    assert any(b"Sent" in s for s in subscribed) and any(b"Archive" in s for s in subscribed), subscribed


FETCHMAIL = shutil.which("fetchmail")


@pytest.mark.skipif(not FETCHMAIL, reason="fetchmail not installed")
def test_fetchmail_imap_downloads_and_deletes(tmp_path):
    root = make_root(tmp_path)
    for i in range(3):
        deliver(root, message(i + 1, subject=f"fetch me {i + 1}"))
    srv = Server(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        f'set no bouncemail\npoll 127.0.0.1 service {srv.port} protocol IMAP auth password\n'
        f'  user "alice@example.test" there with password "{PASSWORD}" is root here\n'
        f'  fetchall nokeep sslproto "" mda "/bin/sh -c \'cat > {out}/msg.$$\'"\n'
    )
    rc.chmod(0o600)
    env = dict(os.environ, HOME=str(tmp_path), FETCHMAILHOME=str(tmp_path))
    try:
        p = subprocess.run([FETCHMAIL, "-f", str(rc), "--nosyslog", "-v"], capture_output=True, env=env, timeout=60)
        assert p.returncode == 0, (p.stdout + p.stderr).decode()[-2000:]
        got = sorted(f.read_bytes() for f in out.iterdir())
        assert len(got) == 3 and all(b"Subject: fetch me" in g for g in got)
        c = imaplib.IMAP4("127.0.0.1", srv.port)
        c.login("alice@example.test", PASSWORD)
        assert c.select("INBOX")[1] == [b"0"]  # nokeep: deleted and expunged on the server
        c.logout()
    finally:
        srv.stop()
