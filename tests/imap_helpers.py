"""Shared by the tests/test_imap*.py files: a data root with users, and a running imap-serve."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, free_port, stop_proc, wait_port

PASSWORD = "secret pass"


def make_root(tmp_path: Path, users=("alice@example.test",), extra: str = "") -> Path:
    """A data root + config file (fail_delay short so failed-login tests stay quick)."""
    from mailtools.core.auth import hash_password

    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    lines = [f"{u}:{hash_password(PASSWORD, 'SHA512-CRYPT' if False else 'BLF-CRYPT')}::::::\n" for u in users]
    (root / "users").write_text("".join(lines))
    cfg = tmp_path / "mailtools.toml"
    cfg.write_text(
        f'hostname = "mx.example.test"\nroot = "{root}"\nlocal_domains = ["example.test"]\n'
        f"[auth]\nfail_delay = 0.2\n{extra}"
    )
    return root


class Server:
    def __init__(self, tmp_path: Path, *args: str, env=None):
        self.port = free_port()
        self.cfg = tmp_path / "mailtools.toml"
        e = dict(os.environ, MAILTOOLS_CONFIG=str(self.cfg), PYTHONPATH=str(REPO))
        e.update(env or {})
        self.log = open(tmp_path / "imap-serve.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailtools", "imap-serve", "--listen", f"127.0.0.1:{self.port}", *args],
            stdout=self.log, stderr=subprocess.STDOUT, env=e, cwd=str(REPO),
        )
        wait_port(self.port, proc=self.proc)

    def stop(self) -> None:
        stop_proc(self.proc, timeout=10)
        self.log.close()


def maildir_of(root: Path, user: str = "alice@example.test") -> Path:
    local, domain = user.split("@")
    return root / "mail" / domain / local


def deliver(root: Path, data: bytes, user: str = "alice@example.test", folder: str | None = None) -> Path:
    from mailtools.core import maildir as md

    p = maildir_of(root, user)
    if folder:
        p = md.Maildir(p).folder(folder).path
    return md.deliver(p, data, folder_marker=bool(folder))


def message(n: int, subject: str | None = None, body: str = "hello world\n") -> bytes:
    subject = subject or f"message {n}"
    return (
        f"From: Bob <bob@example.test>\nTo: alice@example.test\nSubject: {subject}\n"
        f"Date: Mon, 2 Nov 2026 10:00:{n % 60:02d} +0000\nMessage-ID: <{n}@example.test>\n\n{body}"
    ).encode()


def lines_to_eof(client) -> list[bytes]:
    """Every line an imaplib client still gets until the server closes the connection."""
    lines = []
    while True:
        line = client.readline()
        if not line:
            return lines
        lines.append(line)
