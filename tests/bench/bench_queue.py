#!/usr/bin/env python3
"""bench_queue.py - the spool (mailtools.core.queue) under load, and its hand-off cost against
Postfix's.

    python3 tests/bench/bench_queue.py [--count 1000] [-n 40]

1. durable enqueue, in one process: COUNT messages of 2 KB (the reference generator's message),
   each fsynced (files and directories) before the next: msg/s.
2. two runner processes draining those COUNT entries at once (claim by rename, update the
   envelope durably, release as delivered): entries/s, and a check that no entry was taken twice.
3. the hand-off into the queue, one process per message, as cron or a web app does it:
   mailtools (interpreter + queue module + enqueue of the message on stdin) against Postfix's
   `/usr/sbin/sendmail -i` (sendmail + postdrop into the maildrop; the Postfix daemon need not
   run). Median wall time of N calls each, interleaved, and the ratio. Files this run adds to
   Postfix's maildrop are removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from mailtools.core.queue import Queue  # noqa: E402

GEN = Path(__file__).resolve().parent / "workload" / "gen_maildir.py"
MAILDROP = Path("/var/spool/postfix/maildrop")
POSTFIX_SENDMAIL = "/usr/sbin/sendmail"

HANDOFF = (
    "import sys\n"
    "from mailtools.core.queue import Queue\n"
    "Queue(sys.argv[1]).enqueue('bench@example.test', ['rcpt@example.net'], sys.stdin.buffer.read())\n"
)

DRAIN = (
    "import sys, time\n"
    "from mailtools.core.queue import Queue\n"
    "q = Queue(sys.argv[1]); got = 0\n"
    "for qid in q.ids('new'):\n"
    "    e = q.claim(qid)\n"
    "    if e is None: continue\n"
    "    for r in e.recipients: r.state = 'sent'; r.attempts += 1; r.last_reply = '250 2.0.0 ok'\n"
    "    q.update(e); q.release(e); got += 1\n"
    "print(got)\n"
)


def message(work: Path) -> bytes:
    path = work / "msg.eml"
    if GEN.exists():
        subprocess.run([sys.executable, str(GEN), "one", str(path), "--size", "2048"], check=True,
                       stdout=subprocess.DEVNULL)
        return path.read_bytes()
    head = b"From: a@example.org\nTo: b@example.net\nSubject: bench\n\n"
    return head + b"x" * (2048 - len(head) - 1) + b"\n"


def bench_enqueue(qdir: Path, data: bytes, count: int) -> float:
    q = Queue(qdir)
    t = time.perf_counter()
    for _ in range(count):
        q.enqueue("bench@example.test", ["rcpt@example.net"], data)
    return count / (time.perf_counter() - t)


def bench_drain(qdir: Path, count: int, env: dict) -> tuple[float, int]:
    t = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", DRAIN, str(qdir)], stdout=subprocess.PIPE, env=env)
             for _ in range(2)]
    taken = sum(int(p.communicate()[0]) for p in procs)
    return count / (time.perf_counter() - t), taken


def run_once(cmd: list[str], data: bytes, env: dict) -> float:
    t = time.perf_counter()
    p = subprocess.run(cmd, input=data, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    dt = (time.perf_counter() - t) * 1000
    if p.returncode != 0:
        sys.exit(f"exit {p.returncode}: {' '.join(cmd)}: {p.stderr.decode(errors='replace')}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("-n", type=int, default=40)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-queue-"))
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONPYCACHEPREFIX=str(work / "pycache"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as after pip install: bytecode cached
    try:
        data = message(work)
        qdir = work / "queue"
        rate = bench_enqueue(qdir, data, a.count)
        print(f"1. durable enqueue, one process      {rate:8.0f} msg/s  ({a.count} x {len(data)} B)")
        drain, taken = bench_drain(qdir, a.count, env)
        left = len(Queue(qdir).entries())
        print(f"2. two runners draining the queue    {drain:8.0f} entries/s (taken {taken} of {a.count}, "
              f"left {left}{', DOUBLE CLAIM' if taken != a.count else ''})")

        ours = [sys.executable, "-c", HANDOFF, str(work / "queue3")]
        theirs = [POSTFIX_SENDMAIL, "-i", "-f", "bench@example.test", "rcpt@example.net"]
        have_postfix = os.path.exists(POSTFIX_SENDMAIL) and MAILDROP.is_dir() and os.geteuid() == 0
        before = set(os.listdir(MAILDROP)) if have_postfix else set()
        floor = [sys.executable, "-c", "pass"]
        a_ms, b_ms, f_ms = [], [], []
        for i in range(3 + a.n):  # 3 warm-ups each, then interleaved
            x = run_once(ours, data, env)
            y = run_once(theirs, data, env) if have_postfix else None
            z = run_once(floor, b"", env)
            if i >= 3:
                a_ms.append(x)
                f_ms.append(z)
                if y is not None:
                    b_ms.append(y)
        ma = statistics.median(a_ms)
        print(f"3. hand-off, one process per message: mailtools {ma:6.1f} ms (min {min(a_ms):.1f}, n={len(a_ms)})")
        print(f"   (interpreter floor, python -c pass: {statistics.median(f_ms):.1f} ms)")
        if b_ms:
            mb = statistics.median(b_ms)
            print(f"                                      postfix   {mb:6.1f} ms (min {min(b_ms):.1f}, n={len(b_ms)})")
            print(f"   ratio mailtools/postfix: {ma / mb:.2f}x  (below 1 is faster)")
        else:
            print("   Postfix sendmail/maildrop not available (or not root): no reference figure")
        if have_postfix:
            for name in set(os.listdir(MAILDROP)) - before:
                try:
                    os.unlink(MAILDROP / name)
                except OSError:
                    pass
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
