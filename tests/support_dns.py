"""A real DNS server for tests: dnsmasq on a free loopback port, answering only from the
records given (no upstream, no /etc/hosts, nothing ever leaves 127.0.0.1).

    import support_dns

    with support_dns.start_dnsmasq(
        mx={"remote.test": [(10, "mx.remote.test")]},   # domain -> [(preference, host)]
        hosts={"mx.remote.test": ["127.0.0.1"]},        # name -> A/AAAA addresses
    ) as dns:
        dns.nameserver      # "127.0.0.1:PORT", for [dns] nameservers or --nameserver
        dns.port, dns.pid

start_dnsmasq(mx=None, hosts=None, cname=None, txt=None, null_mx=(), empty=(), extra=(),
              local=("test", "invalid"), ttl=60, tmpdir=None, negcache=False, session=False) -> DNSServer
    mx       {domain: [(preference, host), ...]}
    hosts    {name: ["192.0.2.1", "2001:db8::1", ...]}   (A and AAAA records)
    cname    {alias: target}   (dnsmasq only serves CNAMEs whose target is in `hosts`)
    txt      {name: ["text", ...]}   (one TXT record per string)
    null_mx  domains that get the RFC 7505 null MX "0 ."
    empty    names that exist with no A, AAAA or MX records (NOERROR, no data; a TXT record)
    extra    more dnsmasq option lines, without the leading "--"
    local    domains dnsmasq answers alone: unknown names in them are NXDOMAIN
    ttl      TTL of every answer (dnsmasq's --local-ttl)
    negcache cache negative answers from upstream servers (a caching front; off by default)
    session  run dnsmasq in a session of its own, as a daemon (benchmarks)
Returns a DNSServer (also a context manager); .stop() terminates dnsmasq by its PID.

start_fake_dns(mode) -> DNSServer, mode "servfail" | "refused" | "silent": a tiny stdlib
responder (a subprocess) for the failures dnsmasq cannot produce: answers every UDP query
with SERVFAIL or REFUSED, or never answers.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

from support_net import Helper, free_port

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


class DNSServer(Helper):
    def __init__(self, proc: subprocess.Popen, port: int, workdir: str | None = None):
        self.proc, self.port, self.workdir = proc, port, workdir
        self.pid = proc.pid
        self.host = "127.0.0.1"
        self.nameserver = f"127.0.0.1:{port}"

    def toml(self) -> str:
        """A [dns] table pointing at this server, for a mailtools.toml."""
        return f'[dns]\nnameservers = ["{self.nameserver}"]\ntimeout = 2\n'


def free_udp_tcp_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        port = free_port()  # TCP, outside the ephemeral range (see support_net)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free UDP+TCP port")


def _wire_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode("ascii")
    return out + b"\x00"


def probe(port: int, name: str = "probe.invalid", timeout: float = 0.2) -> bytes | None:
    """Send one A query to 127.0.0.1:port; the raw answer or None."""
    q = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + _wire_name(name) + b"\x00\x01\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(q, ("127.0.0.1", port))
            return s.recv(4096)
        except OSError:
            return None


def dnsmasq_lines(mx=None, hosts=None, cname=None, txt=None, null_mx=(), empty=(), extra=(), local=("test", "invalid"), ttl=60, negcache=False) -> list[str]:
    lines = ["no-resolv", "no-hosts", "no-poll", f"local-ttl={ttl}", "listen-address=127.0.0.1", "bind-interfaces"]
    if not negcache:
        lines.append("no-negcache")
    lines += [f"local=/{d}/" for d in local]
    for domain, records in (mx or {}).items():
        for pref, host in records:
            lines.append(f"mx-host={domain},{host},{pref}")
    for name, addrs in (hosts or {}).items():
        for addr in addrs:
            lines.append(f"host-record={name},{addr},{ttl}")
    for alias, target in (cname or {}).items():
        lines.append(f"cname={alias},{target},{ttl}")
    for name, texts in (txt or {}).items():
        for text in texts:
            # dnsmasq splits TXT data on commas into character-strings: keep each intact.
            lines.append(f'txt-record={name},"{text}"')
    for domain in null_mx:
        # RFC 7505: MX 0 "." = preference 0x0000 and the root name 0x00 (raw RR type 15).
        lines.append(f"dns-rr={domain},15,000000")
    for name in empty:
        lines.append(f'txt-record={name},"exists"')  # the name exists; A, AAAA and MX are empty
    lines += list(extra)
    return lines


def start_dnsmasq(mx=None, hosts=None, cname=None, txt=None, null_mx=(), empty=(), extra=(), local=("test", "invalid"), ttl=60, tmpdir=None, negcache=False, session=False) -> DNSServer:
    """Start dnsmasq serving the given records; see the module docstring. session=True runs it
    in a session of its own, as a resolver daemon runs (benchmarks: with autogroup scheduling
    the CPU is shared per session first)."""
    workdir = tempfile.mkdtemp(prefix="dnsmasq-", dir=tmpdir)
    conf = os.path.join(workdir, "dnsmasq.conf")
    lines = dnsmasq_lines(mx, hosts, cname, txt, null_mx, empty, extra, local, ttl, negcache)
    with open(conf, "w") as f:
        f.write("\n".join(lines) + "\n")
    last_err = ""
    for _ in range(5):
        port = free_udp_tcp_port()
        cmd = [DNSMASQ, "--keep-in-foreground", f"--conf-file={conf}", f"--port={port}", "--pid-file=", "--user=" + _user()]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=session)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                last_err = proc.stderr.read().decode(errors="replace")
                break
            if probe(port) is not None:
                proc.stderr.close()
                return DNSServer(proc, port, workdir)
            time.sleep(0.02)
        else:
            proc.kill()
            proc.wait()
            last_err = "dnsmasq did not answer within 10 s"
    shutil.rmtree(workdir, ignore_errors=True)
    raise RuntimeError(f"dnsmasq failed to start: {last_err.strip()}")


def _user() -> str:
    # dnsmasq drops privileges to "nobody" by default; as a normal user it keeps its own.
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


# --- the tiny responder for SERVFAIL / REFUSED / silence ------------------------------------

_FAKE = r"""
import socket, struct, sys
mode, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", port))
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("127.0.0.1", port)); t.listen(16)
rcode = {"servfail": 2, "refused": 5}.get(mode)
sys.stdout.write("ready\n"); sys.stdout.flush()
while True:
    data, addr = s.recvfrom(4096)
    if len(data) < 12:
        continue
    if data[:2] == b"\x42\x42":   # the readiness probe always gets an answer
        s.sendto(data[:2] + b"\x81\x82" + data[4:], addr); continue
    if rcode is None:
        continue
    flags = 0x8180 | rcode
    # echo the question (header counts: 1 question, nothing else)
    qend = 12
    while data[qend] != 0:
        qend += data[qend] + 1
    qend += 5
    s.sendto(data[:2] + struct.pack("!HHHHH", flags, 1, 0, 0, 0) + data[12:qend], addr)
"""


def start_fake_dns(mode: str) -> DNSServer:
    """A UDP responder answering every query with SERVFAIL/REFUSED ("servfail", "refused") or
    never answering ("silent"); TCP connections are accepted and never answered."""
    if mode not in ("servfail", "refused", "silent"):
        raise ValueError(mode)
    port = free_udp_tcp_port()
    proc = subprocess.Popen([sys.executable, "-c", _FAKE, mode, str(port)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()
    return DNSServer(proc, port)
