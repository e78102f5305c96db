"""relay, outbound: the real `mailtools relay` against a real DNS server (dnsmasq) and a real
remote MX (Postfix's smtp-sink), all on loopback."""

from __future__ import annotations

import email
import fcntl
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import support_dns  # noqa: E402
import support_sink  # noqa: E402
from conftest import free_port, mailtools_cmd  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (support_sink.available() and os.path.exists(support_dns.DNSMASQ)),
    reason="needs Postfix's smtp-sink and dnsmasq (.ci/run installs them)",
)


@pytest.fixture(scope="module")
def dns():
    with support_dns.start_dnsmasq(
        mx={
            "remote.test": [(10, "mx.remote.test")],
            "other.test": [(10, "mx.other.test")],
            "fallback.test": [(10, "mx1.fallback.test"), (20, "mx2.fallback.test")],
            "tls.test": [(10, "mx.remote.test")],
        },
        hosts={
            "mx.remote.test": ["127.0.0.1"],
            "mx.other.test": ["127.0.0.1"],
            "mx1.fallback.test": ["127.0.0.2"],  # nothing listens there: connection refused
            "mx2.fallback.test": ["127.0.0.1"],
        },
        null_mx=["nomail.test"],
    ) as server:
        yield server


class Env:
    def __init__(self, root: Path, cfgfile: Path):
        self.root, self.cfgfile = root, cfgfile

    def write(self, dns, port, extra_relay="", extra_top="", hostname="mx.example.test"):
        self.cfgfile.write_text(
            f'hostname = "{hostname}"\nroot = "{self.root}"\nlocal_domains = ["example.test"]\n'
            f"{extra_top}\n{dns.toml()}\n[relay]\nlisten = []\nremote_port = {port}\n"
            f'retry = ["1s"]\nconnect_timeout = "3s"\n{extra_relay}\n'
        )
        return self.cfgfile

    @property
    def queue(self):
        from mailtools.core.queue import Queue

        return Queue(self.root / "queue")

    def enqueue(self, sender, rcpts, data: bytes) -> str:
        return self.queue.enqueue(sender, rcpts, data)

    def entries(self):
        return self.queue.entries()

    def run(self, *args, cfg=None, timeout=60):
        env = dict(os.environ, MAILTOOLS_CONFIG=str(cfg or self.cfgfile))
        return subprocess.run([*mailtools_cmd(), "relay", *args], capture_output=True,
                              env=env, timeout=timeout)

    def maildir(self, user: str) -> Path:
        local, domain = user.split("@")
        d = self.root / "mail" / domain / local
        for sub in ("cur", "new", "tmp"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        return d


@pytest.fixture
def env(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    return Env(root, tmp_path / "mailtools.toml")


MSG = b"From: Alice <alice@example.test>\nTo: bob@remote.test\nSubject: %s\nMessage-ID: <%s@example.test>\n\nhello\n.leading dot\n"


def msg(tag: str) -> bytes:
    return MSG % (tag.encode(), tag.encode())


def test_delivery_grouping_received_and_log(env, dns):
    with support_sink.start_sink() as sink:
        env.write(dns, sink.port)
        qid = env.enqueue("alice@example.test", ["bob@remote.test", "carol@remote.test", "dave@other.test"], msg("grp"))
        r = env.run("--once")
        assert r.returncode == 0, r.stderr
        assert sink.wait_count(2) == 2
        got = sorted(sorted(m.recipients) for m in sink.messages())
        assert got == [["bob@remote.test", "carol@remote.test"], ["dave@other.test"]]
        m = sink.messages()[0]
        assert m.sender == "alice@example.test" and m.helo == "mx.example.test"
        assert m.data.startswith(b"Received: ") and b"by mx.example.test (mailtools relay)" in m.data
        assert f"id {qid}".encode() in m.data
        assert b"\n.leading dot\n" in m.data  # dot-stuffed on the wire, unstuffed by the sink
        log = r.stderr.decode()
        assert re.search(rf"relay\[\d+\]: {qid}: to=<bob@remote.test>, relay=mx.remote.test\[127.0.0.1\]:{sink.port}, "
                         r"delay=[\d.]+, tries=1, dsn=2\.0\.0, status=sent \(250 ", log), log
        assert env.entries() == []


def test_mx_fallback_when_first_refuses(env, dns):
    with support_sink.start_sink() as sink:
        env.write(dns, sink.port)
        env.enqueue("alice@example.test", ["x@fallback.test"], msg("fb"))
        r = env.run("--once")
        assert r.returncode == 0
        assert sink.wait_count(1) == 1
        assert "mx2.fallback.test[127.0.0.1]" in r.stderr.decode()
        assert env.entries() == []


def test_defer_then_succeed(env, dns):
    port = free_port()
    with support_sink.start_sink(port, soft=["RCPT"]):
        env.write(dns, port)
        qid = env.enqueue("alice@example.test", ["bob@remote.test"], msg("defer"))
        t0 = time.time()
        r = env.run("--once")
        assert r.returncode == 0
        assert "status=deferred" in r.stderr.decode()
        (e,) = env.entries()
        rc = e.recipients[0]
        assert (rc.state, rc.attempts) == ("deferred", 1)
        assert rc.last_reply.startswith("host mx.remote.test[127.0.0.1]") and "450 4.3.0" in rc.last_reply
        # the attempt's time (after t0) + retry's 1 s, kept in whole seconds
        assert rc.next_attempt and rc.next_attempt > t0
        listing = env.run("--list", "--json")
        import json

        j = json.loads(listing.stdout.decode().splitlines()[0])
        assert j["id"] == qid and j["recipients"][0]["state"] == "deferred"
    with support_sink.start_sink(port) as sink:
        r = env.run("--flush")
        assert r.returncode == 0, r.stderr
        assert sink.wait_count(1) == 1
        assert "tries=2" in r.stderr.decode() and "status=sent" in r.stderr.decode()
        assert env.entries() == []


def _only_new(maildir: Path) -> bytes:
    files = list((maildir / "new").iterdir())
    assert len(files) == 1, files
    return files[0].read_bytes()


def test_bounce_is_a_dsn_delivered_to_the_local_sender(env, dns):
    with support_sink.start_sink(hard=["RCPT"]) as sink:
        env.write(dns, sink.port)
        box = env.maildir("alice@example.test")
        qid = env.enqueue("alice@example.test", ["bob@remote.test"], msg("bounce"))
        r = env.run("--once")
        assert r.returncode == 0, r.stderr
        log = r.stderr.decode()
        assert "status=bounced" in log and "sender non-delivery notification" in log
        raw = _only_new(box)
        assert env.entries() == []
    m = email.message_from_bytes(raw)
    assert m["Return-Path"] == "<>"
    assert m["Delivered-To"] == "alice@example.test"
    assert m["From"].endswith("<MAILER-DAEMON@mx.example.test>")
    assert m.get_content_type() == "multipart/report"
    assert m.get_param("report-type") == "delivery-status"
    parts = m.get_payload()
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    status = parts[1].as_string()
    assert "Reporting-MTA: dns; mx.example.test" in status
    assert "Final-Recipient: rfc822; bob@remote.test" in status
    assert "Action: failed" in status and "Status: 5.3.0" in status
    assert "Remote-MTA: dns; mx.remote.test" in status
    assert "Diagnostic-Code: smtp; " in status
    assert f"<bounce@example.test>" in parts[2].as_string() and "hello" not in parts[2].as_string()
    assert qid in status


def test_no_bounce_for_null_sender(env, dns):
    with support_sink.start_sink(hard=["RCPT"]) as sink:
        env.write(dns, sink.port)
        env.enqueue("", ["bob@remote.test"], msg("nullsender"))
        r = env.run("--once")
        assert r.returncode == 0
        assert "status=bounced" in r.stderr.decode()
        assert "not bouncing a bounce" in r.stderr.decode()
        assert env.entries() == []
        assert not (env.root / "mail").exists()


def test_give_up_after_max_queue_time(env, dns):
    with support_sink.start_sink(soft=["RCPT"]) as sink:
        # (a minute: the first try must come well inside it, however slow the machine)
        env.write(dns, sink.port, extra_relay='max_queue_time = "1m"')
        box = env.maildir("alice@example.test")
        qid = env.enqueue("alice@example.test", ["bob@remote.test"], msg("expire"))
        r = env.run("--once")
        assert "status=deferred" in r.stderr.decode()
        assert len(env.entries()) == 1
        # two minutes go by: the entry's arrival time moves back by as much
        q = env.queue
        e = q.claim(qid)
        e.queued_at -= 120
        q.update(e)
        q.release(e)
        r = env.run("--flush")
        assert "status=bounced" in r.stderr.decode() and "expired" in r.stderr.decode()
        raw = _only_new(box)
        assert b"Status: 4.3.0" in raw or b"Status: 4.4.7" in raw
        assert b"Action: failed" in raw
        assert env.entries() == []


def test_null_mx_recipient_domain_bounces_at_once(env, dns):
    with support_sink.start_sink() as sink:
        env.write(dns, sink.port)
        box = env.maildir("alice@example.test")
        env.enqueue("alice@example.test", ["who@nomail.test"], msg("nullmx"))
        r = env.run("--once")
        assert "dsn=5.1.10, status=bounced" in r.stderr.decode()
        assert b"Status: 5.1.10" in _only_new(box)
        assert sink.count() == 0


def test_dns_tempfail_defers(env, tmp_path):
    fake = support_dns.start_fake_dns("servfail")
    try:
        env.write(fake, free_port())
        env.enqueue("alice@example.test", ["bob@remote.test"], msg("dnsfail"))
        r = env.run("--once")
        assert "dsn=4.4.3, status=deferred" in r.stderr.decode(), r.stderr
        (e,) = env.entries()
        assert e.recipients[0].state == "deferred"
    finally:
        fake.stop()


def test_smtputf8_needed_but_not_offered_bounces(env, dns):
    with support_sink.start_sink() as sink:  # smtp-sink offers no SMTPUTF8
        env.write(dns, sink.port)
        box = env.maildir("alice@example.test")
        env.enqueue("alice@example.test", ["jörg@remote.test"], msg("utf8"))
        r = env.run("--once")
        assert "dsn=5.6.7, status=bounced" in r.stderr.decode()
        assert sink.count() == 0
        assert b"Status: 5.6.7" in _only_new(box)


def test_require_tls_defers_without_starttls(env, dns):
    with support_sink.start_sink() as sink:
        env.write(dns, sink.port, extra_relay='require_tls = ["tls.test"]')
        env.enqueue("alice@example.test", ["bob@tls.test"], msg("tls"))
        r = env.run("--once")
        assert "status=deferred" in r.stderr.decode() and "STARTTLS" in r.stderr.decode()
        assert sink.count() == 0


def test_overlapping_once_exits_at_once(env, dns):
    with support_sink.start_sink() as sink:
        env.write(dns, sink.port)
        env.enqueue("alice@example.test", ["bob@remote.test"], msg("lock"))
        lock = env.root / ".relay-once.mx.example.test.lock"
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            r = env.run("--once", timeout=10)
            assert r.returncode == 0
            assert b"another queue run" in r.stdout
            assert len(env.entries()) == 1
        finally:
            os.close(fd)
        assert env.run("--once").returncode == 0
        assert sink.wait_count(1) == 1


def test_four_concurrent_runners_deliver_each_message_once(env, dns, tmp_path):
    n = 150  # under relay --once's own split into processes (200): one process per runner
    with support_sink.start_sink() as sink:
        # few connections each, so no runner can swallow the whole queue before the others start
        cfgs = [env.write(dns, sink.port, extra_relay="concurrency = 2")]
        # four "hosts" sharing one spool: each its own --once lock
        for i in range(1, 4):
            c = tmp_path / f"runner{i}.toml"
            c.write_text(env.cfgfile.read_text().replace("mx.example.test", f"runner{i}.example.test"))
            cfgs.append(c)
        for i in range(n):
            env.enqueue("alice@example.test", [f"u{i}@remote.test"], msg(f"conc{i}"))
        e = dict(os.environ)
        # The sink is paused until at least two runners hold claims: on a loaded machine the
        # first runner could otherwise finish the queue before the others have started.
        os.kill(sink.pid, signal.SIGSTOP)
        try:
            procs = [subprocess.Popen([*mailtools_cmd(), "relay", "--once"], env={**e, "MAILTOOLS_CONFIG": str(c)},
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in cfgs]
            active = env.root / "queue" / "active"
            deadline = time.monotonic() + 60
            while len({p.name.split(".")[1] for p in active.iterdir()}) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            os.kill(sink.pid, signal.SIGCONT)
        outs = [p.communicate(timeout=90) for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
        sink.wait_count(n)
        time.sleep(0.5)  # and no more than that come
        msgs = sink.messages()
        rcpts = sorted(r for m in msgs for r in m.recipients)
        assert len(msgs) == n
        assert rcpts == sorted(f"u{i}@remote.test" for i in range(n))
        workers = sum(1 for out, err in outs if b"status=sent" in err)
        assert workers >= 2, "the runners did not share the work"
        assert env.entries() == []


def test_sigkill_daemon_mid_delivery_then_delivered_later(env, dns):
    port = free_port()
    with support_sink.start_sink(port, extra=["-w", "30"]) as slow:  # waits before answering DATA
        env.write(dns, port)
        env.enqueue("alice@example.test", ["bob@remote.test"], msg("killed"))
        d = subprocess.Popen([*mailtools_cmd(), "relay"], env={**os.environ, "MAILTOOLS_CONFIG": str(env.cfgfile)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 30
            while time.time() < deadline and not list((env.root / "queue" / "active").glob("*")):
                time.sleep(0.05)
            assert list((env.root / "queue" / "active").glob("*")), "the daemon never claimed the entry"
            time.sleep(0.5)
        finally:
            os.kill(d.pid, signal.SIGKILL)
            d.wait()
        assert slow.count() == 0
    with support_sink.start_sink(port) as sink:
        r = env.run("--once")
        assert r.returncode == 0, r.stderr
        assert sink.wait_count(1) == 1
        time.sleep(0.3)
        assert sink.count() == 1
        assert env.entries() == []


def test_daemon_delivers_when_nudged(env, dns):
    with support_sink.start_sink() as sink:
        env.write(dns, sink.port)
        d = subprocess.Popen([*mailtools_cmd(), "relay"], env={**os.environ, "MAILTOOLS_CONFIG": str(env.cfgfile)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.time() + 30
            while time.time() < deadline and not (env.root / "queue" / "nudge").exists():
                time.sleep(0.05)
            env.enqueue("alice@example.test", ["bob@remote.test"], msg("nudge"))
            from mailtools.core.queue import nudge

            assert nudge(env.root / "queue")
            # delivered because it was nudged: unnudged, an idle daemon looks at the queue
            # again only a minute after its last pass (relay.runner._next_due)
            assert sink.wait_count(1, timeout=30) == 1
        finally:
            os.kill(d.pid, signal.SIGTERM)
            _, err = d.communicate(timeout=20)
        assert d.returncode == 0, err
        assert b"daemon stopped" in err


def test_hold_release_delete(env, dns):
    with support_sink.start_sink() as sink:
        env.write(dns, sink.port)
        a = env.enqueue("alice@example.test", ["bob@remote.test"], msg("held"))
        b = env.enqueue("alice@example.test", ["bob@remote.test"], msg("deleted"))
        assert env.run("--hold", a).returncode == 0
        assert env.run("--delete", b).returncode == 0
        assert env.run("--once").returncode == 0
        time.sleep(0.3)
        assert sink.count() == 0
        assert [e.id for e in env.entries()] == [a] and env.entries()[0].held
        assert env.run("--release", a).returncode == 0
        assert env.run("--once").returncode == 0
        assert sink.wait_count(1) == 1
        assert env.run("--delete", a).returncode == 66  # gone: no such entry
        assert env.run("--hold", "nonsense").returncode == 64


def test_usage_errors(env, dns):
    env.write(dns, free_port())
    assert env.run("--json").returncode == 64
    assert env.run("--once", "--list").returncode == 64
    assert env.run("--once", "--smarthost", "host:notaport").returncode == 64


def test_delay_warning_once(env, dns):
    with support_sink.start_sink(soft=["RCPT"]) as sink:
        env.write(dns, sink.port, extra_relay='delay_warning = "1s"')
        box = env.maildir("alice@example.test")
        env.enqueue("alice@example.test", ["bob@remote.test"], msg("slow"))
        time.sleep(1.1)
        r = env.run("--once")
        assert "sender delay notification" in r.stderr.decode()
        raw = _only_new(box)
        assert b"Action: delayed" in raw and b"Status: 4.3.0" in raw and b"Will-Retry-Until: " in raw
        (e,) = env.entries()
        assert e.warned and e.recipients[0].state == "deferred"
        r = env.run("--flush")
        assert "sender delay notification" not in r.stderr.decode()
        assert len(list((box / "new").iterdir())) == 1


class HangUpMX:
    """A remote MX that offers PIPELINING, answers 250 to each message's final dot and then
    hangs up at once, unread: whatever the client pipelined behind that message (the next
    message's MAIL, RCPT and DATA) is lost with the connection. Records each message's
    Subject."""

    def __init__(self):
        import socketserver
        import threading

        self.subjects: list = []
        self.connections = 0
        mx = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                mx.connections += 1
                w = self.wfile.write
                w(b"220 hangup.remote.test ESMTP\r\n")
                while True:
                    line = self.rfile.readline()
                    if not line:
                        return
                    verb = line[:4].upper()
                    if verb == b"EHLO":
                        w(b"250-hangup.remote.test\r\n250 PIPELINING\r\n")
                    elif verb in (b"MAIL", b"RCPT", b"RSET"):
                        w(b"250 2.0.0 ok\r\n")
                    elif verb == b"DATA":
                        w(b"354 go on\r\n")
                        subject = b""
                        for body in iter(self.rfile.readline, b""):
                            if body == b".\r\n":
                                break
                            if body.startswith(b"Subject: "):
                                subject = body[9:].strip()
                        mx.subjects.append(subject.decode())
                        w(b"250 2.0.0 queued\r\n")
                        self.wfile.flush()
                        self.connection.shutdown(2)  # the pipelined rest is never read
                        return
                    elif verb == b"QUIT":
                        w(b"221 bye\r\n")
                        return
                    else:
                        w(b"502 5.5.2 no\r\n")

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_hang_up_after_the_dot_loses_no_pipelined_message(env, dns):
    """The next message's envelope rides behind each message's content (one write per message);
    a server that closes right after its 250 drops that envelope: the message goes out again on
    a fresh connection, and each message arrives exactly once."""
    mx = HangUpMX()
    try:
        env.write(dns, mx.port, extra_relay="concurrency = 1")
        for i in range(6):
            env.enqueue("alice@example.test", ["bob@remote.test"], msg(f"hang{i}"))
        r = env.run("--once")
        assert r.returncode == 0, r.stderr
        assert sorted(mx.subjects) == [f"hang{i}" for i in range(6)], r.stderr.decode()
        assert mx.connections >= 6
        assert env.entries() == []
        assert r.stderr.decode().count("status=sent") == 6
    finally:
        mx.close()


def test_rejected_dot_with_pipelined_envelopes_bounces_each_message_once(env, dns):
    with support_sink.start_sink(hard=["."]) as sink:
        env.write(dns, sink.port, extra_relay="concurrency = 1")
        box = env.maildir("alice@example.test")
        for i in range(5):
            env.enqueue("alice@example.test", ["bob@remote.test"], msg(f"rej{i}"))
        r = env.run("--once")
        assert r.returncode == 0, r.stderr
        log = r.stderr.decode()
        bob = [ln for ln in log.splitlines() if "to=<bob@remote.test>" in ln]
        assert len(bob) == 5 and all("status=bounced" in ln for ln in bob), log
        dsns = list((box / "new").iterdir())
        assert len(dsns) == 5
        assert sorted(re.search(rb"Subject: (rej\d)", p.read_bytes()).group(1) for p in dsns) == [
            b"rej%d" % i for i in range(5)]
        assert env.entries() == []


def test_long_queue_split_over_processes_delivers_each_once_and_bounces(env, dns):
    """`relay --once` on a queue of several hundred entries deals them to one process per CPU
    (each claims only its share); every message still arrives once, and the DSNs the processes
    queue go out in the final pass."""
    from mailtools.relay.runner import PER_PROCESS

    n = 2 * PER_PROCESS + 10
    with support_sink.start_sink() as sink:
        env.write(dns, sink.port)
        box = env.maildir("alice@example.test")
        for i in range(n):
            rcpt = f"u{i}@nomail.test" if i % 50 == 0 else f"u{i}@remote.test"  # null MX: bounce
            env.enqueue("alice@example.test", [rcpt], msg(f"split{i}"))
        r = env.run("--once", timeout=120)
        assert r.returncode == 0, r.stderr
        log = r.stderr.decode()
        bounced = [i for i in range(n) if i % 50 == 0]
        assert sink.wait_count(n - len(bounced)) == n - len(bounced)
        time.sleep(0.3)
        rcpts = sorted(rc for m in sink.messages() for rc in m.recipients)
        assert rcpts == sorted(f"u{i}@remote.test" for i in range(n) if i % 50), "a message twice or lost"
        assert len(list((box / "new").iterdir())) == len(bounced)
        pids = set(re.findall(r"relay\[(\d+)\]: \w+: to=<u\d+@remote.test>", log))
        if len(os.sched_getaffinity(0)) > 1:
            assert len(pids) >= 2, "one process did all the work"
        assert env.entries() == []


def test_split_run_first_recovers_the_claims_of_a_dead_runner(env, dns):
    """Entries a dead runner left claimed are put back before the queue is dealt to the
    processes, so they go out in this run (not the next)."""
    from mailtools.core import queue as qmod
    from mailtools.relay.runner import PER_PROCESS

    n = 2 * PER_PROCESS + 5
    with support_sink.start_sink() as sink:
        env.write(dns, sink.port)
        for i in range(n):
            env.enqueue("alice@example.test", [f"u{i}@remote.test"], msg(f"rec{i}"))
        dead = subprocess.Popen(["true"])
        dead.wait()
        qdir = env.root / "queue"
        for qid in env.queue.ids("new")[1:6]:
            os.rename(qdir / "new" / qid, qdir / "active" / f"{qid}.{dead.pid}.{qmod._HOST}.1")
        r = env.run("--once", timeout=120)
        assert r.returncode == 0, r.stderr
        assert sink.wait_count(n) == n
        time.sleep(0.3)
        assert sorted(rc for m in sink.messages() for rc in m.recipients) == sorted(
            f"u{i}@remote.test" for i in range(n))
        assert env.entries() == []
