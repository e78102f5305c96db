"""A private Dovecot instance for tests and benchmarks: no listeners, just the auth service that
dovecot-lda and doveadm need, one user ('lda', running as nobody) whose Maildir is `maildir`.
Started with its own config under a temp directory and stopped by its master PID."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from support_net import stop_pid

DOVECOT_LDA = "/usr/lib/dovecot/dovecot-lda"
NOBODY = 65534


def available() -> bool:
    return os.geteuid() == 0 and bool(shutil.which("dovecot")) and os.path.exists(DOVECOT_LDA)


class Dovecot:
    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="mtdv"))  # short: unix socket paths are limited
        self.dir.chmod(0o755)  # the user (nobody) must reach its home
        self.home = self.dir / "home"
        self.home.mkdir()
        os.chown(self.home, NOBODY, NOBODY)
        self.maildir = self.home / "Maildir"
        self.conf = self.dir / "dovecot.conf"
        self.pid: int | None = None

    def config(self) -> str:
        d = self.dir
        return f"""
protocols =
listen = 127.0.0.1
instance_name = mailtools-{os.getpid()}-{d.name}
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
ssl = no
first_valid_uid = 100
mail_location = maildir:~/Maildir
userdb {{
  driver = static
  args = uid={NOBODY} gid={NOBODY} home={self.home}
}}
passdb {{
  driver = static
  args = nopassword=y
}}
protocol lda {{
  postmaster_address = postmaster@example.test
}}
"""

    def start(self) -> "Dovecot":
        (self.dir / "run").mkdir()
        (self.dir / "state").mkdir()
        self.conf.write_text(self.config())
        subprocess.run(["dovecot", "-c", str(self.conf)], check=True, timeout=30)
        pidfile = self.dir / "run" / "master.pid"
        for _ in range(600):  # up to 30 s: Dovecot starting on a loaded machine
            if pidfile.exists() and (self.dir / "run" / "auth-userdb").exists():
                break
            time.sleep(0.05)
        self.pid = int(pidfile.read_text())
        return self

    def lda_cmd(self, sender: str = "sender@example.test") -> list[str]:
        return [DOVECOT_LDA, "-c", str(self.conf), "-d", "lda", "-f", sender]

    def lda(self, data: bytes) -> None:
        r = subprocess.run(self.lda_cmd(), input=data, capture_output=True, timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"dovecot-lda exit {r.returncode}: {r.stderr!r}")

    def doveadm(self, *args: str) -> str:
        subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(self.home)], check=True)
        r = subprocess.run(["doveadm", "-c", str(self.conf), *args], capture_output=True, timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"doveadm {args}: exit {r.returncode}: {r.stderr!r}")
        return r.stdout.decode()

    def fetch(self) -> dict[int, dict]:
        """uid -> {"flags": set (without \\Recent), "guid": str} as Dovecot sees INBOX."""
        out = self.doveadm("-f", "flow", "fetch", "-u", "lda", "uid flags guid", "mailbox", "INBOX", "all")
        rows = {}
        for line in out.splitlines():
            f = dict(kv.split("=", 1) for kv in line.replace(" flags=", "\0flags=").replace(" guid=", "\0guid=")
                     .split("\0"))
            rows[int(f["uid"])] = {"flags": set(f["flags"].split()) - {"\\Recent"}, "guid": f["guid"]}
        return rows

    def empty_maildir(self) -> None:
        shutil.rmtree(self.maildir, ignore_errors=True)

    def stop(self) -> None:
        stop_pid(self.pid)
        self.pid = None
        shutil.rmtree(self.dir, ignore_errors=True)
