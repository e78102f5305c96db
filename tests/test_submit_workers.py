"""`mailtools submit --listen --workers N`: one parent, N worker processes (core/prefork), with
real SMTP clients: every worker queues mail exactly once, SIGTERM drains, a worker killed with
SIGKILL is replaced while the others keep serving, SIGHUP reloads users and limits everywhere."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from conftest import free_port, mailtools_cmd, slow_login, stop_proc, wait_port
from mailtools.core.auth import Users, hash_password
from mailtools.core.queue import Queue


class Server:
    def __init__(self, home: Path, workers: int, extra: str = "", tls_port: int | None = None):
        self.cfg = Path(str(home) + "/../mailtools.toml").resolve()
        self.cfg.write_text(self.cfg.read_text() + "[auth]\nfail_delay = 0.1\n" + extra)
        self.home = home
        Users(home / "users").add("alice@example.test", "secret1", scheme="BLF-CRYPT")
        self.port = free_port()
        self.logf = open(home / "msa.log", "wb")
        tls = ["--tls-listen", f"127.0.0.1:{tls_port}"] if tls_port else []
        self.proc = subprocess.Popen(
            [*mailtools_cmd(), "submit", "--listen", f"127.0.0.1:{self.port}", *tls,
             "--workers", str(workers)], stderr=self.logf, start_new_session=True)
        wait_port(self.port, proc=self.proc)
        if workers > 1:
            self.wait_log(lambda log: len(self.started(log)) >= workers)

    def log(self) -> str:
        return (self.home / "msa.log").read_text()

    def wait_log(self, ready, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            if ready(log):
                return log
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"log never got there:\n{self.log()}")

    def started(self, log: str) -> list[int]:
        return [int(p) for p in re.findall(rf"submit\[{self.proc.pid}\]: worker (\d+) started", log)]

    def workers(self) -> list[int]:
        """The parent's live children, from /proc."""
        kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return [int(k) for k in kids]

    def owner(self, client: smtplib.SMTP, server_port: int | None = None) -> int:
        """Which process holds the server side of this client's connection."""
        port = client.sock.getsockname()[1]
        server_port = server_port or self.port
        inode = None
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            f = line.split()
            if int(f[1].split(":")[1], 16) == server_port and int(f[2].split(":")[1], 16) == port:
                inode = f[9]
        assert inode, "no server side for this connection"
        for pid in self.workers():
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    if os.readlink(fd) == f"socket:[{inode}]":
                        return pid
                except OSError:
                    pass
        raise AssertionError("no worker holds the connection")

    def client(self, password: str = "secret1") -> smtplib.SMTP:
        c = smtplib.SMTP("127.0.0.1", self.port, timeout=10)
        c.ehlo("client.example.test")
        c.login("alice@example.test", password)
        return c

    def stop(self) -> int:
        stop_proc(self.proc, timeout=30)
        self.logf.close()
        return self.proc.returncode


@pytest.fixture
def servers():
    started = []
    yield started
    for s in started:
        kids = s.workers() if s.proc.poll() is None else []
        s.stop()
        for pid in kids:  # never leave a worker behind, whatever the test did
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def start(servers, home, workers, extra="", tls_port=None):
    s = Server(home, workers, extra, tls_port)
    servers.append(s)
    return s


def message(tag: str) -> bytes:
    return (f"From: alice@example.test\r\nTo: bob@remote.test\r\nSubject: {tag}\r\n"
            f"Message-ID: <{tag}@example.test>\r\n\r\nbody of {tag}\r\n").encode()


def messages(home: Path) -> dict[str, bytes]:
    """queue id -> message, for every entry in the queue."""
    q = Queue(home / "queue")
    return {e.id: q.read_message(e) for e in q.entries()}


def queued(home: Path) -> dict[str, str]:
    """queue id -> Subject, for every entry in the queue."""
    return {qid: re.search(rb"^Subject: (\S+)", m, re.M).group(1).decode()
            for qid, m in messages(home).items()}


def send(c: smtplib.SMTP, tag: str) -> str:
    c.mail("alice@example.test")
    c.rcpt("bob@remote.test")
    code, reply = c.data(message(tag))
    assert code == 250, reply
    return re.search(rb"queued as (\S+)", reply).group(1).decode()


