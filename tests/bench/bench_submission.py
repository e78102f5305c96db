#!/usr/bin/env python3
"""bench_submission.py - SMTP submission throughput with AUTH: COUNT messages of SIZE bytes over
SESSIONS connections, each logging in once (AUTH PLAIN) and then sending MAIL/RCPT/DATA in turn
(no pipelining, like smtp-source). The clock runs from the moment every session is logged in
(both sides check ARGON2ID hashes, which costs each login ~0.1-0.7 s of CPU; that is printed
apart) to the last 250 after DATA; each 250 means the message is fsynced in the queue (mailtools) / in Postfix's incoming
queue (cleanup fsyncs before it answers).

    python3 tests/bench/bench_submission.py [--count 5000] [--sessions 10] [--size 2048] [--runs 4]
                                            [--workers N] [--only mailtools|postfix]
    python3 tests/bench/bench_submission.py --target 127.0.0.1:PORT --user U --password P

Without --target it runs both sides itself: `mailtools submit --listen` on a fresh data root,
then (when Postfix and Dovecot are installed and you are root) a private Postfix instance
(its own config_directory and queue under a temp dir, loopback only, SASL through a private
Dovecot auth socket, accepted mail put on hold so nothing is delivered), and prints the ratio.
Both stay up while the runs alternate between them, so a change in the machine's load (it is
shared) meets both sides alike; the ratio is of the medians, the run-by-run ratios follow.
mailtools runs with its default worker processes (one per CPU) unless --workers says otherwise.
smtp-source cannot log in, hence this client.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: shared loopback helpers
from support_net import bytecode_env, free_port, wait_port  # noqa: E402


# --- the client -------------------------------------------------------------------------------
async def _reply(reader) -> tuple[int, bytes]:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed")
        if line[3:4] != b"-":
            return int(line[:3]), line


async def session(host, port, user, password, n, message, sender, rcpt, ready, go) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    await _reply(reader)
    writer.write(b"EHLO bench.example.test\r\n")
    await _reply(reader)
    token = base64.b64encode(f"\0{user}\0{password}".encode())
    writer.write(b"AUTH PLAIN " + token + b"\r\n")
    code, line = await _reply(reader)
    if code != 235:
        raise RuntimeError(f"AUTH failed: {line!r}")
    ready()
    await go.wait()  # the clock starts when every session is logged in
    done = 0
    for _ in range(n):
        writer.write(f"MAIL FROM:<{sender}>\r\n".encode())
        code, line = await _reply(reader)
        if code != 250:
            raise RuntimeError(f"MAIL: {line!r}")
        writer.write(f"RCPT TO:<{rcpt}>\r\n".encode())
        code, line = await _reply(reader)
        if code != 250:
            raise RuntimeError(f"RCPT: {line!r}")
        writer.write(b"DATA\r\n")
        code, line = await _reply(reader)
        if code != 354:
            raise RuntimeError(f"DATA: {line!r}")
        writer.write(message)
        code, line = await _reply(reader)
        if code != 250:
            raise RuntimeError(f"end of DATA: {line!r}")
        done += 1
    writer.write(b"QUIT\r\n")
    try:
        await _reply(reader)
    except ConnectionError:
        pass
    writer.close()
    return done


def make_message(size: int, sender: str, rcpt: str) -> bytes:
    head = f"From: {sender}\r\nTo: {rcpt}\r\nSubject: bench\r\n\r\n".encode()
    line = b"abcdefghijklmnopqrstuvwxyz0123456789 the quick brown fox jumps over it\r\n"
    body = (line * (size // len(line) + 1))[: max(size - len(head), 0)]
    if not body.endswith(b"\r\n"):
        body = body[:-2] + b"\r\n"
    return head + body + b".\r\n"


async def drive(host, port, user, password, count, sessions, size, sender, rcpt,
                at_go=lambda: None) -> tuple[float, float]:
    """(seconds to log every session in, seconds for the messages once all are in); at_go()
    runs when every session is in, just before the clock starts."""
    message = make_message(size, sender, rcpt)
    per = [count // sessions + (1 if i < count % sessions else 0) for i in range(sessions)]
    go = asyncio.Event()
    logged_in = 0
    t0 = time.monotonic()
    stamps = {}

    def ready():
        nonlocal logged_in
        logged_in += 1
        if logged_in == sessions:
            at_go()
            stamps["go"] = time.monotonic()
            go.set()

    done = await asyncio.gather(*(session(host, port, user, password, n, message, sender, rcpt, ready, go)
                                  for n in per))
    t1 = time.monotonic()
    assert sum(done) == count
    return stamps["go"] - t0, t1 - stamps["go"]


def tree_cpu(roots: list[int]) -> float:
    """CPU seconds (user + system, with reaped children's) of the processes `roots` and all their
    live descendants: a server's cost whatever the rest of the machine is doing (kernel threads
    such as the journal's are left out, on both sides)."""
    kids: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # from field 3 (state) on
        kids.setdefault(int(fields[1]), []).append(int(name))
        ticks[int(name)] = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    total, todo = 0, list(roots)
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo += kids.get(pid, [])
    return total / os.sysconf("SC_CLK_TCK")


def measure_once(port, user, password, a, roots=lambda: []) -> tuple[float, float, float]:
    """(messages per second, seconds the logins took, server CPU ms per message) of one run.
    Dirty pages of earlier runs (the kernel writes them back up to 30 s later, into whichever
    run is going on then) are flushed first."""
    os.sync()
    marks = {}
    login_s, dt = asyncio.run(drive("127.0.0.1", port, user, password, a.count, a.sessions, a.size,
                                    user, "someone@remote.test",
                                    at_go=lambda: marks.setdefault("cpu", tree_cpu(roots()))))
    return a.count / dt, login_s, (tree_cpu(roots()) - marks["cpu"]) * 1000 / a.count


def report(label, runs, a) -> float:
    rates = [r[0] for r in runs]
    med = statistics.median(rates)
    cpu = f"server CPU {statistics.median(r[2] for r in runs):.2f} ms/msg; " if any(r[2] for r in runs) else ""
    print(f"{label:<52} {med:7.0f} msg/s  ({', '.join(f'{r:.0f}' for r in rates)}; {cpu}"
          f"{a.count} x {a.size} B over {a.sessions} sessions; logging the {a.sessions} sessions in "
          f"took {statistics.median(r[1] for r in runs):.2f} s, not counted)")
    return med


def measure(label, port, user, password, a) -> float:
    return report(label, [measure_once(port, user, password, a) for _ in range(a.runs)], a)


# --- mailtools --------------------------------------------------------------------------------
@contextlib.contextmanager
def mailtools_server(a, work: Path):
    """Yields (label, port, check) with the server running; check() after the runs."""
    root = work / "mt"
    root.mkdir()
    cfg = work / "mailtools.toml"
    cfg.write_text(f'hostname = "mx.example.test"\nroot = "{root}"\nlocal_domains = ["example.test"]\n'
                   f"[submit]\nmax_connections = 200\n")
    env = bytecode_env({**os.environ, "MAILTOOLS_CONFIG": str(cfg)}, work / "pycache")
    subprocess.run([sys.executable, "-m", "mailtools", "user", "add", "--password-stdin", "bench@example.test"],
                   input=b"benchpw\n", env=env, check=True, capture_output=True)
    port = free_port()
    workers = ["--workers", str(a.workers)] if a.workers else []
    # Its own session, as a daemon has (Postfix's master and Dovecot detach with setsid()):
    # with the kernel's autogroup scheduling (sched_autogroup_enabled=1, the default on
    # desktop-configured and many distribution kernels) CPU is shared per session first, and a
    # server left in the benchmark's session would share one slice with the client driving it
    # whenever the machine is busy, while Postfix got a slice of its own.
    proc = subprocess.Popen([sys.executable, "-m", "mailtools", "submit", "--listen", f"127.0.0.1:{port}", *workers],
                            env=env, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_port(port, timeout=20)

        def check(total: int) -> None:
            n = len(os.listdir(root / "queue" / "new"))
            assert n == total, f"queue holds {n}, expected {total}"

        yield (f"mailtools submit --listen, {a.workers or os.cpu_count()} worker(s) (AUTH, no TLS)",
               port, check, lambda: [proc.pid])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


# --- Postfix (private instance) ------------------------------------------------------------------
@contextlib.contextmanager
def postfix_server(a, work: Path):
    """Yields (label, port, check) with the private instance running, or None (skipped)."""
    if os.getuid() != 0 or not shutil.which("postconf") or not shutil.which("dovecot"):
        print("postfix submission: needs root, Postfix and Dovecot installed; skipped")
        yield None
        return
    pf = work / "pf"
    conf, queue, data = pf / "etc", pf / "spool", pf / "lib"
    for d in (conf, queue, data):
        d.mkdir(parents=True)
    for d in (work, pf):  # postfix's daemons must be able to reach their directories
        d.chmod(0o755)
    shutil.chown(data, "postfix")
    shutil.copy("/etc/postfix/master.cf", conf / "master.cf")
    (conf / "main.cf").write_text("")
    auth_sock = pf / "auth" / "auth-client"
    port = free_port()
    settings = {
        "compatibility_level": "3.6", "queue_directory": str(queue), "data_directory": str(data),
        "mail_owner": "postfix", "setgid_group": "postdrop", "inet_interfaces": "loopback-only",
        "inet_protocols": "ipv4", "myhostname": "mta.example.test", "mydestination": "",
        "mynetworks": "127.0.0.0/8", "smtpd_peername_lookup": "no", "default_transport": "discard",
        "relay_domains": "", "maillog_file": str(pf / "maillog"),
        "maillog_file_prefixes": "/var, /dev/stdout, /tmp", "multi_instance_enable": "no",
        "smtpd_tls_security_level": "none", "smtp_tls_security_level": "none",
        "alias_maps": "", "alias_database": "", "master_service_disable": "",
        # accepted mail goes on hold: Postfix only queues, as mailtools does without a relay
        "bench_submission_rcpt": "check_recipient_access inline:{ remote.test=HOLD }, permit",
    }
    subprocess.run(["postconf", "-c", str(conf), "-e", *(f"{k} = {v}" for k, v in settings.items())], check=True)
    # master.cf: keep only the internal services; add the submission listener on loopback
    lines = (conf / "master.cf").read_text().splitlines()
    kept = [l for l in lines if not l.startswith(("smtp      inet", "#")) and "inet" not in l.split()[1:2]]
    opts = ["smtpd_sasl_auth_enable=yes", "smtpd_sasl_type=dovecot", f"smtpd_sasl_path={auth_sock}",
            "smtpd_sasl_security_options=noanonymous", "smtpd_tls_auth_only=no",
            "smtpd_client_restrictions=permit_sasl_authenticated,reject",
            "smtpd_relay_restrictions=permit_sasl_authenticated,reject",
            "smtpd_recipient_restrictions=$bench_submission_rcpt",
            "syslog_name=postfix/submission"]
    kept.append(f"127.0.0.1:{port} inet n - n - - smtpd " + " ".join(f"-o {o}" for o in opts))
    (conf / "master.cf").write_text("\n".join(kept) + "\n")
    # private dovecot: only its auth service, passwd-file with the bench user
    dv = pf / "dovecot"
    dv.mkdir()
    (pf / "auth").mkdir()
    pw = subprocess.run(["doveadm", "pw", "-s", "ARGON2ID", "-p", "benchpw"], capture_output=True, text=True)
    scheme = pw.stdout.strip() if pw.returncode == 0 else "{PLAIN}benchpw"
    (dv / "users").write_text(f"bench@example.test:{scheme}::::::\n")
    (dv / "dovecot.conf").write_text(f"""
base_dir = {dv}/run
state_dir = {dv}/state
log_path = {dv}/log
protocols =
ssl = no
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = {dv}/users
}}
service auth {{
  unix_listener {auth_sock} {{
    mode = 0666
  }}
}}
service anvil {{
  chroot =
}}
""")
    # daemons keep inherited pipes open: never capture their output, or run() waits forever
    errlog = open(pf / "start.log", "w+")
    dproc = subprocess.run(["dovecot", "-c", str(dv / "dovecot.conf")], stdin=subprocess.DEVNULL,
                           stdout=errlog, stderr=errlog, timeout=30)
    if dproc.returncode != 0:
        print(f"postfix submission: private dovecot would not start ({pf / 'start.log'}); skipped")
        yield None
        return
    try:
        subprocess.run(["postfix", "-c", str(conf), "check"], stdin=subprocess.DEVNULL, stdout=errlog,
                       stderr=errlog, timeout=60)
        st = subprocess.run(["postfix", "-c", str(conf), "start"], stdin=subprocess.DEVNULL, stdout=errlog,
                            stderr=errlog, timeout=60)
        if st.returncode != 0:
            errlog.seek(0)
            print(f"postfix submission: private instance would not start: {errlog.read()[-500:]}; skipped")
            yield None
            return
        try:
            wait_port(port, timeout=20)
            def roots() -> list[int]:  # postfix's master (smtpd, cleanup...) and dovecot's
                pids = []
                for pidfile in (queue / "pid" / "master.pid", dv / "run" / "master.pid"):
                    try:
                        pids.append(int(pidfile.read_text().split()[0]))
                    except (OSError, ValueError, IndexError):
                        pass
                return pids

            yield "postfix submission (AUTH via dovecot, no TLS)", port, lambda total: None, roots
        finally:
            subprocess.run(["postfix", "-c", str(conf), "stop"], stdin=subprocess.DEVNULL, stdout=errlog,
                           stderr=errlog, timeout=60)
    finally:
        pidfile = dv / "run" / "master.pid"
        try:
            pid = int(pidfile.read_text().split()[0])
            os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                time.sleep(0.1)
                os.kill(pid, 0)
        except (OSError, ValueError):
            pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--target", help="HOST:PORT of a server to measure instead of starting both")
    ap.add_argument("--user", default="bench@example.test")
    ap.add_argument("--password", default="benchpw")
    ap.add_argument("--only", choices=("mailtools", "postfix"))
    ap.add_argument("--workers", type=int, help="submit --workers N (default: the server's, one per CPU)")
    a = ap.parse_args()
    if a.target:
        host, _, port = a.target.rpartition(":")
        if host not in ("127.0.0.1", "localhost", "::1"):
            sys.exit("loopback targets only")
        measure(a.target, int(port), a.user, a.password, a)
        return
    print(f"load average {os.getloadavg()[0]:.1f}")
    work = Path(tempfile.mkdtemp(prefix="bench-submission-"))
    try:
        with contextlib.ExitStack() as stack:
            sides = []
            if a.only != "postfix":
                sides.append(stack.enter_context(mailtools_server(a, work)))
            if a.only != "mailtools":
                sides.append(stack.enter_context(postfix_server(a, work)))
            sides = [side for side in sides if side is not None]
            # Both servers stay up and the runs alternate, in ABBA order (mailtools, postfix,
            # postfix, mailtools, ...), so a change in the machine's load meets both sides alike
            # and neither always runs right after the other's disk writes.
            results: dict[str, list] = {label: [] for label, _, _, _ in sides}
            # One round per side that is not counted, printed apart: what is compared is the
            # steady state of a queue in use. (The first round into a brand-new mailtools spool
            # ran at ~0.55-0.65x of the later ones until its state directories were spread over
            # block groups: see core.queue.Queue._ensure.)
            warm = argparse.Namespace(**{**vars(a), "count": a.count})
            for label, port, _, roots in sides:
                rate = measure_once(port, "bench@example.test", "benchpw", warm, roots)[0]
                print(f"{label:<52} {rate:7.0f} msg/s  (warm-up on the new queue, not counted)")
            for k in range(a.runs):
                for label, port, _, roots in (sides if k % 2 == 0 else sides[::-1]):
                    results[label].append(measure_once(port, "bench@example.test", "benchpw", a, roots))
            medians = [report(label, runs, a) for label, runs in results.items()]
            for _, _, check, _ in sides:
                check(a.count * a.runs + warm.count)
            print(f"load average after {os.getloadavg()[0]:.1f}")
            if len(medians) == 2:
                pairs = [m[0] / p[0] for m, p in zip(*results.values())]
                print(f"ratio mailtools / postfix: {medians[0] / medians[1]:.2f}x (goal: >= 1.0; "
                      f"run by run: {', '.join(f'{r:.2f}' for r in pairs)})")
                cpu = [statistics.median(r[2] for r in runs) for runs in results.values()]
                if cpu[1]:
                    print(f"server CPU per message, postfix / mailtools: {cpu[1] / cpu[0]:.2f}x "
                          f"(above 1: mailtools uses less)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
