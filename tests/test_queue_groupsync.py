"""The submission side of the queue. Group commit of new/'s fsync (core/queue._GroupSync): a
caller returns only once an fsync that started after its change has finished, and concurrent
callers share fsyncs. Nudger: the relay daemon's FIFO kept open, one byte while unread."""

from __future__ import annotations

import os
import threading
import time

import pytest

import mailtools.core.queue as qmod


def test_every_change_is_covered_by_an_fsync_that_started_after_it(monkeypatch):
    lock = threading.Lock()
    made = 0  # changes made so far (a caller's change happens before it calls sync())
    durable = 0  # changes covered by a finished fsync
    calls = 0

    def fake_fsync(fd):
        nonlocal durable, calls
        with lock:
            covers = made
            calls += 1
        time.sleep(0.002)  # the disk
        with lock:
            durable = max(durable, covers)

    monkeypatch.setattr(qmod.os, "fsync", fake_fsync)
    gs = qmod._GroupSync(-1)
    failures = []

    def worker():
        nonlocal made
        for _ in range(40):
            with lock:
                made += 1
                mine = made
            gs.sync()
            with lock:
                if durable < mine:
                    failures.append(mine)

    threads = [threading.Thread(target=worker) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert calls < 12 * 40  # shared: fewer fsyncs than changes


def test_a_failed_fsync_fails_its_caller_and_the_next_one_retries(monkeypatch):
    outcomes = iter([OSError(5, "Input/output error"), None])

    def flaky(fd):
        exc = next(outcomes)
        if exc:
            raise exc

    monkeypatch.setattr(qmod.os, "fsync", flaky)
    gs = qmod._GroupSync(-1)
    with pytest.raises(OSError):
        gs.sync()
    gs.sync()  # a real fsync this time, not "covered" by the failed one


def test_concurrent_enqueues_all_land_whole(tmp_path):
    q = qmod.Queue(tmp_path / "queue")
    ids, errors = [], []

    def worker(n):
        try:
            for i in range(25):
                ids.append(q.enqueue("a@example.test", [f"r{n}.{i}@example.net"], b"Subject: x\n\nbody\n"))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(ids) == q.ids("new") and len(ids) == 200
    assert all(q.read_message(e) == b"Subject: x\n\nbody\n" for e in q.entries())


def test_nudger_wakes_a_daemon_once_per_drain_and_survives_its_restart(tmp_path):
    n = qmod.Nudger(tmp_path)
    assert n() is False  # no daemon: nothing to wake, nothing raised
    listener = qmod.NudgeListener(tmp_path)
    try:
        assert n() and n() and n()
        assert os.read(listener.fd, 100) == b"!"  # one byte while unread: one wake-up
        assert n()
        assert listener.wait(1.0) is True
        assert listener.wait(0.05) is False
    finally:
        listener.close()
    assert n() is False  # the daemon went away (EPIPE): closed, no exception
    listener = qmod.NudgeListener(tmp_path)
    try:
        assert n() and listener.wait(1.0) is True  # a new daemon is found again
    finally:
        listener.close()
        n.close()


def test_nudger_called_from_many_threads_at_once_leaves_the_daemon_woken(tmp_path):
    # callers that find another one nudging return at once; that one looks again for them
    import threading

    n = qmod.Nudger(tmp_path)
    listener = qmod.NudgeListener(tmp_path)
    try:
        for _ in range(20):
            start = threading.Barrier(16)

            def call():
                start.wait()
                for _ in range(20):
                    assert n()

            threads = [threading.Thread(target=call) for _ in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert os.read(listener.fd, 100) == b"!"  # woken, once: the last calls too
            assert n._again is False
    finally:
        listener.close()
        n.close()


def test_a_process_without_threads_fsyncs_without_importing_threading(tmp_path):
    # sendmail's one-message process: enqueue must not pull in threading for the group commit
    import subprocess
    import sys

    # -I -S as the installed sendmail launcher runs: a site .pth (certifi, say) may load threading
    # on its own, and that is not ours to answer for
    root = os.path.dirname(os.path.dirname(os.path.dirname(qmod.__file__)))
    code = (f"import sys; sys.path.insert(0, {root!r}); from mailtools.core.queue import Queue; "
            f"q = Queue({str(tmp_path / 'q')!r}); q.enqueue('a@example.test', ['b@example.test'], b'x\\r\\n'); "
            "print('threading' in sys.modules, len(q.ids('new')))")
    r = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "1"], r.stdout


def test_a_failed_fsync_of_new_takes_the_entry_back(tmp_path, monkeypatch):
    # "not queued" (the caller retries) must mean not queued: no entry left visible in new/
    q = qmod.Queue(str(tmp_path / "q"))
    q.enqueue("a@example.test", ["b@example.test"], b"first\r\n")

    def failing_sync(self):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(qmod._GroupSync, "sync", failing_sync)
    with pytest.raises(OSError):
        q.enqueue("a@example.test", ["b@example.test"], b"second\r\n")
    assert len(q.ids("new")) == 1 and os.listdir(tmp_path / "q" / "tmp") == []


def test_active_spreads_new_claim_directories_on_ext4(tmp_path):
    # chattr +T on queue/active/, where claims make directories (see queue.spread_subdirs), also
    # on a queue made before; ext2/3/4 only
    import shutil
    import subprocess

    fs = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True).stdout.strip()
    if fs not in ("ext2/ext3", "ext4") or not shutil.which("lsattr"):
        pytest.skip(f"file system {fs!r}: the flag is ext2/3/4's")
    for sub in ("tmp", "new", "active", "hold", "trash"):
        os.makedirs(tmp_path / "q" / sub)  # as an older version made it
    q = qmod.Queue(str(tmp_path / "q"))
    q.claim(q.enqueue("a@example.test", ["b@example.test"], b"x\r\n"))
    attrs = subprocess.run(["lsattr", "-d", str(tmp_path / "q" / "active")], capture_output=True, text=True).stdout.split()[0]
    assert "T" in attrs, attrs


def test_a_new_queue_and_a_new_maildir_spread_their_subdirectories_on_ext4(tmp_path):
    # chattr +T on the queue directory and on a Maildir before their subdirectories are made
    # (see Queue._ensure), so tmp/ and new/ land in block groups of their own; ext2/3/4 only
    import shutil
    import subprocess

    from mailtools.core import maildir

    fs = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True).stdout.strip()
    if fs not in ("ext2/ext3", "ext4") or not shutil.which("lsattr"):
        pytest.skip(f"file system {fs!r}: the flag is ext2/3/4's")

    def attrs(path) -> str:
        return subprocess.run(["lsattr", "-d", str(path)], capture_output=True, text=True).stdout.split()[0]

    q = qmod.Queue(str(tmp_path / "spool" / "q"))
    q.enqueue("a@example.test", ["b@example.test"], b"x\r\n")
    assert "T" in attrs(tmp_path / "spool" / "q")
    assert "T" not in attrs(tmp_path / "spool")  # only what the queue made
    maildir.deliver_path(tmp_path / "mail" / "bob", b"x\r\n")
    assert "T" in attrs(tmp_path / "mail" / "bob")
    # on an existing Maildir nothing is changed
    os.makedirs(tmp_path / "old" / "cur")
    os.makedirs(tmp_path / "old" / "new")
    os.makedirs(tmp_path / "old" / "tmp")
    maildir.deliver_path(tmp_path / "old", b"x\r\n")
    assert "T" not in attrs(tmp_path / "old")
