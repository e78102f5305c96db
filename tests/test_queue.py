"""core/queue: the spool's write path, claim-by-rename, recovery, operator actions, nudges."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from mailtools.core.queue import (
    ClaimLost, Entry, NudgeListener, Queue, QueueError, Recipient, format_time, new_id, nudge,
    parse_time,
)

MSG = b"From: a@example.test\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nbody\r\n"


@pytest.fixture
def q(tmp_path):
    return Queue(tmp_path / "queue")


def test_enqueue_writes_whole_entry_readable_with_cat(q, tmp_path):
    qid = q.enqueue("a@example.test", ["b@example.net", "c@example.net"], MSG)
    entry = tmp_path / "queue" / "new" / qid
    assert entry.is_file()  # one plain file: the envelope, an empty line, the message
    env, sep, message = entry.read_bytes().partition(b"\n\n")
    assert sep and message == MSG
    env = env.decode() + "\n"
    assert env.startswith("mailtools-envelope 1\n")
    assert f"id: {qid}\n" in env
    assert "sender: a@example.test\n" in env
    assert "rcpt: queued attempts=0 next=- notify=- orcpt=- to=b@example.net reply=\n" in env
    assert os.listdir(tmp_path / "queue" / "tmp") == []


def test_enqueue_makes_the_state_directories_a_queue_lacks(tmp_path):
    os.makedirs(tmp_path / "queue" / "tmp")  # say, a half-made spool: new/ and the rest missing
    q = Queue(tmp_path / "queue")
    qid = q.enqueue("a@example.test", ["b@example.net"], MSG)
    assert sorted(os.listdir(tmp_path / "queue")) == ["active", "hold", "new", "tmp", "trash"]
    assert q.ids("new") == [qid] and q.read_message(q.get(qid)) == MSG


def test_ids_sort_by_time_and_are_unique():
    ids = [new_id(1_700_000_000 + i) for i in range(50)]
    assert ids == sorted(ids)
    assert len({new_id() for _ in range(1000)}) == 1000


def test_to_json_has_the_design_fields(q):
    qid = q.enqueue("", ["b@example.net"], MSG)
    j = q.get(qid).to_json()
    assert set(j) == {"id", "sender", "size", "queued_at", "recipients"}
    assert j["id"] == qid and j["sender"] == "" and j["size"] == len(MSG)
    assert abs(j["queued_at"] - time.time()) < 5
    assert j["recipients"] == [{"address": "b@example.net", "state": "queued", "attempts": 0,
                                "next_attempt": None, "last_reply": None}]


def test_envelope_round_trips_dsn_and_odd_values(q):
    odd = Recipient('"john doe"@example.net', notify="SUCCESS,DELAY", orcpt="rfc822;john%doe")
    dsn = {"ret": "HDRS", "envid": "id 1+2", "body": "8BITMIME", "smtputf8": True}
    qid = q.enqueue("ålice@example.test", [odd, "x@example.net"], MSG, dsn=dsn)
    e = q.claim(qid)
    e.recipients[1].state = "deferred"
    e.recipients[1].attempts = 3
    e.recipients[1].next_attempt = 1_900_000_000.0
    e.recipients[1].last_reply = "451-4.7.1 first\r\n451 4.7.1 second line"
    e.meta["x-custom"] = "kept"
    q.update(e)
    again = Entry.parse(open(os.path.join(e.path, "envelope"), "rb").read())
    assert again.sender == "ålice@example.test"
    assert again.dsn == dsn
    assert again.recipients[0].address == '"john doe"@example.net'
    assert again.recipients[0].notify == "SUCCESS,DELAY"
    assert again.recipients[0].orcpt == "rfc822;john%doe"
    r = again.recipients[1]
    assert (r.state, r.attempts, r.next_attempt) == ("deferred", 3, 1_900_000_000.0)
    assert r.last_reply == "451-4.7.1 first\r\n451 4.7.1 second line"
    assert again.meta == {"x-custom": "kept"}
    # every envelope line stays one line
    assert all(line.count("rcpt:") <= 1 for line in open(os.path.join(e.path, "envelope")))


def test_time_format_round_trip():
    for t in (0, 951868800, 1_700_000_000, 4_102_444_800):
        assert parse_time(format_time(t)) == t
    assert parse_time(format_time(1_700_000_000.25, fraction=True)) == 1_700_000_000.25


def test_claim_is_exclusive_and_release_requeues_or_removes(q, tmp_path):
    qid = q.enqueue("a@example.test", ["b@example.net", "c@example.net"], MSG)
    e = q.claim(qid)
    assert e is not None and e.state_dir == "active"
    assert q.claim(qid) is None  # same process, second task: not twice
    assert q.read_message(e) == MSG
    e.recipients[0].state = "sent"
    q.update(e)
    assert q.release(e)
    assert q.ids("new") == [qid]
    e = q.claim(qid)
    assert [r.state for r in e.recipients] == ["sent", "queued"]
    e.recipients[1].state = "bounced"
    q.update(e)
    q.release(e)
    assert q.entries() == []
    with pytest.raises(QueueError):
        q.get(qid)
    deadline = time.monotonic() + 30  # trash/ is emptied by a background thread (spares after 1 s)
    while os.listdir(tmp_path / "queue" / "trash") and time.monotonic() < deadline:
        time.sleep(0.01)
    for sub in ("tmp", "new", "active", "hold", "trash"):
        assert os.listdir(tmp_path / "queue" / sub) == []


def test_release_of_a_finished_entry_does_no_fsync_and_reports_a_lost_claim(q, tmp_path, monkeypatch):
    qid = q.enqueue("a@example.test", ["b@example.net"], MSG)
    e = q.claim(qid)
    e.recipients[0].state = "sent"
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    assert q.release(e)  # no update() first: the removal needs none
    assert synced == []  # at-least-once: a crash that loses the removal redelivers, as Postfix
    assert q.entries() == [] and os.listdir(tmp_path / "queue" / "active") == []
    # a claim recovered by another runner meanwhile: release() says so, touches nothing
    qid = q.enqueue("a@example.test", ["b@example.net"], MSG)
    e = q.claim(qid)
    os.rename(e.path, tmp_path / "queue" / "new" / qid)  # what recover() does
    e.recipients[0].state = "sent"
    assert q.release(e) is False
    assert q.ids("new") == [qid]
    with pytest.raises(ClaimLost):
        q.update(e)


def _two_file_entry(q, qid: str, message: bytes) -> None:
    """An entry as enqueue() wrote it before the one-file layout: message + envelope."""
    entry = Entry(qid, "old@example.test", [Recipient("b@example.net"), Recipient("c@example.net")],
                  time.time(), len(message))
    d = os.path.join(q.path, "new", qid)
    os.makedirs(d)
    with open(os.path.join(d, "message"), "wb") as f:
        f.write(message)
    with open(os.path.join(d, "envelope"), "wb") as f:
        f.write(entry.serialise())


def test_entries_in_the_two_file_layout_are_still_read_delivered_and_removed(q, tmp_path):
    q.enqueue("a@example.test", ["b@example.net"], MSG)  # makes the directories
    old = new_id()
    _two_file_entry(q, old, MSG)
    assert q.get(old).sender == "old@example.test" and old in [e.id for e in q.entries()]
    asked = []
    e = q.claim(old, want=lambda e: asked.append(e.id) or True)
    assert asked == [old] and e.state_dir == "active"
    assert q.read_message(e) == MSG
    e.recipients[0].state = "sent"
    q.update(e)
    assert q.release(e) and sorted(os.listdir(os.path.join(q.path, "new", old))) == ["envelope", "message"]
    e = q.claim(old)
    assert [r.state for r in e.recipients] == ["sent", "queued"]
    e.recipients[1].state = "bounced"
    assert q.release(e)
    deadline = time.monotonic() + 30  # trash/ is emptied by a background thread (spares after 1 s)
    while os.listdir(tmp_path / "queue" / "trash") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert os.listdir(tmp_path / "queue" / "trash") == [] and old not in q.ids("new")


def test_one_file_entry_after_update(q, tmp_path):
    qid = q.enqueue("a@example.test", ["b@example.net", "c@example.net"], MSG)
    e = q.claim(qid)
    e.recipients[0].state = "deferred"
    q.update(e)  # the new state goes to a separate envelope, which wins over entry's head
    assert q.release(e)
    d = tmp_path / "queue" / "new" / qid
    assert sorted(os.listdir(d)) == ["entry", "envelope"]
    assert [r.state for r in q.get(qid).recipients] == ["deferred", "queued"]
    e = q.get(qid)
    assert q.read_message(e) == MSG and sorted(os.listdir(d)) == ["entry", "envelope"]  # read, not written
    assert q.claim(qid).recipients[0].state == "deferred"
    # a one-file entry cut short (no empty line after the envelope): listed as a problem, parked
    bad = q.enqueue("a@example.test", ["b@example.net"], MSG)
    path = tmp_path / "queue" / "new" / bad
    path.write_bytes(path.read_bytes().partition(b"\n\n")[0])
    assert bad not in [x.id for x in q.entries()] and "no empty line" in q.problems[0]
    assert q.claim(bad, want=lambda e: True) is None
    assert os.path.isdir(tmp_path / "queue" / "hold" / bad)


def test_hold_release_delete(q):
    a = q.enqueue("a@example.test", ["b@example.net"], MSG)
    b = q.enqueue("a@example.test", ["b@example.net"], MSG)
    q.hold(a.lower())  # as an operator may type it
    assert q.get(a).held
    assert q.claim(a) is None
    assert [e.id for e in q.entries()] == [a, b]
    q.release_hold(a)
    assert not q.get(a).held
    e = q.claim(a)
    q.hold(a)  # being delivered: marked, held when its runner lets go
    assert q.get(a).state_dir == "active"
    q.release(e)
    assert q.get(a).held and q.claim(a) is None
    q.release_hold(a)
    e = q.claim(a)
    q.hold(a)
    q.release_hold(a)  # changed our mind before the runner finished
    q.release(e)
    assert q.get(a).state_dir == "new"
    e = q.claim(a)
    with pytest.raises(QueueError):
        q.delete(a)  # being delivered
    q.release(e)
    q.delete(b)
    with pytest.raises(QueueError):
        q.get(b)
    with pytest.raises(QueueError, match=r"not a queue id: '\.\./\.\./etc'"):  # as typed
        q.delete("../../etc")


def test_recover_dead_claim_and_old_tmp(q, tmp_path):
    qid = q.enqueue("a@example.test", ["b@example.net"], MSG)
    # A runner claims and dies (SIGKILL) without releasing.
    code = textwrap.dedent(f"""
        import os, sys
        from mailtools.core.queue import Queue
        e = Queue({str(tmp_path / 'queue')!r}).claim({qid!r})
        print(e.id, flush=True)
        os.kill(os.getpid(), 9)
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == -signal.SIGKILL and p.stdout.strip() == qid
    assert q.get(qid).state_dir == "active"
    stale = tmp_path / "queue" / "tmp" / "0000000000000DEADBEEF00"
    stale.mkdir()
    (stale / "message").write_bytes(b"half")
    os.utime(stale, (0, 0))
    assert q.recover(3600) == [qid]
    assert q.get(qid).state_dir == "new"
    assert not stale.exists()


