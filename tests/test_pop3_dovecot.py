"""A Maildir written and served by Dovecot (dovecot-lda, Dovecot's own pop3 on loopback), then
served by pop3-serve: the same UIDLs, sizes and bytes, so POP3 clients download nothing twice."""

from __future__ import annotations

import os
import poplib

import pytest

from conftest import free_port
from pop3_support import PASSWORD, Server, write_config

support_dovecot = pytest.importorskip("support_dovecot")

pytestmark = pytest.mark.skipif(not support_dovecot.available(), reason="needs root and Dovecot")


class DovecotPOP3(support_dovecot.Dovecot):
    """The shared private Dovecot plus its pop3 service on a loopback port."""

    def __init__(self):
        super().__init__()
        self.port = free_port()

    def config(self) -> str:
        conf = super().config().replace("protocols =\n", "protocols = pop3\n")
        return conf + f"""
disable_plaintext_auth = no
pop3_uidl_format = %08Xu%08Xv
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
"""


def snapshot(port: int, user: str, password: str):
    p = poplib.POP3("127.0.0.1", port, timeout=10)
    p.user(user)
    p.pass_(password)
    n, total = p.stat()
    uidl = p.uidl()[1]
    sizes = p.list()[1]
    bodies = [b"\r\n".join(p.retr(i)[1]) for i in range(1, n + 1)]
    p.quit()
    return n, total, uidl, sizes, bodies


@pytest.fixture
def dovecot():
    d = DovecotPOP3().start()
    yield d
    d.stop()


def test_dovecot_mailbox_keeps_uidls(dovecot, home):
    for i in range(12):
        body = "\n".join(f"line {j} of message {i}" for j in range(i * 3)) + "\n"
        dovecot.lda(f"From: s@example.test\nSubject: m{i}\n\n.dot\n{body}".encode())
    # Dovecot's own POP3 expunges one (the UIDs then have a hole) and serves the rest
    p = poplib.POP3("127.0.0.1", dovecot.port, timeout=10)
    p.user("lda")
    p.pass_("any")
    p.dele(3)
    p.quit()
    want = snapshot(dovecot.port, "lda", "any")
    assert want[0] == 11 and want[2][2].split()[1].startswith(b"00000004")

    write_config(home)
    from pop3_support import add_user

    md = add_user(home)
    md.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(dovecot.maildir, md)  # the user's Maildir is the one Dovecot built
    srv = Server(home)
    try:
        got = snapshot(srv.port, "alice@example.test", PASSWORD)
    finally:
        srv.stop()
    assert got[2] == want[2]  # UIDL
    assert got[:2] == want[:2]  # STAT
    assert got[3] == want[3]  # LIST sizes
    assert got[4] == want[4]  # the bytes of every message
