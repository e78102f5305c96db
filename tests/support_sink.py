"""Postfix's smtp-sink as a fake remote MX for tests: a free loopback port, started and stopped
by PID, every message dumped to a file so a test can count and read what arrived.

    import support_sink

    with support_sink.start_sink() as sink:            # accepts everything
        sink.port, sink.pid
        sink.wait_count(3, timeout=10)                # blocks until 3 messages arrived
        for m in sink.messages():                     # parsed dumps, oldest first
            m.sender, m.recipients, m.helo, m.data (bytes: header + body as received)

start_sink(port=None, *, soft=(), hard=(), disconnect=(), reply421=(), no_pipelining=False,
           no_8bitmime=False, no_esmtp=False, hostname="sink.remote.test", extra=()) -> Sink
    soft        SMTP commands answered 450 4.3.0 (e.g. ["RCPT"], ["."], ["CONNECT"])   (-r)
    hard        SMTP commands answered 500 5.3.0                                         (-f)
    disconnect  commands after which the sink hangs up without replying                 (-q)
    reply421    commands answered 421 and a hang-up                                      (-Q)
    soft_reply / hard_reply: the reply text for soft/hard rejects (-b / -B)
smtp-sink announces PIPELINING, 8BITMIME, ENHANCEDSTATUSCODES and DSN, but neither SIZE,
STARTTLS nor SMTPUTF8. Running as root, it drops to `nobody` (its -u option), so the dump
directory is made world-writable.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass

from support_net import Helper, free_port

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"


def available() -> bool:
    return os.access(SMTP_SINK, os.X_OK)


@dataclass
class SinkMessage:
    path: str
    sender: str
    recipients: list
    helo: str
    data: bytes


class Sink(Helper):
    def __init__(self, proc, port, workdir):
        self.proc, self.port, self.workdir = proc, port, workdir
        self.pid = proc.pid
        self.dump_dir = os.path.join(workdir, "dump")

    def files(self) -> list:
        try:
            names = os.listdir(self.dump_dir)
        except FileNotFoundError:
            return []
        paths = [os.path.join(self.dump_dir, n) for n in names]
        return sorted(paths, key=lambda p: (os.stat(p).st_mtime, p))

    def count(self) -> int:
        """Messages completely received (smtp-sink writes the dump as DATA arrives, so a file
        counts once its end marker, the blank line after the body, is there)."""
        return len(self.messages())

    def messages(self) -> list:
        out = []
        for p in self.files():
            try:
                with open(p, "rb") as f:
                    raw = f.read()
            except FileNotFoundError:
                continue
            head, sep, rest = raw.partition(b"Received: from ")
            if not sep:
                continue
            # smtp-sink's own three-line Received header ends its prologue
            lines = rest.split(b"\n", 3)
            if len(lines) < 4:
                continue
            data = lines[3]
            meta = head.decode("utf-8", "replace").splitlines()
            mail = [m.split(": ", 1)[1] for m in meta if m.startswith("X-Mail-Args: ")]
            rcpts = [m.split(": ", 1)[1] for m in meta if m.startswith("X-Rcpt-Args: ")]
            helo = [m.split(": ", 1)[1] for m in meta if m.startswith("X-Helo-Args: ")]
            sender = mail[0].split(">")[0].lstrip("<") if mail else ""
            out.append(SinkMessage(p, sender, [r.split(">")[0].lstrip("<") for r in rcpts],
                                   helo[0] if helo else "", data))
        return out

    def wait_count(self, n: int, timeout: float = 15.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            c = self.count()
            if c >= n:
                return c
            time.sleep(0.05)
        return self.count()

    def clear(self) -> None:
        for p in self.files():
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass


def start_sink(port=None, *, soft=(), hard=(), disconnect=(), reply421=(), soft_reply=None,
               hard_reply=None, no_pipelining=False, no_8bitmime=False, no_esmtp=False,
               hostname="sink.remote.test", dump=True, extra=()) -> Sink:
    port = port or free_port()
    workdir = tempfile.mkdtemp(prefix="mt-sink-")
    dump_dir = os.path.join(workdir, "dump")
    os.mkdir(dump_dir)
    os.chmod(workdir, 0o755)
    os.chmod(dump_dir, 0o777)
    args = [SMTP_SINK, "-h", hostname]
    if os.geteuid() == 0:
        args += ["-u", "nobody"]
    if dump:
        args += ["-d", os.path.join(dump_dir, "m.")]
    for flag, cmds in (("-r", soft), ("-f", hard), ("-q", disconnect), ("-Q", reply421)):
        if cmds:
            args += [flag, ",".join(cmds)]
    if soft_reply:
        args += ["-b", soft_reply]
    if hard_reply:
        args += ["-B", hard_reply]
    if no_pipelining:
        args.append("-p")
    if no_8bitmime:
        args.append("-8")
    if no_esmtp:
        args.append("-e")
    args += list(extra) + [f"127.0.0.1:{port}", "64"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            shutil.rmtree(workdir, ignore_errors=True)
            raise RuntimeError(f"smtp-sink exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.recv(100)
                s.sendall(b"QUIT\r\n")
            break
        except OSError:
            time.sleep(0.05)
    return Sink(proc, port, workdir)
