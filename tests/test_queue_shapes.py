"""core/queue: a waiting entry is a plain file in new/, a claimed one a directory in active/,
and entries that are directories in new/ (older versions', released ones) keep working."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from mailtools.core import queue as qmod
from mailtools.core.queue import Entry, Queue, QueueError, Recipient, new_id

MSG = b"Subject: shapes\r\n\r\nbody\r\n\r\nafter an empty line of the message\r\n"


@pytest.fixture
def q(tmp_path):
    return Queue(tmp_path / "queue")


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _make(q, shape: str) -> str:
    """An entry in new/ of the given shape: 'file' (enqueue), 'dir' (claimed, updated and
    released: a directory with entry and envelope), 'legacy' (message + envelope)."""
    qid = q.enqueue("a@example.test", ["b@example.net", "c@example.net"], MSG)
    if shape == "dir":
        e = q.claim(qid)
        e.recipients[0].state = "deferred"
        q.update(e)
        assert q.release(e)
    elif shape == "legacy":
        os.unlink(os.path.join(q.path, "new", qid))
        d = os.path.join(q.path, "new", qid)
        os.mkdir(d)
        with open(os.path.join(d, "message"), "wb") as f:
            f.write(MSG)
        entry = Entry(qid, "a@example.test", [Recipient("b@example.net"), Recipient("c@example.net")],
                      time.time(), len(MSG))
        with open(os.path.join(d, "envelope"), "wb") as f:
            f.write(entry.serialise())
    return qid


@pytest.mark.parametrize("shape", ["file", "dir", "legacy"])
def test_every_operation_takes_either_shape(q, shape):
    qid = _make(q, shape)
    p = os.path.join(q.path, "new", qid)
    assert os.path.isdir(p) == (shape != "file")
    assert [e.id for e in q.entries()] == [qid] and q.problems == []
    assert q.read_message(q.get(qid)) == MSG
    # held and released, as it is
    q.hold(qid)
    assert q.get(qid).held and os.path.isdir(os.path.join(q.path, "hold", qid)) == (shape != "file")
    assert q.claim(qid) is None
    q.release_hold(qid)
    assert q.get(qid).state_dir == "new"
    # claimed: always a directory in active/, with the message
    got = q.claim_with_message(qid, want=lambda e: True)
    assert got is not None
    e, data = got
    assert os.path.isdir(e.path) and e.state_dir == "active" and q.ids("active") == [qid]
    assert (data if data is not None else q.read_message(e)) == MSG and q.read_message(e) == MSG
    assert [x.state_dir for x in q.entries()] == ["active"]
    # marked while claimed, held when let go
    q.hold(qid)
    assert q.release(e) and q.get(qid).held
    q.release_hold(qid)
    # its runner dies: recover() puts it back, whole
    e = q.claim(qid)
    os.rename(e.path, os.path.join(q.path, "active", f"{qid}.{_dead_pid()}.{qmod._HOST}.1"))
    assert q.recover(3600) == [qid]
    assert q.get(qid).state_dir == "new" and q.read_message(q.get(qid)) == MSG
    assert os.listdir(os.path.join(q.path, "active")) == []
    # deleted: gone from every state directory and from trash/
    q.delete(qid)
    with pytest.raises(QueueError):
        q.get(qid)
    for sub in ("tmp", "new", "active", "hold", "trash"):
        assert os.listdir(os.path.join(q.path, sub)) == [], sub


def test_a_finished_plain_file_entry_leaves_nothing(q, tmp_path, monkeypatch):
    monkeypatch.setattr(qmod._Remover, "recycle", False)  # no spare kept: removed at once
    qid = q.enqueue("a@example.test", ["b@example.net"], MSG)
    e = q.claim(qid)
    assert os.listdir(e.path) == ["entry"]
    e.recipients[0].state = "sent"
    assert q.release(e)
    deadline = time.monotonic() + 30  # trash/ is emptied by a background thread (spares after 1 s)
    while os.listdir(tmp_path / "queue" / "trash") and time.monotonic() < deadline:
        time.sleep(0.01)
    for sub in ("tmp", "new", "active", "hold", "trash"):
        assert os.listdir(tmp_path / "queue" / sub) == [], sub


def test_two_claimers_racing_on_one_plain_file(q, monkeypatch):
    # B claims the entry after A made its claim directory and before A's rename: exactly one
    # wins, and the loser leaves no empty directory in active/
    qid = q.enqueue("a@example.test", ["b@example.net"], MSG)
    other = Queue(q.path)
    real_mkdir = os.mkdir
    won_by_b = []

    def mkdir(path, *args, **kw):
        real_mkdir(path, *args, **kw)
        if not won_by_b:
            monkeypatch.setattr(os, "mkdir", real_mkdir)
            won_by_b.append(other.claim(qid))

    monkeypatch.setattr(os, "mkdir", mkdir)
    assert q.claim(qid) is None
    (b,) = won_by_b
    assert b is not None and b.state_dir == "active"
    assert os.listdir(os.path.join(q.path, "active")) == [os.path.basename(b.path)]
    assert os.listdir(b.path) == ["entry"] and q.read_message(b) == MSG


def test_recover_removes_the_empty_claim_of_a_claimer_killed_after_its_mkdir(q, tmp_path):
    qid = q.enqueue("a@example.test", ["b@example.net"], MSG)
    code = textwrap.dedent(f"""
        import os
        from mailtools.core.queue import Queue
        real = os.mkdir
        def mkdir(path, *a, **kw):
            real(path, *a, **kw)
            os.kill(os.getpid(), 9)  # between the claim directory and the rename into it
        os.mkdir = mkdir
        Queue({str(tmp_path / 'queue')!r}).claim({qid!r})
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == -signal.SIGKILL, p.stderr
    active = tmp_path / "queue" / "active"
    (left,) = os.listdir(active)
    assert os.listdir(active / left) == [] and q.ids("new") == [qid]
    # an empty claim of a live runner (mid-claim, on this host) stays
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = active / f"{qid}.{live.pid}.{qmod._HOST}.2"
        busy.mkdir()
        assert q.recover(3600) == []  # nothing recovered: the entry never left new/
        assert os.listdir(active) == [busy.name]
    finally:
        live.kill()
        live.wait()
    assert q.recover(3600) == [] and os.listdir(active) == []
    assert q.get(qid).state_dir == "new" and q.read_message(q.claim(qid)) == MSG


