"""Queue.claim_with_message(): the claim and the message from one read of a one-file entry."""

from __future__ import annotations

import os

import pytest

from mailtools.core.queue import Queue, new_id
from mailtools.core.envelope import Entry, Recipient

MSG = b"Subject: claim\r\n\r\nbody\r\n\r\nafter an empty line of the message\r\n"


@pytest.fixture
def q(tmp_path):
    return Queue(tmp_path / "queue")


def test_fresh_entry_comes_with_its_message(q):
    qid = q.enqueue("a@example.test", ["b@example.net"], MSG)
    entry, data = q.claim_with_message(qid, want=lambda e: True)
    assert entry.state_dir == "active" and entry.id == qid and data == MSG
    assert q.read_message(entry) == MSG
    assert q.claim_with_message(qid, want=lambda e: True) is None  # claimed already


def test_not_wanted_is_not_claimed(q):
    qid = q.enqueue("a@example.test", ["b@example.net"], MSG)
    assert q.claim_with_message(qid, want=lambda e: False) is None
    assert q.ids("new") == [qid]


def test_an_updated_entry_is_claimed_with_its_new_state(q):
    qid = q.enqueue("a@example.test", ["b@example.net", "c@example.net"], MSG)
    e = q.claim(qid)
    e.recipients[0].state = "sent"
    q.update(e)  # writes envelope beside the one file
    assert q.release(e)
    entry, data = q.claim_with_message(qid, want=lambda e: True)
    assert [r.state for r in entry.recipients] == ["sent", "queued"]
    assert data is None and q.read_message(entry) == MSG  # the caller reads it


def test_an_envelope_written_between_the_read_and_the_rename_wins(q, monkeypatch):
    # another runner claims, updates and releases the entry after our read, before our rename
    qid = q.enqueue("a@example.test", ["b@example.net", "c@example.net"], MSG)
    real_rename = os.rename

    def rename(src, dst, *args, **kw):
        if os.fspath(src).endswith(os.path.join("new", qid)) and "active" in os.fspath(dst):
            monkeypatch.setattr(os, "rename", real_rename)
            other = Queue(q.path)
            e = other.claim(qid)
            e.recipients[0].state = "sent"
            other.update(e)
            assert other.release(e)
        return real_rename(src, dst, *args, **kw)

    monkeypatch.setattr(os, "rename", rename)
    entry, data = q.claim_with_message(qid, want=lambda e: True)
    assert [r.state for r in entry.recipients] == ["sent", "queued"] and data == MSG


def test_two_file_entry_leaves_the_message_to_read_message(q):
    q.enqueue("a@example.test", ["b@example.net"], MSG)  # makes the directories
    qid = new_id()
    d = os.path.join(q.path, "new", qid)
    os.makedirs(d)
    with open(os.path.join(d, "message"), "wb") as f:
        f.write(MSG)
    with open(os.path.join(d, "envelope"), "wb") as f:
        f.write(Entry(qid, "old@example.test", [Recipient("b@example.net")], 0.0, len(MSG)).serialise())
    entry, data = q.claim_with_message(qid, want=lambda e: True)
    assert entry.sender == "old@example.test" and data is None and q.read_message(entry) == MSG


def test_an_entry_enqueued_here_is_claimed_without_reading_its_file(q, monkeypatch):
    # serve: the submission server and the runner share the process; the runner's claim takes
    # the bytes enqueue() wrote instead of reading them back on its event loop
    from mailtools.core import queue as qmod

    first = q.enqueue("a@example.test", ["b@example.net"], MSG)
    assert q.claim_with_message(first, want=lambda e: True)[1] == MSG  # a runner lives here
    qid = q.enqueue("a@example.test", ["b@example.net", "c@example.net"], MSG)

    def no_read(*a, **kw):
        raise AssertionError("read the entry file")

    monkeypatch.setattr(qmod, "_read_whole", no_read)
    seen = []
    entry, data = q.claim_with_message(qid, want=lambda e: seen.append(e) or True)
    assert data == MSG and [r.address for r in seen[0].recipients] == ["b@example.net", "c@example.net"]
    assert entry.state_dir == "active" and entry.id == qid
    monkeypatch.undo()
    # another runner (process) claims, updates and puts back an entry we still remember: the
    # envelope it wrote wins, as for a claim that read the file before the other's update
    qid = q.enqueue("a@example.test", ["b@example.net", "c@example.net"], MSG)
    other = Queue(q.path)
    monkeypatch.setattr(qmod, "_fresh", {})  # the other process remembers nothing
    e = other.claim(qid)
    monkeypatch.undo()
    e.recipients[0].state = "sent"
    other.update(e)
    assert other.release(e)
    entry, data = q.claim_with_message(qid, want=lambda e: True)
    assert [r.state for r in entry.recipients] == ["sent", "queued"] and data == MSG
    assert q.read_message(entry) == MSG
