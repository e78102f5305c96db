#!/usr/bin/env python3
"""bench_relay_out: outbound relay throughput, mailtools against Postfix, same run, same sink.

Workload (tests/bench/relay_out in issue 6): COUNT queued messages of SIZE bytes to one remote
domain (remote.test), delivered to Postfix's smtp-sink on 127.0.0.1. The clock runs from the
moment the queue is let go until the sink has counted every message.

- mailtools: the messages are enqueued first (not timed), then `mailtools relay --once` is
  started (process start-up included); remote.test's MX is 127.0.0.1 through a private dnsmasq,
  `relay.remote_port` points at the sink.
- Postfix: a private instance (own config, spool and port; the system's Postfix is never
  touched) takes the same number of messages from smtp-source and puts each on hold; the clock
  starts at `postsuper -H ALL; postqueue -f` and stops when the sink has them all. Postfix's
  transport for remote.test is smtp:[127.0.0.1]:SINK (no DNS), stock concurrency limits.

    python3 tests/bench/bench_relay_out.py [--count 5000] [--size 2048] [--no-postfix]

Prints both figures in messages/s and mailtools/Postfix. Needs root (Postfix) and the Debian
postfix and dnsmasq packages. Loopback only.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))
from support_net import bytecode_env, free_port, wait_port  # noqa: E402  (tests/: loopback helpers)
from support_reference import postfix_instance_dirs  # noqa: E402

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"


class CountingSink:
    """smtp-sink -c (no dump: as fast as it goes), counting messages from its counters."""

    def __init__(self):
        self.port = free_port()
        args = [SMTP_SINK, "-c"] + (["-u", "nobody"] if os.geteuid() == 0 else []) + [f"127.0.0.1:{self.port}", "256"]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0)
        self.mesg = 0
        threading.Thread(target=self._read, daemon=True).start()
        wait_port(self.port)

    def _read(self) -> None:
        buf = b""
        while True:
            c = self.proc.stdout.read(4096)
            if not c:
                return
            buf = (buf + c)[-256:]
            m = re.findall(rb"mesg=(\d+)", buf)
            if m:
                self.mesg = int(m[-1])

    def wait_for(self, n: int, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while self.mesg < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the sink got {self.mesg} of {n}")
            time.sleep(0.005)

    def stop(self) -> None:
        self.proc.kill()  # the sink we started, by its handle
        self.proc.wait()


def message(i: int, size: int, rcpt: str) -> bytes:
    head = (f"From: <a@example.test>\nTo: <{rcpt}>\nSubject: bench {i}\n"
            f"Message-Id: <bench.{i}.{os.getpid()}@example.test>\n\n").encode()
    line = b"x" * 78 + b"\n"
    body = (line * (size // len(line) + 1))[: max(0, size - len(head))]
    return head + body


class PrivatePostfix:
    """A Postfix instance of our own in a temporary directory: config, spool, data, log, port."""

    def __init__(self, settings: list[str]):
        if os.geteuid() != 0 or not shutil.which("postfix"):
            raise RuntimeError("Postfix reference needs root and the postfix package")
        self.dir = Path(tempfile.mkdtemp(prefix="mt-bench-postfix-"))
        os.chmod(self.dir, 0o755)  # the postfix user must reach data/ and spool/
        self.etc = self.dir / "etc"
        self.etc.mkdir()
        postfix_instance_dirs(self.dir, self.etc)
        self.port = free_port()
        self.postconf(
            f"queue_directory = {self.dir / 'spool'}", f"data_directory = {self.dir / 'data'}",
            "inet_interfaces = loopback-only", "inet_protocols = ipv4", "mynetworks = 127.0.0.0/8",
            "mydestination = localhost", "myhostname = mta.example.test",
            f"maillog_file = {self.dir / 'maillog'}", f"maillog_file_prefixes = {self.dir}",
            "syslog_name = postfix-mt-bench", "smtpd_peername_lookup = no", "alias_maps =",
            "alias_database =", "smtp_tls_security_level = none", "smtpd_tls_security_level = none",
            "default_transport = error", "multi_instance_enable = no", *settings,
        )
        master = (self.etc / "master.cf").read_text()
        master = re.sub(r"(?m)^smtp(\s+)inet", f"127.0.0.1:{self.port}\\1inet", master, count=1)
        (self.etc / "master.cf").write_text(master)
        subprocess.run(["postconf", "-c", str(self.etc), "-F", "*/*/chroot = n"], check=True)

    def postconf(self, *settings: str) -> None:
        subprocess.run(["postconf", "-c", str(self.etc), "-e", *settings], check=True)

    def start(self) -> None:
        subprocess.run(["postfix", "-c", str(self.etc), "check"], check=True)
        subprocess.run(["postfix", "-c", str(self.etc), "start"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self) -> None:
        subprocess.run(["postfix", "-c", str(self.etc), "stop"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        shutil.rmtree(self.dir, ignore_errors=True)

    def count(self, queue: str) -> int:
        n = 0
        for _, _, files in os.walk(self.dir / "spool" / queue):
            n += len(files)
        return n


def smtp_source(port: int, count: int, size: int, rcpt: str, sessions: int = 10) -> None:
    subprocess.run([SMTP_SOURCE, "-s", str(sessions), "-m", str(count), "-l", str(size),
                    "-f", "a@example.test", "-t", rcpt, f"127.0.0.1:{port}"],
                   check=True, stdout=subprocess.DEVNULL)


def bench_postfix(count: int, size: int, sink: CountingSink) -> float:
    pf = PrivatePostfix([
        "relay_domains = remote.test",
        f"transport_maps = inline:{{ remote.test=smtp:[127.0.0.1]:{sink.port} }}",
        "smtpd_recipient_restrictions = check_client_access inline:{ 127.0.0.1=HOLD }, "
        "permit_mynetworks, reject_unauth_destination",
    ])
    try:
        pf.start()
        smtp_source(pf.port, count, size, "user@remote.test")
        deadline = time.monotonic() + 300
        while pf.count("hold") < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"Postfix held only {pf.count('hold')} of {count}")
            time.sleep(0.1)
        time.sleep(1)  # let the injection settle (no other work while timing)
        base = sink.mesg
        t0 = time.monotonic()
        subprocess.run(["postsuper", "-c", str(pf.etc), "-H", "ALL"], check=True, stderr=subprocess.DEVNULL)
        subprocess.run(["postqueue", "-c", str(pf.etc), "-f"], check=True)
        sink.wait_for(base + count)
        return time.monotonic() - t0
    finally:
        pf.stop()


def bench_mailtools(count: int, size: int, sink: CountingSink) -> float:
    import support_dns

    from mailtools.core.queue import Queue

    tmp = Path(tempfile.mkdtemp(prefix="mt-bench-relay-out-"))
    try:
        with support_dns.start_dnsmasq(mx={"remote.test": [(10, "mx.remote.test")]},
                                       hosts={"mx.remote.test": ["127.0.0.1"]}) as dns:
            cfg = tmp / "mailtools.toml"
            cfg.write_text(
                f'hostname = "mx.example.test"\nroot = "{tmp / "root"}"\nlocal_domains = ["example.test"]\n'
                f"{dns.toml()}\n[relay]\nlisten = []\nremote_port = {sink.port}\n"
            )
            q = Queue(tmp / "root" / "queue")
            for i in range(count):
                q.enqueue("a@example.test", ["user@remote.test"], message(i, size, "user@remote.test"))
            time.sleep(1)
            base = sink.mesg
            env = bytecode_env(dict(os.environ, MAILTOOLS_CONFIG=str(cfg), PYTHONPATH=str(REPO)), tmp / "pycache")
            t0 = time.monotonic()
            p = subprocess.Popen([sys.executable, "-m", "mailtools", "relay", "--once"], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            sink.wait_for(base + count)
            elapsed = time.monotonic() - t0
            p.wait(120)
            left = len(q.entries())
            if left:
                raise RuntimeError(f"{left} entries left in the mailtools queue")
            return elapsed
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--no-postfix", action="store_true", help="measure mailtools only")
    a = ap.parse_args()
    sink = CountingSink()
    try:
        mt = bench_mailtools(a.count, a.size, sink)
        print(f"relay_out mailtools: {a.count} msgs in {mt:.2f}s = {a.count / mt:.0f} msg/s"
              f" (load average {os.getloadavg()[0]:.1f})", flush=True)
        if a.no_postfix:
            return 0
        pf = bench_postfix(a.count, a.size, sink)
        print(f"relay_out postfix:   {a.count} msgs in {pf:.2f}s = {a.count / pf:.0f} msg/s"
              f" (load average {os.getloadavg()[0]:.1f})", flush=True)
        print(f"relay_out ratio mailtools/postfix: {pf / mt:.2f}")
    finally:
        sink.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
