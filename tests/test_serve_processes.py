"""`serve` with submission in worker processes of its own (the default with two or more CPUs)
and without (`--submission-workers 0`): the same flow works either way; the submission
processes are restarted when they die, follow SIGHUP, drain on SIGTERM and never outlive a
SIGKILLed serve."""

from __future__ import annotations

import os
import signal
import smtplib
import time

from support_net import wait_for
from conftest import slow_login
from test_serve import PASSWORD, _insecure, add_user, serve, submit, wait_imap_message  # noqa: F401 - serve is a fixture


def children(pid: int) -> list[int]:
    """Direct children of pid (from /proc)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(name))
    return sorted(out)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (from /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_split(serve, root=None):
    """serve with one submission worker: (Serve, the submission process, its worker)."""
    s = serve(root=root, extra_args=["--submission-workers", "1"])
    (sup,) = children(s.proc.pid)
    wait_for(lambda: len(children(sup)) == 1, what="the worker")
    (worker,) = children(sup)
    return s, sup, worker


def test_in_one_process_with_zero_workers(serve):
    s = serve(extra_args=["--submission-workers", "0"])
    assert children(s.proc.pid) == []
    assert "worker process" not in s.output()
    add_user(s)
    submit(s, "me@localhost", ["me@localhost"], "one process")
    (msg,) = wait_imap_message(s, "me@localhost")
    assert b"Subject: one process" in msg
    assert s.stop() == 0


def test_two_workers_each_take_mail_and_a_killed_one_is_replaced(serve):
    s = serve(extra_args=["--submission-workers", "2"])
    assert "(2 worker processes)" in s.output()
    (sup,) = children(s.proc.pid)
    wait_for(lambda: len(children(sup)) == 2, what="two workers")
    add_user(s)
    first = children(sup)
    os.kill(first[0], signal.SIGKILL)
    wait_for(lambda: len(children(sup)) == 2 and children(sup) != first, what="a new worker")
    for i in range(6):  # ten sessions one after the other: both workers serve some
        submit(s, "me@localhost", ["me@localhost"], f"w{i}")
    msgs = wait_imap_message(s, "me@localhost", count=6)
    assert len(msgs) == 6
    assert s.stop() == 0


def test_a_dead_submission_process_is_started_again(serve):
    s = serve(extra_args=["--submission-workers", "1"])
    add_user(s)
    (sup,) = children(s.proc.pid)
    os.kill(sup, signal.SIGKILL)  # its worker drains and exits: its channel reached its end
    wait_for(lambda: children(s.proc.pid) and children(s.proc.pid) != [sup], what="a new submission process")
    assert "submission process ended" in s.output()
    deadline = time.monotonic() + 30
    while True:  # the listeners never closed (serve keeps them): at worst a moment without a worker
        try:
            submit(s, "me@localhost", ["me@localhost"], "after the restart")
            break
        except (OSError, smtplib.SMTPException):
            assert time.monotonic() < deadline, s.output()
            time.sleep(0.1)
    (msg,) = wait_imap_message(s, "me@localhost")
    assert b"after the restart" in msg
    assert s.stop() == 0


def test_sighup_reaches_the_submission_workers(serve):
    s, sup, worker = start_split(serve)
    s.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: f"submit[{worker}]: reloaded" in s.output(), what="the worker's reload")
    assert f"submit[{sup}]: reloaded" in s.output()


def test_sigterm_drains_and_a_killed_serve_leaves_no_server_behind(serve):
    s, sup, worker = start_split(serve)
    s.proc.send_signal(signal.SIGKILL)
    s.proc.wait(30)
    wait_for(lambda: not alive(sup) and not alive(worker), what="the submission processes to end")
    # and a clean stop reaps them (exit 0, nothing left)
    s2, sup2, worker2 = start_split(serve, root=s.root)
    assert s2.stop() == 0
    assert not alive(sup2) and not alive(worker2)
    assert "stopped" in s2.output()


def test_a_second_stop_signal_ends_serve_and_its_submission_processes_at_once(serve):
    s, sup, worker = start_split(serve)
    add_user(s)
    # a session in the middle of a transaction keeps the first stop's drain waiting
    c = smtplib.SMTP("127.0.0.1", s.ports["submission"], timeout=30)
    c.starttls(context=_insecure())
    c.login("me@localhost", PASSWORD)
    c.mail("me@localhost")
    s.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "finishing in-flight work" in s.output(), what="the first stop")
    s.proc.send_signal(signal.SIGTERM)
    # (without the second signal serve would wait out its grace; the line below tells them apart)
    assert s.proc.wait(30) == 0
    assert "second signal, exiting now" in s.output()
    # without it, the submission processes would drain, waiting for c's transaction until c closes
    wait_for(lambda: not alive(sup) and not alive(worker), what="the submission processes to end")
    c.close()


def test_a_submission_process_that_cannot_be_started_again_is_retried(home, monkeypatch):
    # A restart whose fork fails (EAGAIN: a process limit) once: serve warns and tries again
    # after a pause, and the stop pipe it had closed is not closed a second time (another
    # descriptor may have its number by then)
    import asyncio
    import errno
    import subprocess

    from conftest import free_port, wait_port
    from mailtools import serve as servemod
    from mailtools.core import config as cfgmod

    cfg = cfgmod.load(reload=True)
    port = free_port()
    cfg.submit.listen, cfg.submit.tls_listen = [f"127.0.0.1:{port}"], []
    sub = servemod.SubmissionProcess(cfg, 1)
    sub.start()
    first = sub.pid
    real_popen, calls = subprocess.Popen, []

    def popen(*args, **kw):
        calls.append(args)
        if len(calls) == 1:
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        return real_popen(*args, **kw)

    async def scenario() -> None:
        watch = asyncio.create_task(sub.watch())
        wait_for(lambda: len(children(first)) == 1, what="the first worker")
        monkeypatch.setattr(subprocess, "Popen", popen)
        os.kill(first, signal.SIGKILL)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while len(calls) < 2 or not sub.pid:
            assert not watch.done(), watch.exception()
            assert loop.time() < deadline, "never started again"
            await asyncio.sleep(0.1)
        bystander = os.open(os.devnull, os.O_RDONLY)  # takes the lowest free number
        try:
            sub.stop()
            os.fstat(bystander)  # still open
        finally:
            os.close(bystander)
        assert await sub.wait(20)
        watch.cancel()

    try:
        asyncio.run(scenario())
    finally:
        sub.stop()
        sub.signal(signal.SIGKILL)
        sub.close_sockets()


def test_after_a_stop_signal_the_submission_port_refuses_while_serve_drains(serve):
    # serve's other listeners close at the first stop; the submission ones (serve holds them
    # for the submission process) must too, not take connections into a backlog nobody
    # accepts from any more, where they hung unanswered until serve exited
    import socket

    s, sup, worker = start_split(serve)
    auth = slow_login(s.root / "users", "slow@localhost")  # a login of seconds
    c = smtplib.SMTP("127.0.0.1", s.ports["submission"], timeout=30)
    c.starttls(context=_insecure())
    c.ehlo("client.example.test")
    # the worker busy with this login: its drain, and so serve's stop, wait for it. The stop
    # comes once the worker is in the hash (its CPU time grows; idle, it uses none): sent
    # sooner, the AUTH could still be unread and the worker would drain at once
    idle_cpu = cpu_seconds(worker)
    c.sock.sendall(auth)
    wait_for(lambda: cpu_seconds(worker) - idle_cpu >= 0.2, what="the worker to be in the slow login")
    s.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "finishing in-flight work" in s.output(), what="the first stop")
    time.sleep(0.3)
    assert s.proc.poll() is None and alive(worker)  # still draining
    try:
        late = socket.create_connection(("127.0.0.1", s.ports["submission"]), timeout=30)
    except ConnectionRefusedError:
        got = b"refused"
    else:
        try:
            got = late.recv(100) or b"(closed)"
        except OSError as exc:
            got = repr(exc).encode()
        late.close()
    assert got == b"refused" or got.startswith(b"220"), got
    assert s.proc.wait(30) == 0
    c.close()


def test_sighup_keeps_the_command_line_hostname(serve):
    # the root's mailtools.toml names this machine; --hostname mx.example.test must survive a reload
    s, sup, worker = start_split(serve)
    assert 'hostname = "mx.example.test"' not in (s.root / "mailtools.toml").read_text()
    add_user(s)
    s.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: f"submit[{worker}]: reloaded" in s.output(), what="the worker's reload")
    wait_for(lambda: "configuration and users reloaded" in s.output(), what="serve's reload")
    submit(s, "me@localhost", ["me@localhost"], "after the reload")
    (msg,) = wait_imap_message(s, "me@localhost")
    head = msg.split(b"\r\n\r\n", 1)[0].decode()
    received = [h for h in head.replace("\r\n\t", " ").splitlines() if h.startswith("Received:")]
    assert len(received) == 2 and all("by mx.example.test" in h for h in received), received


def test_a_submission_port_in_use_is_exit_69_with_worker_processes(tmp_path):
    import socket
    import subprocess

    from conftest import free_port, mailtools_cmd

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k not in ("MAILTOOLS_CONFIG", "MAILTOOLS_HOME")}
        args = [*mailtools_cmd(), "serve", "--root", str(tmp_path / "r"), "--submission-workers", "1",
                "--submission", f"127.0.0.1:{port}"]
        for k in ("smtp", "submissions", "imap", "imaps", "pop3", "pop3s"):
            args += [f"--{k}", f"127.0.0.1:{free_port()}"]
        r = subprocess.run(args, capture_output=True, env=env, timeout=60)
    assert r.returncode == 69, r.stderr
    assert b"cannot listen for submission: Address already in use" in r.stderr, r.stderr
