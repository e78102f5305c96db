"""The reference servers for the differential tests: a private Postfix smtpd and a private Dovecot
(imap + pop3), each with its own config, spool and state in a temp directory, on free loopback
ports, never touching the system's configuration. Started and stopped by their own commands /
master PID.

- Postfix: smtpd on 127.0.0.1:PORT, accepts mail for example.test and hands it to virtual(8), which
  writes it into MAIL/example.test/LOCAL/ (a Maildir) as nobody; anything else is 554 relay denied
  (mynetworks does not hold the loopback client, as for a stranger connecting to an MX).
- Dovecot: imap and pop3 on loopback, a passwd-file with one user (USER / PASSWORD), Maildir at
  MAIL/example.test/LOCAL, plaintext logins allowed (loopback, as mailtools allows them there).

`unavailable()` returns the reason to skip (not root, a package missing), or None.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from support_net import free_port, stop_pid, wait_port

REPO = Path(__file__).resolve().parent.parent
USER = "alice@example.test"
PASSWORD = "secret pass"
HOSTNAME = "mx.example.test"


def _nobody() -> pwd.struct_passwd:
    return pwd.getpwnam("nobody")


def unavailable_postfix() -> str | None:
    if os.geteuid() != 0:
        return "the Postfix reference needs root"
    for tool in ("postfix", "postconf"):
        if not shutil.which(tool):
            return f"the Postfix reference needs {tool} (Debian package postfix)"
    if not os.path.exists("/etc/postfix/master.cf"):
        return "the Postfix reference needs /etc/postfix/master.cf to copy"
    try:
        pwd.getpwnam("postfix")
        _nobody()
    except KeyError:
        return "the Postfix reference needs the postfix and nobody users"
    return None


def unavailable_dovecot() -> str | None:
    if os.geteuid() != 0:
        return "the Dovecot reference needs root"
    if not shutil.which("dovecot"):
        return "the Dovecot reference needs dovecot (Debian packages dovecot-imapd, dovecot-pop3d)"
    for binary in ("imap", "pop3", "imap-login", "pop3-login"):
        if not os.path.exists(f"/usr/lib/dovecot/{binary}"):
            return f"the Dovecot reference needs /usr/lib/dovecot/{binary}"
    try:
        _nobody()
    except KeyError:
        return "the Dovecot reference needs a nobody user"
    return None


def _quiet(args: list[str], log: Path, timeout: float = 60) -> int:
    """Run a command that may leave daemons behind: output to a file, never a pipe."""
    with open(log, "ab") as f:
        return subprocess.run(args, stdin=subprocess.DEVNULL, stdout=f, stderr=f, timeout=timeout).returncode


def chown_tree(path: Path) -> None:
    nb = _nobody()
    for dirpath, dirnames, filenames in os.walk(path):
        os.chown(dirpath, nb.pw_uid, nb.pw_gid)
        for name in filenames:
            os.chown(os.path.join(dirpath, name), nb.pw_uid, nb.pw_gid)


def postfix_instance_dirs(base: Path, etc: Path) -> None:
    """A private Postfix instance's files under BASE: the installed master.cf, main.cf and
    dynamic map list copied into ETC (then changed with postconf -c), data/ owned by postfix,
    an empty spool/."""
    for name in ("master.cf", "main.cf", "dynamicmaps.cf"):
        if os.path.exists(f"/etc/postfix/{name}"):
            shutil.copy(f"/etc/postfix/{name}", etc / name)
    if os.path.isdir("/etc/postfix/dynamicmaps.cf.d"):
        shutil.copytree("/etc/postfix/dynamicmaps.cf.d", etc / "dynamicmaps.cf.d")
    (base / "data").mkdir()
    (base / "spool").mkdir()
    shutil.chown(base / "data", "postfix")


class Postfix:
    """A private Postfix instance: `Postfix().start()`, `.port`, `.maildir(local)`, `.stop()`."""

    def __init__(self, sasl_path: str | None = None):
        """With sasl_path (a Dovecot auth socket) also a submission smtpd on `.submission_port`:
        SASL PLAIN/LOGIN without TLS (loopback), relaying for authenticated clients only."""
        self.sasl_path = sasl_path
        self.submission_port = free_port() if sasl_path else None
        self.dir = Path(tempfile.mkdtemp(prefix="mt-ref-postfix-"))
        os.chmod(self.dir, 0o755)  # the postfix user must reach data/ and spool/
        self.etc = self.dir / "etc"
        self.etc.mkdir()
        self.mail = self.dir / "mail"
        self.log = self.dir / "start.log"
        self.port = free_port()
        self.running = False

    def maildir(self, local: str = "alice") -> Path:
        return self.mail / "example.test" / local

    def start(self) -> "Postfix":
        postfix_instance_dirs(self.dir, self.etc)
        for local in ("alice", "postmaster"):
            for sub in ("cur", "new", "tmp"):
                (self.maildir(local) / sub).mkdir(parents=True)
        chown_tree(self.mail)
        nb = _nobody()
        settings = [
            f"queue_directory = {self.dir / 'spool'}", f"data_directory = {self.dir / 'data'}",
            "inet_interfaces = loopback-only", "inet_protocols = ipv4",
            "mynetworks = 192.0.2.1/32",  # the loopback client is a stranger: no relaying
            "mydestination =", f"myhostname = {HOSTNAME}", "mydomain = example.test",
            f"maillog_file = {self.dir / 'maillog'}", f"maillog_file_prefixes = {self.dir}",
            "syslog_name = postfix-mt-reference", "smtpd_peername_lookup = no", "alias_maps =",
            "alias_database =", "smtp_tls_security_level = none", "smtpd_tls_security_level = none",
            "default_transport = error", "relay_transport = error", "multi_instance_enable = no",
            "biff = no", "smtpd_banner = $myhostname ESMTP",
            # no penalty sleeps and no early disconnects: each case is its own short session
            "smtpd_error_sleep_time = 0", "smtpd_soft_error_limit = 100", "smtpd_hard_error_limit = 100",
            "smtpd_junk_command_limit = 1000",
            # an MX refuses relaying outright (Postfix's stock defer_unauth_destination is a 454
            # safety net for a mistyped relay_domains, not the answer of a configured MX)
            "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination",
            "virtual_mailbox_domains = example.test", f"virtual_mailbox_base = {self.mail}",
            "virtual_mailbox_maps = inline:{ alice@example.test=example.test/alice/, "
            "postmaster@example.test=example.test/postmaster/ }",
            f"virtual_uid_maps = static:{nb.pw_uid}", f"virtual_gid_maps = static:{nb.pw_gid}",
        ]
        subprocess.run(["postconf", "-c", str(self.etc), "-e", *settings], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        master = (self.etc / "master.cf").read_text()
        master = re.sub(r"(?m)^smtp(\s+)inet", f"127.0.0.1:{self.port}\\1inet", master, count=1)
        if self.sasl_path:
            opts = ["syslog_name=postfix-mt-reference/submission", "smtpd_sasl_auth_enable=yes",
                    "smtpd_sasl_type=dovecot", f"smtpd_sasl_path={self.sasl_path}",
                    "smtpd_sasl_security_options=noanonymous", "smtpd_tls_auth_only=no",
                    "smtpd_client_restrictions=permit_sasl_authenticated,reject",
                    "smtpd_relay_restrictions=permit_sasl_authenticated,reject"]
            master += (f"127.0.0.1:{self.submission_port} inet n - n - - smtpd "
                       + " ".join(f"-o {o}" for o in opts) + "\n")
        (self.etc / "master.cf").write_text(master)
        subprocess.run(["postconf", "-c", str(self.etc), "-F", "*/*/chroot = n"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _quiet(["postfix", "-c", str(self.etc), "check"], self.log)
        if _quiet(["postfix", "-c", str(self.etc), "start"], self.log) != 0:
            raise RuntimeError(f"private Postfix would not start: {self.log.read_text()[-800:]}")
        self.running = True
        wait_port(self.port)
        if self.submission_port:
            wait_port(self.submission_port)
        return self

    def stop(self) -> None:
        if self.running:
            _quiet(["postfix", "-c", str(self.etc), "stop"], self.log)
            pidfile = self.dir / "spool" / "pid" / "master.pid"
            for _ in range(100):  # `postfix stop` returns before the master has gone
                try:
                    os.kill(int(pidfile.read_text().split()[0]), 0)
                except (OSError, ValueError):
                    break
                time.sleep(0.05)
            self.running = False
        shutil.rmtree(self.dir, ignore_errors=True)


class Dovecot:
    """A private Dovecot with imap and pop3 on loopback: `.imap_port`, `.pop3_port`, `.maildir`."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="mtref"))  # short: unix socket paths are limited
        os.chmod(self.dir, 0o755)
        self.mail = self.dir / "mail"
        self.conf = self.dir / "dovecot.conf"
        self.log = self.dir / "start.log"
        self.imap_port = free_port()
        self.pop3_port = free_port()
        self.auth_socket = self.dir / "auth-client"  # for Postfix's SASL (smtpd_sasl_type=dovecot)
        self.pid: int | None = None

    def maildir(self, local: str = "alice") -> Path:
        return self.mail / "example.test" / local

    def config(self) -> str:
        d, nb = self.dir, _nobody()
        return f"""
protocols = imap pop3
listen = 127.0.0.1
instance_name = mailtools-ref-{os.getpid()}-{d.name}
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_failure_delay = 0
auth_mechanisms = plain login
first_valid_uid = 100
mail_location = maildir:{self.mail}/%d/%n
pop3_uidl_format = %08Xu%08Xv
namespace inbox {{
  inbox = yes
  separator = /
}}
passdb {{
  driver = passwd-file
  args = {d}/users
}}
userdb {{
  driver = static
  args = uid={nb.pw_uid} gid={nb.pw_gid} home={self.mail}/%d/%n
}}
service anvil {{
  chroot =
}}
service auth {{
  unix_listener {self.auth_socket} {{
    mode = 0666
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {self.pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
"""

    def start(self) -> "Dovecot":
        (self.dir / "run").mkdir()
        (self.dir / "state").mkdir()
        for sub in ("cur", "new", "tmp"):
            (self.maildir() / sub).mkdir(parents=True, exist_ok=True)
        chown_tree(self.mail)
        (self.dir / "users").write_text(f"{USER}:{{PLAIN}}{PASSWORD}::::::\n")
        self.conf.write_text(self.config())
        if _quiet(["dovecot", "-c", str(self.conf)], self.log, timeout=30) != 0:
            raise RuntimeError(f"private Dovecot would not start: {self.log.read_text()[-800:]}")
        pidfile = self.dir / "run" / "master.pid"
        for _ in range(600):  # the file may exist a moment before its PID is in it (30 s)
            try:
                self.pid = int(pidfile.read_text().split()[0])
                break
            except (OSError, ValueError, IndexError):
                time.sleep(0.05)
        else:
            raise RuntimeError(f"private Dovecot wrote no PID: {self.log.read_text()[-800:]}")
        wait_port(self.imap_port)
        wait_port(self.pop3_port)
        return self

    def stop(self) -> None:
        stop_pid(self.pid)
        self.pid = None
        shutil.rmtree(self.dir, ignore_errors=True)


