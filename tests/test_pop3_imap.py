"""POP3 and IMAP on one Maildir: IMAP sees POP3 deletions as expunges; POP3 follows messages
whose flags IMAP changed (a rename in cur/)."""

from __future__ import annotations

import imaplib
import os
import poplib
import subprocess

import pytest

from conftest import free_port, mailtools_cmd, wait_port
from mailtools.core import maildir
from pop3_support import PASSWORD, Server, add_user, write_config

USER = "alice@example.test"


@pytest.fixture
def both(home):
    write_config(home)
    md = add_user(home)
    for i in range(3):
        maildir.deliver(md, f"Subject: m{i}\n\nbody {i}\n".encode())
    pop = Server(home)
    port = free_port()
    env = dict(os.environ, MAILTOOLS_CONFIG=str(home.parent / "mailtools.toml"))
    imap = subprocess.Popen([*mailtools_cmd(), "imap-serve", "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        wait_port(port, proc=imap)
    except (RuntimeError, TimeoutError) as exc:
        pop.stop()
        imap.kill()
        pytest.skip(f"imap-serve did not start: {exc} {imap.communicate()[1][-300:]!r}")
    yield pop, port
    pop.stop()
    imap.terminate()
    imap.wait(30)


def test_pop3_deletion_is_an_imap_expunge(both):
    pop, port = both
    im = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    im.login(USER, PASSWORD)
    typ, data = im.select("INBOX")
    assert data == [b"3"]
    uids_before = im.uid("SEARCH", "ALL")[1][0].split()
    p = poplib.POP3("127.0.0.1", pop.port, timeout=10)
    p.user(USER)
    p.pass_(PASSWORD)
    p.dele(2)
    assert p.quit() == b"+OK Logging out, 1 messages deleted."
    im.noop()
    assert im.untagged_responses.get("EXPUNGE") == [b"2"], im.untagged_responses
    assert im.uid("SEARCH", "ALL")[1][0].split() == [uids_before[0], uids_before[2]]
    im.logout()


def test_pop3_follows_an_imap_flag_change(both):
    pop, port = both
    p = poplib.POP3("127.0.0.1", pop.port, timeout=10)
    p.user(USER)
    p.pass_(PASSWORD)
    uidl = p.uidl()[1]
    im = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    im.login(USER, PASSWORD)
    im.select("INBOX")
    assert im.store("1:3", "+FLAGS", "(\\Flagged)")[0] == "OK"  # renames every file
    im.logout()
    assert b"body 0" in b"\n".join(p.retr(1)[1])
    p.dele(3)
    p.quit()
    p = poplib.POP3("127.0.0.1", pop.port, timeout=10)
    p.user(USER)
    p.pass_(PASSWORD)
    assert p.uidl()[1] == uidl[:2]  # same UIDLs after the renames; message 3 is gone
    p.quit()
