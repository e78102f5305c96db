#!/usr/bin/env python3
"""bench_sendmail.py - per-message wall time of `sendmail -t -i < 2 KB message`, start-up
included: mailtools (through a `sendmail` symlink to the installed script) against Postfix's
/usr/sbin/sendmail (hand-off to postdrop; the Postfix daemon may be stopped, the maildrop keeps
it) and msmtp in sendmail mode handing to a local smtp-sink; plus the interpreter floor.

    python3 tests/bench/bench_sendmail.py [-n 50]

Each figure: median (min-max) of N runs after 3 warm-ups (like reference-bench/cmdtime.py).
Files this run adds to Postfix's maildrop are removed at the end.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MAILDROP = Path("/var/spool/postfix/maildrop")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CPU: dict[str, float] = {}


def timed(cmd, stdin_file, n, env=None, warmup=3):
    walls, cpus = [], []
    for i in range(warmup + n):
        with open(stdin_file, "rb") if stdin_file else open(os.devnull, "rb") as f:
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.monotonic()
            p = subprocess.run(cmd, stdin=f, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
            dt = time.monotonic() - t
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if p.returncode != 0:
            sys.exit(f"exit {p.returncode}: {cmd}: {p.stderr.decode(errors='replace')}")
        if i >= warmup:
            walls.append(dt * 1000)
            cpus.append(((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)) * 1000)
    return sorted(walls), statistics.median(cpus)


def show(label, result):
    walls, cpu = result
    med = statistics.median(walls)
    CPU[label] = cpu
    print(f"{label:<48} median {med:7.1f} ms  (min {walls[0]:.1f}, max {walls[-1]:.1f}, n={len(walls)}), "
          f"cpu {cpu:.1f} ms")
    return med


def script_path() -> str:
    cand = Path(sys.executable).parent / "mailtools"
    return str(cand) if cand.exists() else shutil.which("mailtools") or sys.exit("mailtools not installed")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=50)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-sendmail-"))
    root = work / "root"
    root.mkdir()
    cfg = work / "mailtools.toml"
    cfg.write_text(f'hostname = "mx.example.test"\nroot = "{root}"\nlocal_domains = ["example.test"]\n')
    (work / "sendmail").symlink_to(script_path())
    eml = work / "msg.eml"
    body = "".join(f"line {i:04d} of the benchmark message, padded to a realistic width.....\n" for i in range(26))
    eml.write_text("From: bench@example.test\nTo: user@example.test\nSubject: bench\n\n" + body[: 2048 - 60])
    # Byte code as an installed package has it (pip compiles on install). Where
    # PYTHONDONTWRITEBYTECODE is set (as in some sandboxes) every run would compile mailtools
    # from source; a private pycache prefix, filled by the warm-up runs, avoids that without
    # writing into the source tree. The interpreter floor runs with the same settings.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    # XDG_CACHE_HOME: the parsed-config cache (core/config.py) of this run alone, so parallel
    # test runs of other configurations do not evict it.
    env.update(MAILTOOLS_CONFIG=str(cfg), PYTHONPYCACHEPREFIX=str(work / "pycache"),
               XDG_CACHE_HOME=str(work / "cache"))
    print(f"message: {eml.stat().st_size} bytes; N={a.n}; load average {os.getloadavg()[0]:.1f}")

    results = {}
    results["mailtools"] = show("mailtools sendmail -t -i (symlink)", timed([str(work / "sendmail"), "-t", "-i"], eml, a.n, env))
    queued = len(list((root / "queue" / "new").iterdir()))
    assert queued == a.n + 3, f"expected {a.n + 3} queue entries, found {queued}"

    if Path("/usr/sbin/sendmail").exists() and Path("/usr/sbin/postdrop").exists():
        before = set(os.listdir(MAILDROP)) if MAILDROP.exists() else set()
        try:
            results["postfix"] = show("postfix /usr/sbin/sendmail -t -i", timed(["/usr/sbin/sendmail", "-t", "-i"], eml, a.n))
        finally:
            if MAILDROP.exists():
                for name in set(os.listdir(MAILDROP)) - before:
                    try:
                        os.unlink(MAILDROP / name)
                    except OSError:
                        pass
    else:
        print("postfix sendmail: not installed, skipped")

    sink = None
    if shutil.which("msmtp") and shutil.which("smtp-sink"):
        port = free_port()
        sink = subprocess.Popen(["smtp-sink", *(["-u", "nobody"] if os.getuid() == 0 else []), "-c", f"127.0.0.1:{port}", "100"], stdout=subprocess.DEVNULL)
        time.sleep(0.3)
        rc = work / "msmtprc"
        rc.write_text(f"defaults\nauth off\ntls off\naccount default\nhost 127.0.0.1\nport {port}\nfrom bench@example.test\n")
        rc.chmod(0o600)
        try:
            results["msmtp"] = show("msmtp -t -i (SMTP to a local smtp-sink)", timed(["msmtp", "-C", str(rc), "-t", "-i"], eml, a.n))
        finally:
            sink.terminate()
            sink.wait(5)
    else:
        print("msmtp / smtp-sink: not installed, skipped")

    results["python"] = show(f"{Path(sys.executable).name} -c pass (floor)", timed([sys.executable, "-c", "pass"], None, a.n, env))
    results["python_S"] = show(f"{Path(sys.executable).name} -I -S -c pass", timed([sys.executable, "-I", "-S", "-c", "pass"], None, a.n, env))

    m = results["mailtools"]
    print()
    for key, label in (("postfix", "Postfix sendmail"), ("msmtp", "msmtp"), ("python", "bare interpreter")):
        if key in results:
            print(f"ratio mailtools / {label:<17} {m / results[key]:5.2f}x")
    if "postfix" in results:
        print(f"ratio (mailtools - interpreter) / Postfix  {(m - results['python']) / results['postfix']:5.2f}x"
              "  (our own work, start-up of Python itself taken out)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