def test_recover_does_not_steal_live_claim_until_timeout(q):
    qid = q.enqueue("a@example.test", ["b@example.net"], MSG)
    e = q.claim(qid)
    other = Queue(q.path)
    assert other.recover(3600) == []  # our own live claim
    # pretend the claim belongs to a live process on another host, claimed long ago
    foreign = os.path.join(q.path, "active", f"{qid}.1.otherhost.1")
    os.rename(e.path, foreign)
    assert other.recover(3600) == []
    os.utime(foreign, (time.time() - 7200, time.time() - 7200))
    assert other.recover(3600) == [qid]
    with pytest.raises(ClaimLost):
        q.update(e)
    assert q.release(e) is False


def test_concurrent_runners_never_take_the_same_entry(q, tmp_path):
    ids = [q.enqueue("a@example.test", [f"r{i}@example.net"], MSG) for i in range(60)]
    code = textwrap.dedent(f"""
        from mailtools.core.queue import Queue
        q = Queue({str(tmp_path / 'queue')!r})
        got = [qid for qid in q.ids('new') if q.claim(qid) is not None]
        print(' '.join(got))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    taken = []
    for p in procs:
        out, _ = p.communicate(timeout=60)
        taken.extend(out.split())
    assert sorted(taken) == sorted(ids)  # each exactly once
    # and the losers of the races left no empty claim directory behind
    active = tmp_path / "queue" / "active"
    assert all(os.listdir(active / n) == ["entry"] for n in os.listdir(active))
    assert sorted(n.split(".")[0] for n in os.listdir(active)) == sorted(ids)


def test_enqueue_refuses_line_breaks_in_addresses(q):
    with pytest.raises(ValueError):
        q.enqueue("a@example.test", ["b@example.net\nrcpt: sent"], MSG)
    with pytest.raises(ValueError):
        q.enqueue("a@example.test\r", ["b@example.net"], MSG)
    with pytest.raises(ValueError):
        q.enqueue("a@example.test", [], MSG)


def test_nudge_without_daemon_is_harmless(tmp_path):
    assert nudge(tmp_path / "nothing-here") is False
    Queue(tmp_path / "q").enqueue("a@example.test", ["b@example.net"], MSG)
    t = time.monotonic()
    assert nudge(tmp_path / "q") is False
    assert time.monotonic() - t < 0.5


def test_nudge_wakes_listener(tmp_path):
    with NudgeListener(tmp_path) as listener:
        assert listener.wait(0.05) is False
        assert nudge(tmp_path) is True
        assert nudge(tmp_path) is True
        assert listener.wait(1) is True
        assert listener.wait(0.05) is False  # two nudges while busy count as one


def test_nudge_wakes_asyncio_waiter(tmp_path):
    import asyncio

    async def main():
        with NudgeListener(tmp_path) as listener:
            assert await listener.wait_async(0.05) is False
            loop = asyncio.get_running_loop()
            loop.call_later(0.05, nudge, tmp_path)
            t = time.monotonic()
            assert await listener.wait_async(30) is True
            assert time.monotonic() - t < 15  # woken by the nudge, not at the end of its wait

    asyncio.run(main())


# -- property tests: the envelope parser --------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
_recipient = st.builds(
    Recipient,
    address=_text.filter(bool),
    state=st.sampled_from(["queued", "deferred", "sent", "bounced"]),
    attempts=st.integers(0, 1000),
    next_attempt=st.one_of(st.none(), st.integers(0, 4_000_000_000).map(float)),
    last_reply=_text,
    notify=st.one_of(st.none(), _text.filter(bool)),
    orcpt=st.one_of(st.none(), _text.filter(bool)),
)


@settings(max_examples=100, deadline=None)
@given(sender=_text, rcpts=st.lists(_recipient, min_size=1, max_size=5),
       size=st.integers(0, 10**9), ret=st.sampled_from([None, "FULL", "HDRS"]),
       envid=st.one_of(st.none(), _text.filter(bool)), smtputf8=st.booleans(), warned=st.booleans())
def test_envelope_round_trip_property(sender, rcpts, size, ret, envid, smtputf8, warned):
    dsn = {k: v for k, v in {"ret": ret, "envid": envid, "smtputf8": smtputf8 or None}.items() if v}
    e = Entry(new_id(), sender, rcpts, 1_700_000_000.5, size, dsn, warned=warned)
    data = e.serialise()
    lines = data.decode().split("\n")
    assert len(lines) == 7 + len(dsn) + warned + len(rcpts) - 1  # header, 4 fields, rcpts, ""
    back = Entry.parse(data)
    assert (back.id, back.sender, back.size, back.queued_at, back.warned) == (e.id, sender, size, e.queued_at, warned)
    assert back.dsn == e.dsn
    for a, b in zip(back.recipients, rcpts):
        assert (a.address, a.state, a.attempts, a.next_attempt, a.last_reply, a.notify, a.orcpt) == (
            b.address, b.state, b.attempts, b.next_attempt, b.last_reply, b.notify, b.orcpt)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_envelope_parser_never_crashes_on_garbage(data):
    try:
        Entry.parse(b"mailtools-envelope 1\n" + data)
    except ValueError:
        pass


# -- crash test: SIGKILL during enqueue never leaves a half entry visible ----------------------

CRASH_WRITER = textwrap.dedent("""
    import os, random, sys
    from mailtools.core.queue import Queue
    q = Queue(sys.argv[1])
    while True:
        n = random.randrange(1, 300_000)
        body = b"X-Len: %d\\n\\n" % n + os.urandom(n // 2 + 1).hex().encode()[:n]
        print(q.enqueue("a@example.test", ["b@example.net"], body), flush=True)
""")


def test_sigkill_during_enqueue_leaves_whole_entries_only(tmp_path):
    import random

    qdir = tmp_path / "queue"
    acknowledged = []
    for _ in range(6):
        p = subprocess.Popen([sys.executable, "-c", CRASH_WRITER, str(qdir)], stdout=subprocess.PIPE)
        time.sleep(0.3 + random.random() * 0.4)
        p.kill()
        out, _ = p.communicate()
        acknowledged += out.decode().split()
    q = Queue(qdir)
    in_new = set(q.ids("new"))
    assert set(acknowledged) <= in_new  # every id a writer was given is there, whole
    for e in q.entries():
        msg = q.read_message(e)
        head, _, body = msg.partition(b"\n\n")
        assert int(head.split(b": ")[1]) == len(body) == e.size - len(head) - 2
    q.recover(3600, tmp_older_than_s=0)
    assert os.listdir(qdir / "tmp") == []
    assert set(q.ids("new")) == in_new


def test_broken_envelope_is_reported_not_hidden(q):
    good = q.enqueue("a@example.test", ["b@example.net"], MSG)
    bad = q.enqueue("a@example.test", ["b@example.net"], MSG)
    with open(os.path.join(q.path, "new", bad), "wb") as f:
        f.write(b"mailtools-envelope 1\nid: x\nrcpt: exploded\n\n" + MSG)
    assert [e.id for e in q.entries()] == [good]
    assert len(q.problems) == 1 and bad in q.problems[0] and ":3:" in q.problems[0]
    assert q.claim(bad) is None  # parked in hold/ for the operator
    assert os.path.isdir(os.path.join(q.path, "hold", bad))


def test_enqueue_failure_leaves_nothing(q, monkeypatch):
    import mailtools.core.queue as qmod

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    q.enqueue("a@example.test", ["b@example.net"], MSG)  # directories exist
    monkeypatch.setattr(qmod, "_write_entry", full)
    with pytest.raises(OSError):
        q.enqueue("a@example.test", ["b@example.net"], MSG)
    assert os.listdir(os.path.join(q.path, "tmp")) == []
    assert len(q.ids("new")) == 1


RUNNER = textwrap.dedent("""
    import os, sys
    from mailtools.core.queue import Queue
    q = Queue(sys.argv[1])
    log = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    for qid in q.ids('new'):
        e = q.claim(qid)
        if e is None:
            continue
        os.write(log, (qid + '\\n').encode())  # "delivered"
        for r in e.recipients:
            r.state = 'sent'
        q.update(e)
        q.release(e)
""")


def test_runners_killed_at_random_lose_nothing(q, tmp_path):
    """Three runners drain the queue while one after another is SIGKILLed; after recover() a
    last runner finishes. Every entry was delivered at least once and the queue is empty."""
    import random

    ids = [q.enqueue("a@example.test", ["b@example.net"], MSG) for i in range(150)]
    log = tmp_path / "delivered"
    procs = [subprocess.Popen([sys.executable, "-c", RUNNER, q.path, str(log)]) for _ in range(3)]
    time.sleep(0.2 + random.random() * 0.3)
    for p in procs[:2]:
        p.kill()
    for p in procs:
        p.wait(timeout=60)
    q.recover(3600)  # the dead runners' claims go back at once (same host, PID gone)
    subprocess.run([sys.executable, "-c", RUNNER, q.path, str(log)], check=True, timeout=60)
    assert q.entries() == [] and q.ids("active") == []
    assert set(log.read_text().split()) == set(ids)


def test_queue_import_stays_light():
    """submit's sendmail path imports the queue: no json, email, asyncio, uuid, socket, typer."""
    code = ("import sys\nbefore = set(sys.modules)\nimport mailtools.core.queue\n"
            "print(' '.join(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(out.split())
    heavy = {"json", "email", "asyncio", "uuid", "socket", "typer", "rich", "argparse", "logging", "datetime"}
    assert not loaded & heavy, loaded & heavy


def test_enqueue_under_an_id_chosen_beforehand(q):
    # the servers pick the id first, to name it in their Received header
    qid = new_id()
    assert q.enqueue("a@example.test", ["b@example.test"], b"x\r\n", qid=qid) == qid
    assert q.get(qid).sender == "a@example.test"
    with pytest.raises(OSError):  # never a second entry under a taken id, never another id
        q.enqueue("c@example.test", ["d@example.test"], b"y\r\n", qid=qid)
    assert q.ids("new") == [qid]


def _finish(q, qid):
    e = q.claim(qid)
    for r in e.recipients:
        r.state = "sent"
    assert q.release(e)


def test_a_removed_entry_directory_is_taken_again_by_the_next_enqueue(q, tmp_path, monkeypatch):
    from mailtools.core import queue as qmod

    monkeypatch.setattr(qmod._Remover, "SPARE_AGE", 3600.0)  # no race with its expiry, however busy
    trash = tmp_path / "queue" / "trash"
    big = q.enqueue("a@example.test", ["b@example.test"], b"Subject: big\r\n\r\n" + b"x" * 5000 + b"\r\n")
    _finish(q, big)
    deadline = time.monotonic() + 30
    while not qmod._Remover.spares() and time.monotonic() < deadline:
        time.sleep(0.005)
    spares = qmod._Remover.spares()
    assert spares, "the remover kept no spare directory"
    spare = next(iter(spares))
    dir_ino, file_ino = os.stat(spare).st_ino, os.stat(os.path.join(spare, "entry")).st_ino
    small = q.enqueue("c@example.test", ["d@example.test"], b"Subject: small\r\n\r\nhi\r\n")
    e = q.get(small)
    assert e.sender == "c@example.test" and [r.address for r in e.recipients] == ["d@example.test"]
    assert q.read_message(e) == b"Subject: small\r\n\r\nhi\r\n"  # rewritten whole, nothing of the old
    # the spare's file is the new entry, a plain file in new/; its emptied directory waits
    assert os.stat(tmp_path / "queue" / "new" / small).st_ino == file_ino
    assert (tmp_path / "queue" / "new" / small).is_file()
    assert os.listdir(spare) == [] and os.listdir(tmp_path / "queue" / "tmp") == []
    # ... for the next claim of a plain-file entry, which renames it into active/
    e = q.claim(small)
    assert os.stat(e.path).st_ino == dir_ino and os.listdir(e.path) == ["entry"]
    assert os.listdir(trash) == [] and q.read_message(e) == b"Subject: small\r\n\r\nhi\r\n"


def test_spare_directories_are_removed_when_nobody_takes_them(q, tmp_path):
    trash = tmp_path / "queue" / "trash"
    _finish(q, q.enqueue("a@example.test", ["b@example.test"], b"x\r\n"))
    deadline = time.monotonic() + 30
    while os.listdir(trash) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert os.listdir(trash) == []
    # ... and at once when the program ends: it neither waits for them nor leaves them behind
    code = textwrap.dedent("""
        import sys
        from mailtools.core.queue import Queue
        q = Queue(sys.argv[1])
        for _ in range(5):
            e = q.claim(q.enqueue("a@example.test", ["b@example.test"], b"x\\r\\n"))
            e.recipients[0].state = "sent"
            q.release(e)
    """)
    subprocess.run([sys.executable, "-c", code, q.path], check=True, timeout=60)
    assert os.listdir(trash) == [] and q.entries() == []


def test_a_days_old_spare_taken_by_enqueue_is_not_swept_by_another_recover(q, tmp_path, monkeypatch):
    # a spare directory keeps its mtime across reuse; another process's recover() ages tmp/
    # by mtime and must not take an enqueue in progress for a dead writer's leftover
    from mailtools.core import queue as qmod

    monkeypatch.setattr(qmod._Remover, "SPARE_AGE", 3600.0)
    _finish(q, q.enqueue("a@example.test", ["b@example.test"], b"x\r\n"))
    deadline = time.monotonic() + 30
    while not qmod._Remover.spares() and time.monotonic() < deadline:
        time.sleep(0.005)
    (spare,) = qmod._Remover.spares()
    os.utime(spare, (0, 0))
    other = Queue(q.path)  # as another process on the same spool
    os.utime(os.path.join(spare, "entry"), (0, 0))
    real_write = qmod._write_entry

    def write_then_recover(*args, **kwargs):
        real_write(*args, **kwargs)
        other.recover(3600)

    monkeypatch.setattr(qmod, "_write_entry", write_then_recover)
    qid = q.enqueue("c@example.test", ["d@example.test"], MSG)
    monkeypatch.setattr(qmod, "_write_entry", real_write)
    assert q.read_message(q.get(qid)) == MSG


def test_a_live_runner_of_this_host_keeps_its_claim_however_long_it_takes(q):
    # A delivery stuck longer than claim_timeout (slow MX hosts, one after another) stays with
    # its runner: taking it back would deliver it a second time. A PID that is alive but
    # belongs to a process started after the claim (the runner died, its PID was reused) is
    # no runner: that claim comes back at once.
    from mailtools.core import queue as queuemod

    qid = q.enqueue("a@example.test", ["b@example.net"], MSG)
    e = q.claim(qid)
    runner = subprocess.Popen(["sleep", "60"])
    try:
        time.sleep(0.05)
        claim = os.path.join(q.path, "active", f"{qid}.{runner.pid}.{queuemod._HOST}.1")
        os.rename(e.path, claim)  # (made after the runner started)
        time.sleep(0.3)
        other = Queue(q.path)
        assert other.recover(0.1) == []  # older than claim_timeout, but its runner lives
        an_hour_ago = time.time() - 3600
        os.utime(claim, (an_hour_ago, an_hour_ago))  # before the process of that PID started
        assert other.recover(3600 * 24) == [qid]
    finally:
        runner.kill()
        runner.wait()
    assert q.get(qid).state_dir == "new"
