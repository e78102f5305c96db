#!/usr/bin/env python3
"""trace-headers benchmark: an mbox of N messages (default 10,000) with 3-8 Received hops each,
in the formats of the fixture corpus (Postfix, Exim, Sendmail, qmail, Exchange, Gmail, ...),
each with an Authentication-Results field. The rest of each message (headers, 2-20 KB bodies:
plain, multipart/alternative, base64 attachments) comes from the reference benchmarks' corpus
generator (tests/bench/workload/gen_maildir.py) when it is there, so the workload
matches theirs; else a plain 1-4 KB body (--plain-bodies forces that).

Measured, each as a whole process (start-up included), best of --runs, in wall-clock time and in
CPU time (user+sys of the child: the steadier figure on a shared machine):
  mailtools  `python -m mailtools trace-headers --json MBOX > /dev/null`
  baseline   Python's mailbox.mbox + email (compat32) parsing the same mbox and listing the
             Received fields of each message (a bare parse: no hop analysis at all)
Prints both in messages/s and the ratio (mailtools / baseline; > 1 means mailtools is faster).

    python3 tests/bench/bench_trace.py [--messages 10000] [--runs 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

BASELINE = r"""
import mailbox, sys
n = hops = 0
for msg in mailbox.mbox(sys.argv[1], create=False):
    hops += len(msg.get_all("Received") or [])
    n += 1
