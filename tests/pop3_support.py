"""Running the real `mailtools pop3-serve` for the integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from conftest import free_port, mailtools_cmd, wait_port

PASSWORD = "correct horse"


def write_config(home: Path, tls=None, extra: str = "") -> Path:
    """The `home` fixture's config plus fast failed logins and, with tls_ca, a certificate."""
    cfg = home.parent / "mailtools.toml"
    text = (f'hostname = "mx.example.test"\nroot = "{home}"\nlocal_domains = ["example.test"]\n'
            "[auth]\nfail_delay = 0.3\n")
    if tls is not None:
        text += f'[tls]\ncert = "{tls.cert_file}"\nkey = "{tls.key_file}"\n'
    cfg.write_text(text + extra)
    return cfg


def add_user(home: Path, user: str = "alice@example.test", password: str = PASSWORD) -> Path:
    """A users-file line (SHA512-CRYPT: quick to check, so the many logins here stay cheap;
    the other schemes are core/auth's tests) and the user's Maildir path."""
    from mailtools.core import auth, config

    cfg = config.load(str(home.parent / "mailtools.toml"), reload=True)
    hashed = auth.sha_crypt(password.encode(), "$6$" + os.urandom(6).hex())
    with open(cfg.users_file, "a") as f:
        f.write(f"{user}:{{SHA512-CRYPT}}{hashed}::::::\n")
    return cfg.maildir_for(user)


class Server:
    def __init__(self, home: Path, tls: bool = False, env=None):
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        args = [*mailtools_cmd(), "pop3-serve", "--listen", f"127.0.0.1:{self.port}"]
        if tls:
            args += ["--tls-listen", f"127.0.0.1:{self.tls_port}"]
        e = dict(os.environ, MAILTOOLS_CONFIG=str(home.parent / "mailtools.toml"))
        e.update(env or {})
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e)
        wait_port(self.port, proc=self.proc)
        if tls:
            wait_port(self.tls_port, proc=self.proc)

    def stop(self) -> tuple[int, bytes, bytes]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return self.proc.returncode, out, err
