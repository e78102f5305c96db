"""Local deliveries in batches: maildir.DirSyncBatch (one fsync of new/ per batch, at its end)
and the queue runner's delivery threads (what a failed fsync of new/ makes of a batch)."""

from __future__ import annotations

import asyncio
import errno
import os
import threading

from mailtools.core import maildir
from mailtools.core.config import from_dict
from mailtools.core.queue import Queue

MSG = b"From: a@example.test\r\nSubject: batch\r\n\r\nbody\r\n"


def _record_dir_syncs(monkeypatch) -> list:
    synced = []
    real = maildir._fsync_dir
    monkeypatch.setattr(maildir, "_fsync_dir", lambda d: (synced.append(d), real(d)))
    return synced


def test_without_a_batch_each_delivery_fsyncs_new(tmp_path, monkeypatch):
    synced = _record_dir_syncs(monkeypatch)
    for _ in range(3):
        maildir.deliver_path(tmp_path / "M", MSG)
    assert synced == [os.path.join(str(tmp_path / "M"), "new")] * 3


def test_a_batch_fsyncs_each_directory_once_at_its_end(tmp_path, monkeypatch):
    synced = _record_dir_syncs(monkeypatch)
    with maildir.DirSyncBatch():
        for _ in range(3):
            maildir.deliver_path(tmp_path / "M", MSG)
        maildir.deliver_path(tmp_path / "M", MSG, flags="S")
        maildir.deliver_path(tmp_path / "N", MSG)
        assert synced == []  # not yet: the caller reports nothing before the block ends
        # another thread meanwhile is not part of this batch
        t = threading.Thread(target=maildir.deliver_path, args=(tmp_path / "O", MSG))
        t.start()
        t.join()
        assert synced == [os.path.join(str(tmp_path / "O"), "new")]
    assert synced[1:] == [os.path.join(str(tmp_path / d), s) for d, s in (("M", "new"), ("M", "cur"), ("N", "new"))]
    assert len(os.listdir(tmp_path / "M" / "new")) == 3 and len(os.listdir(tmp_path / "M" / "cur")) == 1
    maildir.deliver_path(tmp_path / "M", MSG)  # after the block: at once again
    assert synced[-1] == os.path.join(str(tmp_path / "M"), "new") and len(synced) == 5


def _runner(tmp_path):
    from mailtools.relay.runner import Runner

    cfg = from_dict({"root": str(tmp_path), "hostname": "mx.example.test", "local_domains": ["example.test"]})
    os.makedirs(cfg.maildir_for("bob@example.test"))
    return cfg, Runner(cfg)


def test_runner_batch_delivers_and_a_failed_fsync_of_new_defers_it(tmp_path, monkeypatch):
    from mailtools.relay.runner import DEFERRED, SENT, EntryWork, Job

    cfg, runner = _runner(tmp_path)
    q = Queue(cfg.queue_dir)
    jobs = []
    for rcpts in (["bob@example.test"], ["bob@example.test", "nobody@example.test"]):
        entry = q.claim(q.enqueue("a@example.test", rcpts, MSG))
        jobs.append(Job(EntryWork(entry, MSG), "example.test", list(entry.recipients)))
    out = runner._deliver_batch(jobs)
    assert [o.state for o in out[0].values()] == [SENT]
    assert out[1]["bob@example.test"].state == SENT and out[1]["nobody@example.test"].state == "bounced"
    assert len(os.listdir(cfg.maildir_for("bob@example.test") / "new")) == 2

    def fail(d):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(maildir, "_fsync_dir", fail)
    out = runner._deliver_batch(jobs)
    # not durable, so not delivered: tried again later (a duplicate at worst, never a loss)
    assert out[0]["bob@example.test"].state == DEFERRED and out[0]["bob@example.test"].status == "4.3.0"
    assert out[1]["bob@example.test"].state == DEFERRED
    assert out[1]["nobody@example.test"].state == "bounced"  # unchanged: nothing was written


def test_a_failed_fsync_of_one_maildir_defers_only_its_deliveries(tmp_path, monkeypatch):
    from mailtools.relay.runner import DEFERRED, SENT, EntryWork, Job

    cfg, runner = _runner(tmp_path)
    os.makedirs(cfg.maildir_for("carol@example.test"))
    q = Queue(cfg.queue_dir)
    jobs = []
    for rcpts in (["bob@example.test"], ["carol@example.test", "bob+lists@example.test"], ["carol@example.test"]):
        entry = q.claim(q.enqueue("a@example.test", rcpts, MSG))
        jobs.append(Job(EntryWork(entry, MSG), "example.test", list(entry.recipients)))
    carol_new = os.path.join(str(cfg.maildir_for("carol@example.test")), "new")
    real, tried = maildir._fsync_dir, []

    def fail_carol(d):
        tried.append(d)
        if d == carol_new:
            raise OSError(errno.EIO, "Input/output error")
        real(d)

    monkeypatch.setattr(maildir, "_fsync_dir", fail_carol)
    out = runner._deliver_batch(jobs)
    assert out[0]["bob@example.test"].state == SENT
    assert out[1]["bob+lists@example.test"].state == SENT  # bob's Maildir, fsynced
    assert out[1]["carol@example.test"].state == DEFERRED and out[1]["carol@example.test"].status == "4.3.0"
    assert "Input/output error" in out[1]["carol@example.test"].reply
    assert out[2]["carol@example.test"].state == DEFERRED
    assert sorted(tried) == sorted([carol_new, os.path.join(str(cfg.maildir_for("bob@example.test")), "new")])


def test_runner_pass_delivers_a_burst_through_the_batches(tmp_path):
    cfg, runner = _runner(tmp_path)
    q = Queue(cfg.queue_dir)
    for i in range(40):
        q.enqueue("a@example.test", ["bob@example.test"], MSG + b"%d\r\n" % i)
    assert asyncio.run(runner.run_pass()) == 40
    assert runner.stats["sent"] == 40 and q.entries() == []
    new = cfg.maildir_for("bob@example.test") / "new"
    bodies = sorted(p.read_bytes().rsplit(b"\n", 2)[-2] for p in new.iterdir())
    assert bodies == sorted(b"%d" % i for i in range(40))
