#!/usr/bin/env python3
"""IMAP benchmark: mailtools imap-serve vs Dovecot on the same 10,000-message Maildir workload.

Same corpus for both (reference-bench gen_maildir.py, seed 42: 2-20 KB, varied headers), two
copies so each server has its own index files; same client (reference-bench imapbench.py,
Python imaplib); same password hash (BLF-CRYPT) in both users files. Prints both medians and
the ratio mailtools/Dovecot per step. Loopback only. The trials alternate between the two
servers (Dovecot run 1, mailtools run 1, Dovecot run 2, ...) so that load from other users of
the machine weighs on both sides alike; the load average is printed before and after.

usage: python3 tests/bench/bench_imap.py [--count 10000] [--runs 3] [--big]
       (--big adds LOGIN+SELECT on a 100,000-message Maildir: ~1.1 GB, several minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import shutil
import signal
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: shared loopback helpers
from support_net import bytecode_env, free_port, wait_port  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
REF = Path(os.environ.get("REFERENCE_BENCH", Path(__file__).resolve().parent / "workload"))
WORK = Path(os.environ.get("BENCH_IMAP_DIR", "/tmp/mailtools-bench-imap"))
PASSWORD = "pass"


def corpus(count: int, seed: int) -> Path:
    src = WORK / f"corpus-{count}-{seed}"
    if not (src / "cur").is_dir():
        subprocess.run([sys.executable, str(REF / "gen_maildir.py"), "maildir", str(src), str(count),
                        "--seed", str(seed)], check=True)
    return src


def copy_store(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    # hard links: message files are never modified, only renamed, so both servers can share them
    subprocess.run(["cp", "-al", str(src), str(dst)], check=True)


def start_dovecot(maildir_user_dir: Path, hashed: str):
    d = WORK / "dovecot"
    shutil.rmtree(d, ignore_errors=True)
    for sub in ("run", "state", "home"):
        (d / sub).mkdir(parents=True)
    (d / "passwd").write_text(f"user:{hashed}\nbig:{hashed}\n")
    port = free_port()
    for p in [WORK, *WORK.rglob("*")]:
        os.chown(p, 65534, 65534)
    os.chmod(WORK, 0o755)
    conf = d / "dovecot.conf"
    conf.write_text(f"""protocols = imap
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/state
instance_name = mt-bench-{port}
log_path = {d}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = 100
mail_location = maildir:{maildir_user_dir}/%u
passdb {{
  driver = passwd-file
  args = username_format=%u {d}/passwd
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home={d}/home
}}
service auth {{
  user = root
}}
service auth-worker {{
  user = root
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
""")
    subprocess.run(["dovecot", "-c", str(conf)], check=True, stdout=subprocess.DEVNULL)
    wait_port(port, timeout=20)
    return port, conf


def start_mailtools(root: Path, hashed: str):
    (root / "users").write_text(f"user@example.test:{hashed}::::::\nbig@example.test:{hashed}::::::\n")
    cfg = WORK / "mailtools.toml"
    cfg.write_text(f'hostname = "mx.example.test"\nroot = "{root}"\nlocal_domains = ["example.test"]\n')
    port = free_port()
    env = bytecode_env(dict(os.environ, MAILTOOLS_CONFIG=str(cfg), PYTHONPATH=str(REPO)), WORK / "pycache")
    log = open(WORK / "imap-serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "mailtools", "imap-serve", "--listen", f"127.0.0.1:{port}"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    wait_port(port, timeout=20)
    return port, proc


def imapbench(port: int, user: str, runs: int, resets: list, label: str, select_only: bool = False) -> dict:
    cmd = [sys.executable, str(REF / "imapbench.py"), "--port", str(port), "--user", user,
           "--password", PASSWORD, "--runs", str(runs), "--label", label]
    for r in resets:
        cmd += ["--reset-glob", r]
    if select_only:
        cmd.append("--select-only")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("JSON "):
            return json.loads(line[5:])
    raise SystemExit(out)


def alternate(runs: int, dv_args: tuple, mt_args: tuple) -> tuple[dict, dict]:
    """`runs` one-trial imapbench calls per server, taking turns; the servers keep their memory
    between calls, so this is --runs N with the two sides interleaved. Returns (mt, dv) in
    imapbench's JSON shape (medians over the trials)."""
    res: dict = {"dv": [], "mt": []}
    for _ in range(runs):
        res["dv"] += imapbench(*dv_args)["runs"]
        res["mt"] += imapbench(*mt_args)["runs"]

    def summary(trials: list, label: str) -> dict:
        keys = [k for k, v in trials[0].items() if isinstance(v, float)]
        return {"label": label, "runs": trials,
                "median_s": {k: statistics.median(t[k] for t in trials) for k in keys}}

    return summary(res["mt"], mt_args[4]), summary(res["dv"], dv_args[4])


def load() -> str:
    return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _resets(d: Path) -> list:
    """mailtools' index: the uidlist (as for Dovecot) and its SQLite cache."""
    return [str(d / "dovecot-uidlist"), str(d / "mailtools-imap.cache*")]


def report(mt: dict, dv: dict) -> None:
    """Medians of the runs, and run 1 alone: the server's in-memory caches survive between
    runs (only the files are reset), so only run 1 of the *_nocache and *_1 steps is cold."""
    print(f"{'step':24s} {'mailtools':>10s} {'dovecot':>10s} {'ratio':>6s}   {'run 1: mt':>10s} {'dovecot':>10s} {'ratio':>6s}")
    for k, v in mt["median_s"].items():
        d = dv["median_s"].get(k)
        if not d:
            continue
        m1, d1 = mt["runs"][0].get(k), dv["runs"][0].get(k)
        first = f"{m1 * 1000:9.1f}ms {d1 * 1000:9.1f}ms {m1 / d1:5.2f}x" if m1 and d1 else ""
        print(f"{mt['label'] + ' ' + k:24s} {v * 1000:9.1f}ms {d * 1000:9.1f}ms {v / d:5.2f}x   {first}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--big", action="store_true")
    a = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from mailtools.core.auth import hash_password

    hashed = hash_password(PASSWORD, "BLF-CRYPT")
    WORK.mkdir(parents=True, exist_ok=True)
    src = corpus(a.count, 42)
    mt_root = WORK / "mt"
    mt_md = mt_root / "mail" / "example.test"
    dv_md = WORK / "dv"
    copy_store(src, mt_md / "user")
    copy_store(src, dv_md / "user" )
    if a.big:
        big = corpus(100000, 43)
        copy_store(big, mt_md / "big")
        copy_store(big, dv_md / "big")
    for n in ("user", "big"):  # mailtools' first login creates the special-use folders; Dovecot's too
        (mt_md / n / "subscriptions").touch() if (mt_md / n).exists() else None
    dv_port, conf = start_dovecot(dv_md, hashed)
    mt_port, proc = start_mailtools(mt_root, hashed)
    try:
        print(f"before: {load()}", flush=True)
        mt, dv = alternate(a.runs, (dv_port, "user", 1, [str(dv_md / "user" / "dovecot*")], "imap10k"),
                           (mt_port, "user@example.test", 1, _resets(mt_md / "user"), "imap10k"))
        report(mt, dv)
        if a.big:
            mt, dv = alternate(a.runs, (dv_port, "big", 1, [str(dv_md / "big" / "dovecot*")], "imap100k", True),
                               (mt_port, "big@example.test", 1, _resets(mt_md / "big"), "imap100k", True))
            report(mt, dv)
        print(f"after: {load()}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        subprocess.run(["doveadm", "-c", str(conf), "stop"], capture_output=True)


if __name__ == "__main__":
    main()
