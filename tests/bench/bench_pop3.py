#!/usr/bin/env python3
"""POP3 benchmark: mailtools pop3-serve vs Dovecot's pop3 on the SAME 10,000-message Maildir.

Corpus: reference-bench gen_maildir.py (seed 42: 2-20 KB, avg ~11 KB, files in cur/ with only
`,S=` sizes, so each server computes CRLF sizes itself the first time). mailtools opens it first
(it writes dovecot-uidlist), Dovecot then serves the same UIDs: the UIDL lists must be equal,
which is checked. Client: reference-bench pop3bench.py (Python poplib): connect+USER+PASS,
STAT, UIDL, RETR of every message, QUIT; median of --runs trials, warm page cache, after one
"first open" trial each with nothing cached (no index, no size cache).
Both users files hold the same SHA512-CRYPT hash. Loopback only.

usage: python3 tests/bench/bench_pop3.py [--count 10000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import poplib
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: shared loopback helpers
from support_net import bytecode_env, free_port, wait_port  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
REF = Path(os.environ.get("REFERENCE_BENCH", Path(__file__).resolve().parent / "workload"))
WORK = Path(os.environ.get("BENCH_POP3_DIR", "/tmp/mailtools-bench-pop3"))
NOBODY = 65534
PASSWORD = "pass"


def sha512_crypt(password: str) -> str:
    sys.path.insert(0, str(REPO))
    from mailtools.core.auth import sha_crypt

    return "{SHA512-CRYPT}" + sha_crypt(password.encode(), "$6$" + os.urandom(6).hex())


def build(count: int) -> Path:
    home = WORK / "home"
    maildir = home / "Maildir"
    shutil.rmtree(WORK, ignore_errors=True)
    home.mkdir(parents=True)
    subprocess.run([sys.executable, str(REF / "gen_maildir.py"), "maildir", str(maildir), str(count),
                    "--seed", "42"], check=True)
    for p in [home, *home.rglob("*")]:
        os.chown(p, NOBODY, NOBODY)
    os.chmod(WORK, 0o755)
    return maildir


def start_dovecot(hashed: str, home: Path):
    d = WORK / "dovecot"
    for sub in ("run", "state"):
        (d / sub).mkdir(parents=True)
    (d / "passwd").write_text(f"user:{hashed}:{NOBODY}:{NOBODY}::{home}::\n")
    port = free_port()
    conf = d / "dovecot.conf"
    conf.write_text(f"""protocols = pop3
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/state
instance_name = mt-pop3-bench-{port}
log_path = {d}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = 100
mail_location = maildir:~/Maildir
pop3_uidl_format = %08Xu%08Xv
passdb {{
  driver = passwd-file
  args = {d}/passwd
}}
userdb {{
  driver = passwd-file
  args = {d}/passwd
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
""")
    subprocess.run(["dovecot", "-c", str(conf)], check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, timeout=20)
    pidfile = d / "run" / "master.pid"
    for _ in range(200):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        time.sleep(0.05)
    return port, int(pidfile.read_text())


def start_mailtools(hashed: str, maildir: Path):
    root = WORK / "mailtools"
    (root / "mail" / "example.test").mkdir(parents=True)
    os.symlink(maildir, root / "mail" / "example.test" / "user")  # the same Maildir
    (root / "users").write_text(f"user@example.test:{hashed}::::::\n")
    cfg = WORK / "mailtools.toml"
    cfg.write_text(f'hostname = "bench.example.test"\nroot = "{root}"\nlocal_domains = ["example.test"]\n')
    port = free_port()
    env = bytecode_env(dict(os.environ, MAILTOOLS_CONFIG=str(cfg), PYTHONPATH=str(REPO)), WORK / "pycache")
    proc = subprocess.Popen([sys.executable, "-m", "mailtools", "pop3-serve", "--listen", f"127.0.0.1:{port}"],
                            env=env, stdout=subprocess.DEVNULL)
    wait_port(port, timeout=20)
    return port, proc


def uidls(port: int, user: str) -> list[bytes]:
    p = poplib.POP3("127.0.0.1", port)
    p.user(user)
    p.pass_(PASSWORD)
    _, lines, _ = p.uidl()
    p.quit()
    return lines


def pop3bench(port: int, user: str, label: str, runs: int, reset: list[str], limit=None) -> dict:
    args = [sys.executable, str(REF / "pop3bench.py"), "--port", str(port), "--user", user,
            "--password", PASSWORD, "--runs", str(runs), "--label", label]
    for g in reset:
        args += ["--reset-glob", g]
    if limit is not None:
        args += ["--limit", str(limit)]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    sys.stderr.write(out)
    for line in out.splitlines():
        if line.startswith("JSON "):
            return json.loads(line[5:])
    raise SystemExit(f"no result from pop3bench for {label}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("dovecot"):
        raise SystemExit("needs root (Dovecot runs its mail processes as nobody) and dovecot installed")
    maildir = build(a.count)
    hashed = sha512_crypt(PASSWORD)
    dport, dpid = start_dovecot(hashed, maildir.parent)
    mport, mproc = start_mailtools(hashed, maildir)
    try:
        # First opens, nothing cached: mailtools assigns the UIDs (writes dovecot-uidlist) and
        # reads every file for its CRLF size; then Dovecot builds its index from that uidlist
        # and computes the sizes itself.
        cold_m = pop3bench(mport, "user@example.test", "mailtools-first-open", 1, [], limit=0)
        for p in [maildir, *maildir.rglob("*")]:
            os.chown(p, NOBODY, NOBODY)  # mailtools ran as root; Dovecot's mail user is nobody
        cold_d = pop3bench(dport, "user", "dovecot-first-open", 1, [], limit=0)
        same = uidls(dport, "user") == uidls(mport, "user@example.test")
        warm_d = pop3bench(dport, "user", "dovecot", a.runs, [])
        warm_m = pop3bench(mport, "user@example.test", "mailtools", a.runs, [])
    finally:
        mproc.send_signal(signal.SIGTERM)
        mproc.wait(10)
        os.kill(dpid, signal.SIGTERM)
    n = warm_d["runs"][0]["retr_count"]
    print(f"POP3, {a.count} messages ({warm_d['runs'][0]['retr_bytes'] / 1e6:.0f} MB on the wire), "
          f"the same Maildir; UIDL lists identical: {'yes' if same else 'NO'}")
    print(f"{'step':<22}{'Dovecot':>12}{'mailtools':>12}{'mailtools/Dovecot':>20}")
    for r in (cold_d, cold_m):  # Dovecot sizes messages at the first STAT, mailtools at login
        r["median_s"]["open"] = r["median_s"]["login"] + r["median_s"]["stat"]
    rows = [("first LOGIN+STAT", cold_d, cold_m, "open"),
            ("LOGIN (warm)", warm_d, warm_m, "login"), ("STAT", warm_d, warm_m, "stat"),
            ("UIDL", warm_d, warm_m, "uidl"), (f"RETR all {n}", warm_d, warm_m, "retr_all"),
            ("QUIT", warm_d, warm_m, "quit")]
    for name, d, m, key in rows:
        td, tm = d["median_s"][key], m["median_s"][key]
        ratio = tm / td if td else float("inf")
        print(f"{name:<22}{td * 1000:>10.1f}ms{tm * 1000:>10.1f}ms{ratio:>19.2f}x")
    rd, rm = n / warm_d["median_s"]["retr_all"], n / warm_m["median_s"]["retr_all"]
    print(f"RETR rate: Dovecot {rd:.0f} msg/s, mailtools {rm:.0f} msg/s (mailtools/Dovecot {rm / rd:.2f})")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
