#!/usr/bin/env python3
"""tests/bench/mx_bulk: bulk MX resolution, `mailtools mx-lookup -` against `dig -f`.

Workload: 5,000 names on stdin, 4 in 5 with an MX record (each its own exchanger with an A and
an AAAA record), 1 in 5 NXDOMAIN; served by dnsmasq on a loopback port. mailtools does the full
resolution (MX, then A and AAAA of each exchanger: 13,000 queries); dig does MX only, one query
after another (5,000 queries). Two settings:

  1. plain: straight to dnsmasq on 127.0.0.1;
  2. delayed: through a small forwarder (started here) that answers each query 20 ms after it
     arrives, as a recursive resolver on the internet would. dig is sequential, so it runs on
     the first --dig-delayed names there (rate in names/s; 5,000 would take ~100 s).

Prints names/s for each side, and the ratio (mailtools / dig) per setting.

    python3 tests/bench/bench_mx_bulk.py [--names 5000] [--dig-delayed 1000] [--runs 1]
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
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

import support_dns  # noqa: E402

# One upstream socket; query ids rewritten so concurrent clients never collide; each answer held
# until `delay` after its query arrived. A plain select loop that drains both sockets on every
# wake-up, so the forwarder itself costs a few microseconds per query.
FORWARDER = r"""
import heapq, select, socket, struct, sys, time
listen_port, upstream_port, delay = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
down = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
down.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
down.bind(("127.0.0.1", listen_port))
up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
up.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
up.connect(("127.0.0.1", upstream_port))
down.setblocking(False)
up.setblocking(False)
pending = {}  # upstream id -> (client addr, client id bytes, arrival time)
held = []  # heap of (due time, seq, data, addr)
next_id = seq = 0
print("ready", flush=True)
while True:
    timeout = max(0.0, held[0][0] - time.monotonic()) if held else None
    readable, _, _ = select.select([down, up], [], [], timeout)
    now = time.monotonic()
    if down in readable:
        while True:
            try:
                data, addr = down.recvfrom(65535)
            except BlockingIOError:
                break
            if len(data) < 12:
                continue
            for _ in range(65536):
                next_id = (next_id + 1) & 0xFFFF
                if next_id not in pending:
                    break
            pending[next_id] = (addr, data[:2], now)
            up.send(struct.pack("!H", next_id) + data[2:])
    if up in readable:
        while True:
            try:
                data = up.recv(65535)
            except BlockingIOError:
                break
            entry = pending.pop(struct.unpack_from("!H", data)[0], None)
            if entry is not None:
                seq += 1
                heapq.heappush(held, (entry[2] + delay, seq, entry[1] + data[2:], entry[0]))
    now = time.monotonic()
    while held and held[0][0] <= now:
        _, _, data, addr = heapq.heappop(held)
        down.sendto(data, addr)
"""


def make_zone(n: int) -> tuple[dict, dict, list[str]]:
    mx, hosts, names = {}, {}, []
    for i in range(n):
        if i % 5 == 4:
            names.append(f"nx{i}.bench.test")
            continue
        d = f"d{i}.bench.test"
        mx[d] = [(10, f"mx.{d}")]
        hosts[f"mx.{d}"] = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", f"2001:db8::{i:x}"]
        names.append(d)
    return mx, hosts, names


def time_cmd(cmd: list[str], stdin: bytes, expect_lines: int | None = None) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - t0
    if p.returncode not in (0, 9, 68):  # dig -f exits 9/0; mx-lookup 68 (some NXDOMAIN)
        raise SystemExit(f"{cmd[0]} failed ({p.returncode}): {p.stderr.decode()[-500:]}")
    if expect_lines is not None:
        got = p.stdout.count(b"\n")
        if got != expect_lines:
            raise SystemExit(f"{' '.join(cmd[:4])}: expected {expect_lines} lines, got {got}")
    return elapsed


def bench(port: int, names: list[str], dig_names: list[str], runs: int, tmp: str) -> tuple[float, float]:
    stdin = ("\n".join(names) + "\n").encode()
    dig_file = os.path.join(tmp, "dig.txt")
    with open(dig_file, "w") as f:
        f.write("".join(f"{n} MX\n" for n in dig_names))
    mt = [sys.executable, "-m", "mailtools", "mx-lookup", "--nameserver", f"127.0.0.1:{port}", "-"]
    dig = ["dig", "@127.0.0.1", "-p", str(port), "+tries=1", "+time=5", "+noall", "+answer", "-f", dig_file]
    mt_rates, dig_rates = [], []
    for _ in range(runs):
        t = time_cmd(mt, stdin, expect_lines=len(names))
        mt_rates.append(len(names) / t)
        t = time_cmd(dig, b"")
        dig_rates.append(len(dig_names) / t)
    return statistics.median(mt_rates), statistics.median(dig_rates)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--names", type=int, default=5000)
    ap.add_argument("--dig-delayed", type=int, default=1000, help="names dig resolves behind the 20 ms forwarder")
    ap.add_argument("--delay-ms", type=float, default=20)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--skip-delayed", action="store_true")
    args = ap.parse_args()
    if not shutil.which("dig"):
        raise SystemExit("dig (dnsutils) is not installed")
    os.environ.setdefault("PYTHONPATH", str(REPO))
    tmp = tempfile.mkdtemp(prefix="bench-mx-")
    mx, hosts, names = make_zone(args.names)
    print(f"zone: {len(mx)} domains with MX (A+AAAA each), {len(names) - len(mx)} NXDOMAIN; starting dnsmasq...", flush=True)
    server = support_dns.start_dnsmasq(mx=mx, hosts=hosts, ttl=3600, tmpdir=tmp, extra=["cache-size=0"])
    forwarder = None
    try:
        mt, dg = bench(server.port, names, names, args.runs, tmp)
        print(f"(1) plain loopback dnsmasq: mailtools {mt:,.0f} names/s (MX+A+AAAA), dig -f {dg:,.0f} names/s (MX only); ratio {mt / dg:.2f}x")
        if not args.skip_delayed:
            fport = support_dns.free_udp_tcp_port()
            forwarder = subprocess.Popen([sys.executable, "-c", FORWARDER, str(fport), str(server.port), str(args.delay_ms / 1000)], stdout=subprocess.PIPE)
            forwarder.stdout.readline()
            mt2, dg2 = bench(fport, names, names[: args.dig_delayed], args.runs, tmp)
            print(f"(2) behind a {args.delay_ms:g} ms forwarder: mailtools {mt2:,.0f} names/s, dig -f {dg2:,.1f} names/s "
                  f"(on {min(args.dig_delayed, len(names))} names); ratio {mt2 / dg2:.1f}x")
    finally:
        if forwarder is not None:
            forwarder.terminate()
            forwarder.wait()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