print(n, hops)
"""

HOP_TEMPLATES = [
    # Postfix with TLS
    "Received: from {h1} ({h1} [{ip4}])\n\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)\n"
    "\t key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256)\n"
    "\t(No client certificate requested)\n\tby {h2} (Postfix) with ESMTPS id {qid}\n\tfor <{rcpt}>; {date}",
    # Exim new TLS notation
    "Received: from [{ip4}] (helo={h1})\n\tby {h2} with esmtps  (TLS1.3) tls TLS_AES_256_GCM_SHA384\n"
    "\t(Exim 4.96)\n\t(envelope-from <{sender}>)\n\tid {qid}-000123-AB\n\tfor {rcpt}; {date}",
    # Sendmail
    "Received: from {h1} ({h1} [{ip4}])\n\tby {h2} (8.15.2/8.15.2) with ESMTPS id {qid}\n"
    "\t(version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384 bits=256 verify=NOT)\n\tfor <{rcpt}>; {date}",
    # qmail
    "Received: from unknown (HELO {h1}) ({ip4})\n  by {h2} with SMTP; {date}",
    # Exchange Online
    "Received: from {H1} ({ip6}) by {H2} ({ip6b}) with Microsoft SMTP Server\n"
    " (version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id 15.20.7633.22 via Frontend\n"
    " Transport; {date}",
    # Gmail
    "Received: from {h1} ({h1}. [{ip4}])\n        by mx.google.com with ESMTPS id {qid}.123.2026.11.28.02.00.00\n"
    "        for <{rcpt}>\n        (version=TLS1_3 cipher=TLS_AES_256_GCM_SHA384 bits=256/256);\n        {date}",
    # Dovecot LMTP
    "Received: from {h1} ([{ip4}])\n\tby {h2} with LMTPS\n\tid {qid}\n\t(envelope-from <{sender}>)\n"
    "\tfor <{rcpt}>; {date}",
    # IIS SMTPSVC
    "Received: from {h1} ([{ip4}]) by {h2} with Microsoft SMTPSVC(6.0.3790.4675);\n\t {date}",
]

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def rfc_date(epoch: int, offset_min: int) -> str:
    t = time.gmtime(epoch + offset_min * 60)
    sign = "+" if offset_min >= 0 else "-"
    off = abs(offset_min)
    return (f"{DAYS[t.tm_wday]}, {t.tm_mday:02d} {MONTHS[t.tm_mon - 1]} {t.tm_year} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {sign}{off // 60:02d}{off % 60:02d}")


def _reference_generator():
    ref = Path(os.environ.get("REFERENCE_BENCH", Path(__file__).resolve().parent / "workload"))
    if not (ref / "gen_maildir.py").exists():
        return None
    sys.path.insert(0, str(ref))
    try:
        import gen_maildir
    except ImportError:
        return None
    finally:
        sys.path.pop(0)
    return gen_maildir


def message(rng: random.Random, i: int, gen=None) -> bytes:
    base = 1795860000 + i * 37
    nhops = rng.randint(3, 8)
    hosts = [f"mx{rng.randint(1, 99)}.relay{k}.example.test" for k in range(nhops + 1)]
    lines = []
    t = base
    for k in range(nhops):
        t += rng.randint(0, 30)
        tpl = HOP_TEMPLATES[(i + k) % len(HOP_TEMPLATES)]
        lines.append(tpl.format(
            h1=hosts[k], h2=hosts[k + 1], H1=hosts[k].upper(), H2=hosts[k + 1].upper(),
            ip4=f"192.0.2.{rng.randint(1, 254)}", ip6=f"2001:db8:{k:x}::{rng.randint(1, 65535):x}",
            ip6b=f"2001:db8:{k + 1:x}::1", qid=f"{rng.getrandbits(40):010X}",
            rcpt=f"user{i}@example.test", sender=f"sender{i}@example.org",
            date=rfc_date(t, rng.choice((0, 60, -300, -480))),
        ))
    lines.reverse()  # newest on top
    auth = (f"Authentication-Results: {hosts[-1]};\n\tspf=pass smtp.mailfrom=sender{i}@example.org;\n"
            f"\tdkim=pass header.d=example.org header.s=s1;\n\tdmarc=pass header.from=example.org\n")
    env = f"From sender{i}@example.org {time.asctime(time.gmtime(base))}\n"
    if gen is not None:
        ref, _t = gen.message(rng, i)
        head, _, body = ref.decode().partition("\n\n")
        kept = "\n".join(line for line in _unfold(head) if not line.lower().startswith("received:"))
        return (env + "\n".join(lines) + "\n" + auth + kept + "\n\n" + _escape_from(body) + "\n").encode()
    body = "".join(f"line {n} of message {i}: " + "lorem ipsum dolor sit amet " * 2 + "\n"
                   for n in range(rng.randint(15, 60)))
    head = "\n".join(lines) + "\n" + auth + (
        f"Return-Path: <sender{i}@example.org>\nMessage-ID: <{i}.{rng.getrandbits(32):x}@example.org>\n"
        f"From: Sender {i} <sender{i}@example.org>\nTo: <user{i}@example.test>\n"
        f"Subject: message {i}\nDate: {rfc_date(base, 0)}\nMIME-Version: 1.0\n"
        f"Content-Type: text/plain; charset=utf-8\n\n"
    )
    return (env + head + body + "\n").encode()


def _unfold(head: str) -> list[str]:
    out: list[str] = []
    for line in head.split("\n"):
        if line[:1] in (" ", "\t") and out:
            out[-1] += "\n" + line
        else:
            out.append(line)
    return out


def _escape_from(body: str) -> str:
    # mboxrd: a body line starting with "From " (or ">From ") gets one more ">"
    return "\n".join(">" + l if l.lstrip(">").startswith("From ") else l for l in body.split("\n"))


def write_mbox(path: Path, n: int, seed: int = 4, plain_bodies: bool = False) -> None:
    rng = random.Random(seed)
    gen = None if plain_bodies else _reference_generator()
    with open(path, "wb") as f:
        for i in range(n):
            f.write(message(rng, i, gen))


def cpu_timed(cmd: list[str], runs: int) -> tuple[float, float, bytes]:
    import resource

    best_wall = best_cpu = None
    out = b""
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if p.returncode != 0:
            sys.exit(f"{cmd!r} failed ({p.returncode}): {p.stderr.decode()[-500:]}")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        out = p.stdout
        best_wall = wall if best_wall is None else min(best_wall, wall)
        best_cpu = cpu if best_cpu is None else min(best_cpu, cpu)
    return best_wall, best_cpu, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--keep", help="write the mbox here and keep it")
    ap.add_argument("--plain-bodies", action="store_true", help="small plain bodies, no reference corpus")
    args = ap.parse_args()
    tmp = Path(args.keep or tempfile.mkdtemp(prefix="bench-trace-"))
    tmp.mkdir(parents=True, exist_ok=True)
    mbox = tmp / "bench.mbox"
    write_mbox(mbox, args.messages, plain_bodies=args.plain_bodies)
    size = mbox.stat().st_size
    print(f"mbox: {args.messages} messages, {size / 1e6:.1f} MB ({mbox})")

    base_wall, base_cpu, base_out = cpu_timed([sys.executable, "-c", BASELINE, str(mbox)], args.runs)
    n_base, hops_base = map(int, base_out.split())
    mt_wall, mt_cpu, mt_out = cpu_timed(
        [sys.executable, "-m", "mailtools", "trace-headers", "--json", str(mbox)], args.runs)
    import json

    reports = [json.loads(line) for line in mt_out.splitlines()]
    hops_mt = sum(len(r["hops"]) for r in reports)
    undated = sum(1 for r in reports for h in r["hops"] if h["timestamp"] is None)
    if len(reports) != n_base or hops_mt != hops_base or undated:
        print(f"MISMATCH: baseline {n_base} msgs/{hops_base} hops, mailtools {len(reports)}/{hops_mt}, "
              f"{undated} undated hops")
    n = len(reports)
    print(f"{'':36} {'wall s':>7} {'msg/s':>7}   {'cpu s':>7} {'msg/s':>7}")
    print(f"{'baseline mailbox+email bare parse':36} {base_wall:7.2f} {n_base / base_wall:7.0f}   "
          f"{base_cpu:7.2f} {n_base / base_cpu:7.0f}   ({hops_base} Received fields)")
    print(f"{'mailtools trace-headers --json':36} {mt_wall:7.2f} {n / mt_wall:7.0f}   "
          f"{mt_cpu:7.2f} {n / mt_cpu:7.0f}   ({hops_mt} hops)")
    print(f"ratio mailtools/baseline (msg/s): wall {base_wall / mt_wall:.2f}x, cpu {base_cpu / mt_cpu:.2f}x"
          "  (> 1: mailtools is faster)")
    if not args.keep:
        mbox.unlink()
        os.rmdir(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
