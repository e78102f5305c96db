#!/usr/bin/env python3
"""bench_relay_in: inbound SMTP into a Maildir, mailtools against Postfix, same run, same load.

Workload (tests/bench/relay_in in issue 6): `smtp-source -s 10 -m COUNT -l SIZE` to one local
user; the clock runs from smtp-source's start until every message is a file in the user's
Maildir/new.

- mailtools: `mailtools relay --listen 127.0.0.1:PORT` (the user's Maildir exists, so the
  address is known); it delivers into the Maildir, fsynced, before each 250.
- Postfix: a private instance (own config, spool and port; the system's Postfix is never
  touched): smtpd, then virtual(8) delivery into user/Maildir/, stock limits.

    python3 tests/bench/bench_relay_in.py [--count 5000] [--size 2048] [--no-postfix]

Prints both figures in messages/s and mailtools/Postfix. Needs root (Postfix). Loopback only.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_relay_out import REPO, SMTP_SOURCE, PrivatePostfix, free_port, wait_port  # noqa: E402


def count_new(d: Path) -> int:
    try:
        return sum(1 for _ in os.scandir(d))
    except FileNotFoundError:
        return 0


def drive(port: int, count: int, size: int, new: Path) -> float:
    """smtp-source into the server, then wait for the Maildir (no scans while it runs)."""
    t0 = time.monotonic()
    subprocess.run([SMTP_SOURCE, "-s", "10", "-m", str(count), "-l", str(size), "-f", "a@example.test",
                    "-t", "user@example.test", f"127.0.0.1:{port}"], check=True, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while count_new(new) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {count_new(new)} of {count} delivered")
        time.sleep(0.005)
    return time.monotonic() - t0


def bench_mailtools(count: int, size: int) -> float:
    tmp = Path(tempfile.mkdtemp(prefix="mt-bench-relay-in-"))
    proc = None
    try:
        root = tmp / "root"
        box = root / "mail" / "example.test" / "user"
        for sub in ("cur", "new", "tmp"):
            (box / sub).mkdir(parents=True)
        port = free_port()
        cfg = tmp / "mailtools.toml"
        cfg.write_text(
            f'hostname = "mx.example.test"\nroot = "{root}"\nlocal_domains = ["example.test"]\n'
            f'[dns]\nnameservers = ["127.0.0.1:9"]\ntimeout = 1\n'
            f'[relay]\nlisten = ["127.0.0.1:{port}"]\n'
        )
        env = dict(os.environ, MAILTOOLS_CONFIG=str(cfg), PYTHONPATH=str(REPO))
        proc = subprocess.Popen([sys.executable, "-m", "mailtools", "relay"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port)
        time.sleep(0.5)
        return drive(port, count, size, box / "new")
    finally:
        if proc is not None:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


def bench_postfix(count: int, size: int) -> float:
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        raise RuntimeError("needs a 'nobody' user for virtual(8) delivery") from None
    pf = PrivatePostfix([])
    try:
        vmail = pf.dir / "vmail"
        (vmail / "user" / "Maildir" / "new").mkdir(parents=True)
        for p in (vmail, vmail / "user", vmail / "user" / "Maildir", vmail / "user" / "Maildir" / "new"):
            os.chown(p, nobody.pw_uid, nobody.pw_gid)
        pf.postconf(
            "virtual_mailbox_domains = example.test", f"virtual_mailbox_base = {vmail}",
            "virtual_mailbox_maps = inline:{ user@example.test=user/Maildir/ }",
            f"virtual_uid_maps = static:{nobody.pw_uid}", f"virtual_gid_maps = static:{nobody.pw_gid}",
        )
        pf.start()
        time.sleep(0.5)
        return drive(pf.port, count, size, vmail / "user" / "Maildir" / "new")
    finally:
        pf.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--no-postfix", action="store_true", help="measure mailtools only")
    a = ap.parse_args()
    mt = bench_mailtools(a.count, a.size)
    print(f"relay_in mailtools: {a.count} msgs in {mt:.2f}s = {a.count / mt:.0f} msg/s"
          f" (load average {os.getloadavg()[0]:.1f})", flush=True)
    if a.no_postfix:
        return 0
    pf = bench_postfix(a.count, a.size)
    print(f"relay_in postfix:   {a.count} msgs in {pf:.2f}s = {a.count / pf:.0f} msg/s"
          f" (load average {os.getloadavg()[0]:.1f})", flush=True)
    print(f"relay_in ratio mailtools/postfix: {pf / mt:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