def test_recover_puts_back_an_entry_directory_claimed_into_a_claim_directory(q, tmp_path):
    # the crash leftover of a plain-file claim that raced another runner's release (see _unnest)
    qid = _make(q, "dir")
    outer = tmp_path / "queue" / "active" / f"{qid}.{_dead_pid()}.{qmod._HOST}.1"
    outer.mkdir()
    os.rename(tmp_path / "queue" / "new" / qid, outer / "entry")
    assert q.entries() == []  # not a readable entry while nested
    assert q.recover(3600) == [qid]
    assert os.listdir(tmp_path / "queue" / "active") == []
    e = q.get(qid)
    assert e.state_dir == "new" and [r.state for r in e.recipients] == ["deferred", "queued"]
    assert q.read_message(e) == MSG


def test_recover_puts_back_a_plain_file_left_in_active(q, tmp_path):
    qid = q.enqueue("a@example.test", ["b@example.net"], MSG)
    os.rename(tmp_path / "queue" / "new" / qid,
              tmp_path / "queue" / "active" / f"{qid}.{_dead_pid()}.{qmod._HOST}.1")
    assert q.recover(3600) == [qid]
    assert (tmp_path / "queue" / "new" / qid).is_file() and q.read_message(q.get(qid)) == MSG


def test_a_taken_id_is_refused_and_the_queued_entry_kept(q):
    qid = new_id()
    q.enqueue("a@example.test", ["b@example.test"], MSG, qid=qid)
    before = open(os.path.join(q.path, "new", qid), "rb").read()
    with pytest.raises(FileExistsError):
        q.enqueue("c@example.test", ["d@example.test"], b"other\r\n", qid=qid)
    assert open(os.path.join(q.path, "new", qid), "rb").read() == before  # not replaced
    assert os.listdir(os.path.join(q.path, "tmp")) == []


KILLED_WRITER = textwrap.dedent("""
    import os, sys
    from mailtools.core import queue as qmod
    def half(fd, head, data):
        os.write(fd, head + b"\\n" + data[: len(data) // 2])
        os.kill(os.getpid(), 9)
    qmod._write_entry = half
    qmod.Queue(sys.argv[1]).enqueue("a@example.test", ["b@example.net"], b"x" * 100000)
""")


def test_kill_mid_enqueue_leaves_nothing_in_new(q, tmp_path):
    q.enqueue("a@example.test", ["b@example.net"], MSG)  # the directories, and one whole entry
    p = subprocess.run([sys.executable, "-c", KILLED_WRITER, q.path], capture_output=True, text=True)
    assert p.returncode == -signal.SIGKILL, p.stderr
    (half,) = os.listdir(tmp_path / "queue" / "tmp")  # the partial file, where no runner looks
    assert (tmp_path / "queue" / "tmp" / half).is_file()
    assert len(q.ids("new")) == 1 and len(q.entries()) == 1 and q.problems == []
    q.recover(3600)
    assert os.listdir(tmp_path / "queue" / "tmp") == [half]  # young: it may be an enqueue at work
    q.recover(3600, tmp_older_than_s=0)
    assert os.listdir(tmp_path / "queue" / "tmp") == []


def test_a_runner_that_queues_nothing_claims_into_the_directory_of_a_finished_entry(q, tmp_path, monkeypatch):
    monkeypatch.setattr(qmod._Remover, "SPARE_AGE", 3600.0)  # no race with its expiry, however busy
    first, second = (q.enqueue("a@example.test", ["b@example.net"], MSG) for _ in range(2))
    monkeypatch.setattr(qmod._Remover, "recycle", False)  # as in `relay --once`
    e = q.claim(first)
    e.recipients[0].state = "sent"
    ino = os.stat(e.path).st_ino
    assert q.release(e)
    deadline = time.monotonic() + 30
    while not qmod._Remover.spares() and time.monotonic() < deadline:
        time.sleep(0.005)
    (spare,) = qmod._Remover.spares()
    assert os.listdir(spare) == []  # the delivered entry's file is gone, its directory kept
    e = q.claim(second)
    assert os.stat(e.path).st_ino == ino and os.listdir(e.path) == ["entry"]
    assert q.read_message(e) == MSG and os.listdir(tmp_path / "queue" / "trash") == []
