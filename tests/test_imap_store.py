"""The shared folder state (mailtools.imap.store) against outside changes made in between."""

from __future__ import annotations

import os

from mailtools.core import maildir as md
from mailtools.imap.store import Folder


def _mk(tmp_path, n=5):
    p = tmp_path / "Maildir"
    for i in range(n):
        md.deliver(p, b"Subject: %d\n\nbody\n" % i)
    return p


def test_renames_deliveries_and_deletions_are_seen(tmp_path):
    p = _mk(tmp_path)
    f = Folder(p)
    assert f.refresh(force=True)
    assert [m.uid for m in f.msgs] == [1, 2, 3, 4, 5]
    # mutt-style flag change: rename into cur/ with :2,FS
    m = f.msgs[1]
    src = p / m.subdir / m.name
    os.rename(src, p / "cur" / (m.base + ":2,FS"))
    f.refresh()
    assert f.by_uid[2].flags == "FS" and f.by_uid[2].subdir == "cur"
    # our own rename, then an outside delivery and an outside deletion in the same tick
    f.set_flags(f.by_uid[3], "S")
    md.deliver(p, b"Subject: new\n\nx\n")
    os.unlink(p / f.by_uid[4].subdir / f.by_uid[4].name)
    f.refresh()
    assert sorted(f.by_uid) == [1, 2, 3, 5, 6]
    assert f.by_uid[3].flags == "S"
    # the uidlist agrees (Dovecot or POP3 reading it see the same UIDs)
    ul = md.UidList.read(p)
    assert sorted(ul.uids) == [1, 2, 3, 5, 6]


def test_file_read_after_outside_rename(tmp_path):
    p = _mk(tmp_path, 1)
    f = Folder(p)
    f.refresh(force=True)
    m = f.msgs[0]
    os.rename(p / m.subdir / m.name, p / "cur" / (m.base + ":2,S"))
    # no refresh in between: the read finds the file by its base name
    assert f.read(m) == b"Subject: 0\r\n\r\nbody\r\n"
    assert f.info_for(m).size == len(b"Subject: 0\r\n\r\nbody\r\n")


def test_cache_background_flush_keeps_order(tmp_path):
    from mailtools.imap import cache as cachemod

    c = cachemod.Cache(tmp_path)
    for i in range(50):
        c.put(f"m{i}", cachemod.Info(i, 1000 + i, b"H: %d\r\n\r\n" % i, None))
    c.flush(background=True)
    inf = cachemod.Info(7, 1007, b"H: 7\r\n\r\n", b"(NIL)")  # a later change of the same row
    c.put("m7", inf)
    c.drop(["m3"])
    c.flush(background=True)
    inf.envelope = b"changed after the flush"  # the queued row was taken at flush time
    cachemod._background().submit(lambda: None).result(10)  # the writer is one thread, in order
    got = cachemod.Cache(tmp_path).load()
    assert len(got) == 49 and "m3" not in got
    assert got["m7"].envelope == b"(NIL)" and got["m8"].header == b"H: 8\r\n\r\n"