def test_every_worker_queues_each_message_exactly_once(home, servers):
    s = start(servers, home, 3)
    workers = set(s.workers())
    assert len(workers) == 3 and s.proc.pid not in workers
    clients = [s.client() for _ in range(9)]
    owners = [s.owner(c) for c in clients]
    # the parent hands connections to the least busy worker: 9 connections, 3 each
    assert sorted(owners.count(w) for w in workers) == [3, 3, 3]
    ids = {}
    for k, c in enumerate(clients):
        for j in range(2):
            ids[send(c, f"m{k}-{j}")] = f"m{k}-{j}"
        c.quit()
    assert queued(home) == ids  # every reply's id is in the queue, once, with its message
    log = s.log()
    for qid in ids:  # each logged once, by one of the workers (not the parent)
        lines = re.findall(rf"submit\[(\d+)\]: {qid}: client=", log)
        assert len(lines) == 1 and int(lines[0]) in workers
    assert {int(p) for p in re.findall(r"submit\[(\d+)\]: \w+: client=", log)} == workers
    assert s.stop() == 0


def test_sigterm_drains_and_exits_0(home, servers):
    s = start(servers, home, 2)
    workers = s.workers()
    idle = s.client()
    busy = s.client()
    send(idle, "before")
    # one client has its message on the wire when the signal comes: it gets either 250 (and
    # the message is queued) or 421 (and it is not): never a 250 for a message that is lost
    busy.mail("alice@example.test")
    busy.rcpt("bob@remote.test")
    busy.putcmd("data")
    assert busy.getreply()[0] == 354
    busy.send(message("racing") + b".\r\n")
    s.proc.send_signal(signal.SIGTERM)
    code, reply = busy.getreply()
    assert code in (250, 421), reply
    # the idle session is told, then closed
    assert idle.getreply()[0] == 421
    assert s.proc.wait(30) == 0
    subjects = sorted(queued(home).values())
    assert subjects == (["before", "racing"] if code == 250 else ["before"])
    for pid in workers:  # reaped by the parent
        assert not Path(f"/proc/{pid}").exists()
    log = s.log()
    assert "SIGTERM: draining 2 worker(s)" in log and log.rstrip().endswith("stopped")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", s.port), timeout=2)


def test_killed_worker_is_replaced_and_the_other_keeps_serving(home, servers):
    s = start(servers, home, 2)
    a, b = s.client(), s.client()
    victim, survivor = s.owner(a), s.owner(b)
    assert victim != survivor
    send(b, "first")
    os.kill(victim, signal.SIGKILL)
    with pytest.raises((smtplib.SMTPServerDisconnected, OSError)):
        a.noop()  # its sessions go with it
    log = s.wait_log(lambda log: len(s.started(log)) == 3)
    assert f"warning: worker {victim} killed by SIGKILL; restarting it" in log
    send(b, "second")  # the other worker never noticed
    replacement = s.started(log)[-1]
    assert sorted(s.workers()) == sorted([survivor, replacement])
    # new connections go to the new worker too (it has none, so it gets the next one)
    c = s.client()
    assert s.owner(c) == replacement
    send(c, "third")
    assert sorted(queued(home).values()) == ["first", "second", "third"]
    assert s.stop() == 0


def test_a_worker_sigtermed_alone_gets_no_more_connections_and_is_replaced(home, servers):
    s = start(servers, home, 2)
    a, b = s.client(), s.client()
    leaving, staying = s.owner(a), s.owner(b)
    assert leaving != staying
    os.kill(leaving, signal.SIGTERM)  # an admin's kill, or an OOM policy: not the parent's stop
    log = s.wait_log(lambda log: len(s.started(log)) == 3)
    assert f"warning: worker {leaving} is stopping on its own; starting another" in log
    replacement = s.started(log)[-1]
    # every new connection goes to a worker that serves it, never to the leaving one
    for i in range(4):
        c = s.client()
        assert s.owner(c) in (staying, replacement)
        send(c, f"after{i}")
        c.quit()
    send(b, "other")
    s.wait_log(lambda log: f"worker {leaving} done (exit 0)" in log)
    assert "restarting it" not in s.log()  # replaced once, when it said it was leaving
    assert sorted(s.workers()) == sorted([staying, replacement])
    assert sorted(queued(home).values()) == ["after0", "after1", "after2", "after3", "other"]
    assert s.stop() == 0