def users_line(user: str = USER, password: str = PASSWORD) -> str:
    """A mailtools users-file line with a SHA512-CRYPT hash: cheap to check, so the many logins
    of the differential tests cost little (the schemes themselves are core/auth's tests)."""
    from mailtools.core import auth

    return f"{user}:{{SHA512-CRYPT}}{auth.sha_crypt(password.encode(), '$6$' + os.urandom(6).hex())}::::::\n"


class Mailtools:
    """`mailtools COMMAND --listen 127.0.0.1:PORT` on a data root of its own under tmp (fill
    `.root` before `start()`), output to a log file, stopped by its PID."""

    def __init__(self, tmp: Path, command: str, extra_config: str = ""):
        self.tmp, self.command = tmp, command
        self.root = tmp / "root"
        self.root.mkdir(exist_ok=True)
        self.port = free_port()
        self.cfg = tmp / "mailtools.toml"
        self.cfg.write_text(f'hostname = "{HOSTNAME}"\nroot = "{self.root}"\nlocal_domains = ["example.test"]\n'
                            + extra_config)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Mailtools":
        self.log = open(self.tmp / f"{self.command}.log", "wb")
        env = dict(os.environ, MAILTOOLS_CONFIG=str(self.cfg), PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen([sys.executable, "-m", "mailtools", self.command, "--listen",
                                      f"127.0.0.1:{self.port}"], env=env, cwd=str(REPO),
                                     stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_port(self.port, proc=self.proc)
        except (TimeoutError, RuntimeError):
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc is not None:
            self.log.close()
            self.proc = None


def dovecot_and_mailtools(tmp: Path, command: str, fill):
    """For a module fixture: a private Dovecot and `mailtools COMMAND` (imap-serve, pop3-serve),
    each over a Maildir for USER that fill(path) wrote the same way; yields (dovecot, mailtools).
    Skips (pytest) when Dovecot will not start."""
    import pytest

    dv = Dovecot()
    try:
        fill(dv.maildir())
        dv.start()
    except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as e:
        dv.stop()
        pytest.skip(f"the private Dovecot would not start: {e}")
    mt = Mailtools(tmp, command, "[auth]\nfail_delay = 0\n")
    try:
        (mt.root / "users").write_text(users_line())
        fill(mt.root / "mail" / "example.test" / USER.split("@")[0])
        mt.start()
        yield dv, mt
    finally:
        mt.stop()
        dv.stop()


# --- the same raw client for both sides -------------------------------------------------------
class Conn:
    """A line-level client over a plain socket: send raw bytes, read one reply / line at a time."""

    def __init__(self, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.timed_out = False  # the last empty line() was a read timeout, not a close

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        """One line up to and including LF; b'' when the server closed."""
        while b"\n" not in self.buf:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            except socket.timeout:
                self.timed_out, chunk = True, b""
            if not chunk:
                out, self.buf = self.buf, b""
                return out
            self.buf += chunk
        i = self.buf.index(b"\n") + 1
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def closed(self, timeout: float = 3.0) -> bool:
        """True when the server has closed the connection (EOF or reset) within timeout."""
        if self.buf:
            return False
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
