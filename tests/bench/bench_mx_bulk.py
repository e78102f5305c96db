#!/usr/bin/env python3
"""tests/bench/mx_bulk: bulk MX resolution, `mailtools mx-lookup -` against `dig -f`.

Workload: 5,000 names on stdin, 4 in 5 with an MX record (each its own exchanger with an A and
an AAAA record), 1 in 5 NXDOMAIN. mailtools does the full resolution (MX, then A and AAAA of each
exchanger: 13,000 queries); dig does MX only, one query after another (5,000 queries).

Both sides ask the same dnsmasq: a caching resolver (every record type cached, negative answers
too) forwarding bench.test to a second dnsmasq that holds the records, warmed with one pass of
every question before timing, as a recursive resolver with a warm cache answers. (dnsmasq keeps
--mx-host records in a list it scans on every query: asked directly with 4,000 of them it spends
~130 us per MX and ~200 us per NXDOMAIN answer, so the server, not the client, set the pace of
the sequential dig; --direct measures that setup.) Two settings:

  1. plain: straight to the caching dnsmasq on 127.0.0.1;
  2. delayed: through a small forwarder (started here) that answers each query 20 ms after it
     arrives, as a recursive resolver on the internet would. dig is sequential, so it runs on
     the first --dig-delayed names there (rate in names/s; 5,000 would take ~100 s).

Prints names/s for each side, and the ratio (mailtools / dig) per setting. On two or more cores
mailtools splits this input over two worker processes (mailtools.mxsplit; the client CPU shown
is theirs and the parent's together); dig -f is one process. The load average is printed at the
start and the end: the machine may be shared.

    python3 tests/bench/bench_mx_bulk.py [--names 5000] [--dig-delayed 1000] [--runs 1] [--direct]
"""

from __future__ import annotations