def everywhere(s: Server, password: str) -> list[smtplib.SMTP]:
    """Logged-in connections until every worker holds one (the parent balances by open
    connections, so two or three do it; a close it has not heard of yet can cost one more)."""
    clients: list[smtplib.SMTP] = []
    while {s.owner(c) for c in clients} != set(s.workers()):
        assert len(clients) < 6, "connections never reached every worker"
        clients.append(s.client(password))
    return clients


def test_sighup_reloads_users_and_limits_in_every_worker(home, servers):
    s = start(servers, home, 2, "[submit]\nmax_message_size = 100000\n")
    for c in everywhere(s, "secret1"):  # both workers have read the users file
        c.quit()
    # Change alice's password in place: same inode, same size, same time stamp, so only a
    # reload (not the users file's change check) can see it.
    users = home / "users"
    st = users.stat()
    old = users.read_text()
    stored = re.search(r"^alice@example\.test:(\S+?)(:|$)", old, re.M).group(1)
    new_hash = hash_password("secret2", "BLF-CRYPT")
    new = old.replace(stored, new_hash if new_hash.startswith("{") else "{BLF-CRYPT}" + new_hash)
    assert len(new) == len(old) and new != old
    with open(users, "r+") as f:
        f.write(new)
    os.utime(users, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert users.stat().st_ino == st.st_ino
    with smtplib.SMTP("127.0.0.1", s.port, timeout=10) as c:  # not seen yet: looks unchanged
        c.ehlo("client.example.test")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            c.login("alice@example.test", "secret2")
    s.cfg.write_text(s.cfg.read_text().replace("max_message_size = 100000", "max_message_size = 54321"))
    s.proc.send_signal(signal.SIGHUP)
    s.wait_log(lambda log: log.count("reloaded the configuration and the users file") == 3)
    for c in everywhere(s, "secret2"):  # both workers reloaded
        assert c.esmtp_features["size"] == "54321"
        c.quit()
    assert s.proc.poll() is None
    assert s.stop() == 0


def gone(pid: int) -> bool:
    """Exited (a zombie waiting for a reaper counts: it serves nothing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_to_the_process_group_drains_once(home, servers, sig):
    # A terminal's Ctrl-C (SIGINT), or systemd stopping the service (SIGTERM to every process
    # of its cgroup), signals the parent and every worker at once: the workers still drain, and
    # do not take the parent's forwarded SIGTERM for a second, "exit now", one.
    s = start(servers, home, 2)
    idle = [c for c in everywhere(s, "secret1")]
    os.killpg(s.proc.pid, sig)
    for c in idle:
        assert c.getreply()[0] == 421
    assert s.proc.wait(30) == 0
    assert f"{signal.Signals(sig).name}: draining 2 worker(s)" in s.log()


def test_workers_drain_and_exit_when_the_parent_dies(home, servers):
    s = start(servers, home, 2)
    workers = s.workers()
    idle = everywhere(s, "secret1")
    os.kill(s.proc.pid, signal.SIGKILL)
    for c in idle:  # the parent's end of the channel closed: each worker stops gently
        assert c.getreply()[0] == 421
    deadline = time.monotonic() + 20
    while not all(gone(pid) for pid in workers):
        assert time.monotonic() < deadline, "workers outlived their parent"
        time.sleep(0.05)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", s.port), timeout=2)


def test_tls_in_every_worker(home, servers, tls_ca):
    # STARTTLS and implicit TLS on connections the parent accepted and a worker adopted
    tls_port = free_port()
    s = start(servers, home, 2, f'[tls]\ncert = "{tls_ca.cert_file}"\nkey = "{tls_ca.key_file}"\n',
              tls_port)
    wait_port(tls_port, proc=s.proc)
    ctx = ssl.create_default_context(cafile=tls_ca.ca_file)
    owners = set()
    for k in range(2):
        c = smtplib.SMTP("127.0.0.1", s.port, timeout=10)
        c.starttls(context=ctx)
        c.login("alice@example.test", "secret1")
        c.sendmail("alice@example.test", ["bob@remote.test"], message(f"starttls{k}"))
        i = smtplib.SMTP_SSL("127.0.0.1", tls_port, timeout=10, context=ctx)
        i.login("alice@example.test", "secret1")
        i.sendmail("alice@example.test", ["bob@remote.test"], message(f"implicit{k}"))
        owners |= {s.owner(c), s.owner(i, tls_port)}
        c.quit()
        i.quit()
    assert owners == set(s.workers())
    assert sorted(queued(home).values()) == ["implicit0", "implicit1", "starttls0", "starttls1"]
    for m in messages(home).values():
        assert re.search(rb"^Received: .*\(using TLSv1\.[23] .*with ESMTPSA", m, re.M | re.S)
    assert s.stop() == 0


def test_one_worker_is_one_process_and_survives_sighup(home, servers):
    s = start(servers, home, 1)
    assert s.workers() == []
    assert "worker" not in s.log()
    s.proc.send_signal(signal.SIGHUP)
    s.wait_log(lambda log: "reloaded the configuration" in log)
    c = s.client()
    send(c, "single")
    c.quit()
    assert list(queued(home).values()) == ["single"]
    assert s.stop() == 0


def test_workers_option_and_key_are_checked(home, run):
    r = run("submit", "--listen", f"127.0.0.1:{free_port()}", "--workers", "0")
    assert r.returncode == 64 and b"--workers takes a number" in r.stderr
    r = run("submit", "--workers", "2", "root", input=b"Subject: x\n\nx\n")
    assert r.returncode == 64 and b"--workers goes with --listen" in r.stderr
    cfg = Path(str(home) + "/../mailtools.toml").resolve()
    cfg.write_text(cfg.read_text() + "[submit]\nworkers = -1\n")
    r = run("submit", "--listen", f"127.0.0.1:{free_port()}")
    assert r.returncode == 78 and b"workers" in r.stderr


def test_a_port_in_use_is_exit_75_and_no_worker_starts(home, run):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        r = run("submit", "--listen", f"127.0.0.1:{taken.getsockname()[1]}", "--workers", "2")
    assert r.returncode == 75 and b"cannot listen" in r.stderr
    assert b"worker" not in r.stderr


def test_a_connection_waiting_when_a_worker_says_it_leaves_goes_to_another(home, servers):
    # The parent sees a new connection and a worker's "I am leaving" in one wake-up (here: the
    # parent is stopped while both happen): the connection must go to a worker that serves
    # it, not to the leaving one, where it waited unread until that worker exited
    s = start(servers, home, 2)
    auth = slow_login(home / "users", "slow@example.test")  # a login of seconds
    clients = []
    for _ in range(3):  # two on one worker, one on the other
        c = smtplib.SMTP("127.0.0.1", s.port, timeout=10)
        c.ehlo("client.example.test")
        clients.append(c)
    owners = [s.owner(c) for c in clients]
    light = min(set(owners), key=owners.count)
    held = clients[owners.index(light)]
    os.kill(s.proc.pid, signal.SIGSTOP)
    try:
        waiting = socket.create_connection(("127.0.0.1", s.port), timeout=30)  # in the backlog
        # the leaving worker busy with a login: its drain waits for it
        held.sock.sendall(auth)
        time.sleep(0.3)
        os.kill(light, signal.SIGTERM)
        time.sleep(0.5)  # it has told the parent (which reads nothing yet) and drains
    finally:
        os.kill(s.proc.pid, signal.SIGCONT)
    try:
        greeting = waiting.recv(100)
    except socket.timeout:
        greeting = b"(none within 30 s)"
    waiting.close()
    assert greeting.startswith(b"220"), greeting
    s.wait_log(lambda log: f"worker {light} done (exit 0)" in log, timeout=60)
    assert s.stop() == 0