import argparse
import os
import resource
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


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a running process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_cmd(cmd: list[str], stdin: bytes, expect_lines: int | None = None, cwd: str | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command)."""
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd)
    elapsed = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    if p.returncode not in (0, 9, 68):  # dig -f exits 9/0; mx-lookup 68 (some NXDOMAIN)
        raise SystemExit(f"{cmd[0]} failed ({p.returncode}): {p.stderr.decode()[-500:]}")
    if expect_lines is not None:
        got = p.stdout.count(b"\n")
        if got != expect_lines:
            raise SystemExit(f"{' '.join(cmd[:4])}: expected {expect_lines} lines, got {got}")
    return elapsed, cpu


def warm(port: int, names: list[str], mx: dict, tmp: str) -> None:
    """Ask every question of the workload once (dig -f), so the caching dnsmasq has them all."""
    path = os.path.join(tmp, "warm.txt")
    with open(path, "w") as f:
        f.writelines(f"{n} MX\n" for n in names)
        f.writelines(f"{h} {t}\n" for d in mx for _, h in mx[d] for t in ("A", "AAAA"))
    subprocess.run(["dig", "@127.0.0.1", "-p", str(port), "+tries=2", "+time=2", "+noall", "-f", path], stdout=subprocess.DEVNULL, check=False)


def bench(port: int, names: list[str], dig_names: list[str], runs: int, tmp: str, server_pid: int) -> dict:
    """Median names/s of each side, and the CPU seconds the client and dnsmasq spent per run."""
    stdin = ("\n".join(names) + "\n").encode()
    dig_file = os.path.join(tmp, "dig.txt")
    with open(dig_file, "w") as f:
        f.write("".join(f"{n} MX\n" for n in dig_names))
    mt = [sys.executable, "-m", "mailtools", "mx-lookup", "--nameserver", f"127.0.0.1:{port}", "-"]
    dig = ["dig", "@127.0.0.1", "-p", str(port), "+tries=1", "+time=5", "+noall", "+answer", "-f", dig_file]
    rows: dict[str, list] = {"mt": [], "dig": []}
    for _ in range(runs):
        for key, cmd, n, inp, lines in (("mt", mt, len(names), stdin, len(names)), ("dig", dig, len(dig_names), b"", None)):
            s0 = proc_cpu(server_pid)
            wall, cpu = time_cmd(cmd, inp, expect_lines=lines, cwd=tmp)  # not the work tree: PYTHONPATH says which mailtools
            rows[key].append((n / wall, cpu, proc_cpu(server_pid) - s0))
    return {k: tuple(statistics.median(r[i] for r in v) for i in range(3)) for k, v in rows.items()}


def report(title: str, r: dict, dig_names: int) -> None:
    (mt, mt_cpu, mt_srv), (dg, dg_cpu, dg_srv) = r["mt"], r["dig"]
    print(f"{title}:\n"
          f"    mailtools mx-lookup -  {mt:9,.1f} names/s  (MX, A, AAAA; client CPU {mt_cpu:.2f} s, dnsmasq CPU {mt_srv:.2f} s)\n"
          f"    dig -f                 {dg:9,.1f} names/s  (MX only, {dig_names} names; client CPU {dg_cpu:.2f} s, dnsmasq CPU {dg_srv:.2f} s)\n"
          f"    ratio mailtools/dig    {mt / dg:9.2f}x", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--names", type=int, default=5000)
    ap.add_argument("--dig-delayed", type=int, default=1000, help="names dig resolves behind the 20 ms forwarder")
    ap.add_argument("--delay-ms", type=float, default=20)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--skip-delayed", action="store_true")
    ap.add_argument("--direct", action="store_true", help="ask the dnsmasq holding the records, without the caching one")
    args = ap.parse_args()
    if not shutil.which("dig"):
        raise SystemExit("dig (dnsutils) is not installed")
    os.environ.setdefault("PYTHONPATH", str(REPO))
    tmp = tempfile.mkdtemp(prefix="bench-mx-")
    # As after pip install: byte code cached (a sandbox may set PYTHONDONTWRITEBYTECODE, and
    # then every run would compile mailtools from source); the cache lives in the temp dir.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = os.path.join(tmp, "pycache")
    subprocess.run([sys.executable, "-m", "mailtools", "mx-lookup", "--nameserver", "127.0.0.1:9", "-"], input=b"", cwd=tmp, check=False)
    from mailtools import mxsplit

    workers = mxsplit.workers() if args.names >= mxsplit.SPLIT_MIN else 1
    print(f"cores: {len(os.sched_getaffinity(0))}; mailtools resolves in {workers} worker process(es)"
          f" (at least {mxsplit.SPLIT_MIN} names on stdin); load average {os.getloadavg()[0]:.2f}", flush=True)
    mx, hosts, names = make_zone(args.names)
    print(f"zone: {len(mx)} domains with MX (A+AAAA each), {len(names) - len(mx)} NXDOMAIN; starting dnsmasq...", flush=True)
    # the name servers run as daemons do, each in a session of its own (autogroup scheduling
    # shares the CPU per session first: in the benchmark's they would share its clients' slice)
    records = support_dns.start_dnsmasq(mx=mx, hosts=hosts, ttl=3600, tmpdir=tmp, extra=["cache-size=0"], session=True)
    server, forwarder = records, None
    try:
        if not args.direct:
            server = support_dns.start_dnsmasq(local=(), negcache=True, tmpdir=tmp, session=True, extra=[
                f"server=/bench.test/127.0.0.1#{records.port}", "cache-size=100000", "cache-rr=ANY",
                "neg-ttl=3600", "dns-forward-max=1000"])
            warm(server.port, names, mx, tmp)
            print(f"caching dnsmasq warmed ({len(names) + 2 * len(mx)} questions)", flush=True)
        r = bench(server.port, names, names, args.runs, tmp, server.pid)
        report("(1) plain loopback dnsmasq" + (" (records asked directly)" if args.direct else ""), r, len(names))
        if not args.skip_delayed:
            fport = support_dns.free_udp_tcp_port()
            forwarder = subprocess.Popen([sys.executable, "-c", FORWARDER, str(fport), str(server.port), str(args.delay_ms / 1000)], stdout=subprocess.PIPE, start_new_session=True)
            forwarder.stdout.readline()
            r = bench(fport, names, names[: args.dig_delayed], args.runs, tmp, server.pid)
            report(f"(2) behind a {args.delay_ms:g} ms forwarder", r, min(args.dig_delayed, len(names)))
        print(f"load average {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        if forwarder is not None:
            forwarder.terminate()
            forwarder.wait()
        if server is not records:
            server.stop()
        records.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
