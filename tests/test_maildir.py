"""core/maildir: delivery, names and flags, Maildir++ folders, dovecot-uidlist and keywords."""

from __future__ import annotations

import os
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailtools.core import maildir as md
from mailtools.core.maildir import Keywords, Maildir, UidList, deliver, name_with_flags, parse_name

MSG = b"From: a@example.test\nSubject: x\n\nbody\n"


def test_deliver_creates_dirs_and_lands_in_new(tmp_path):
    p = deliver(tmp_path / "Maildir", MSG)
    assert p.parent == tmp_path / "Maildir" / "new"
    assert p.read_bytes() == MSG
    for sub in ("cur", "new", "tmp"):
        assert (tmp_path / "Maildir" / sub).is_dir()
    assert os.listdir(tmp_path / "Maildir" / "tmp") == []
    assert p.name.endswith(f",S={len(MSG)}")
    assert (os.stat(tmp_path / "Maildir" / "new").st_mode & 0o777) == 0o700
    assert not (tmp_path / "Maildir" / "maildirfolder").exists()


def test_deliver_recreates_a_missing_new_dir(tmp_path):
    deliver(tmp_path, MSG)
    import shutil

    shutil.rmtree(tmp_path / "new")
    p = deliver(tmp_path, MSG)
    assert p.read_bytes() == MSG and os.listdir(tmp_path / "tmp") == []


def test_deliver_with_flags_lands_in_cur_sorted(tmp_path):
    p = deliver(tmp_path, MSG, flags="SFa")
    assert p.parent.name == "cur"
    assert p.name.endswith(":2,FSa")
    assert parse_name(p.name)[1] == "FSa"


def test_deliver_folder_marker(tmp_path):
    deliver(tmp_path / ".Sent", MSG, folder_marker=True)
    assert (tmp_path / ".Sent" / "maildirfolder").is_file()


def test_unique_names_in_one_process(tmp_path):
    names = {deliver(tmp_path, MSG).name for _ in range(50)}
    assert len(names) == 50


def test_two_hundred_threads_give_two_hundred_files(tmp_path):
    msgs = [MSG + str(i).encode() * 100 for i in range(200)]
    threads = [threading.Thread(target=deliver, args=(tmp_path, m)) for m in msgs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = sorted(p.read_bytes() for p in (tmp_path / "new").iterdir())
    assert got == sorted(msgs)


def test_deliver_raises_oserror_when_unwritable(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OSError):
        deliver(f, MSG)


def test_parse_name_forms():
    assert parse_name("123.M4P5Q6.host,S=10:2,RS") == ("123.M4P5Q6.host,S=10", "RS")
    assert parse_name("123.M4P5Q6.host") == ("123.M4P5Q6.host", "")
    assert parse_name("123.host:1,xyz") == ("123.host", "")
    assert parse_name("123.host:2,") == ("123.host", "")


def test_name_with_flags_orders_and_dedups():
    assert name_with_flags("b", "TSSa") == "b:2,STa"
    assert name_with_flags("b", "") == "b:2,"
    with pytest.raises(ValueError):
        name_with_flags("b", "S,")


FLAGS = st.text(alphabet="DFPRSTabcdefghijklmnopqrstuvwxyz", max_size=10)
BASES = st.text(
    alphabet=st.characters(blacklist_characters=":/\0", blacklist_categories=("Cs",)), min_size=1, max_size=40
)


@given(BASES, FLAGS)
def test_name_roundtrip(base, flags):
    name = name_with_flags(base, flags)
    b, f = parse_name(name)
    assert b == base
    assert set(f) == set(flags)
    assert list(f) == sorted(f)
    assert name_with_flags(b, f) == name


@given(st.text(max_size=60))
def test_parse_name_never_fails_and_base_is_prefix(name):
    base, flags = parse_name(name)
    assert name.startswith(base)
    assert ":" not in base
    assert flags == "" or name == base + ":2," + flags


def test_size_from_name():
    assert md.size_from_name("1.M2P3.host,S=1234,W=1300") == 1234
    assert md.size_from_name("1.M2P3.host") is None


def test_scan_reads_new_and_cur_in_order(tmp_path):
    m = Maildir(tmp_path)
    a = m.deliver(b"A\n")
    b = m.deliver(b"BB\n", flags="S")
    (tmp_path / "new" / ".hidden").write_text("x")
    files = m.scan()
    assert [f.path for f in files] == [a, b]
    assert [(f.subdir, f.flags, f.size) for f in files] == [("new", "", 2), ("cur", "S", 3)]
    assert files[0].mtime > 0
    moved = m.set_flags(files[0], "RS")
    assert moved.subdir == "cur" and moved.flags == "RS" and moved.path.read_bytes() == b"A\n"


def test_folder_mapping(tmp_path):
    m = Maildir(tmp_path)
    assert m.folder("INBOX").path == tmp_path
    assert m.folder("inbox").path == tmp_path
    assert m.folder("Lists/python").path == tmp_path / ".Lists.python"
    assert m.folder("Lists/python").name == "Lists/python"
    assert m.folder("Entwürfe").path == tmp_path / ".Entw&APw-rfe"
    assert md.decode_mutf7("Entw&APw-rfe") == "Entwürfe"
    assert m.folder("a&-b").path == tmp_path / ".a&-b"
    assert m.folder("a&ü").path == tmp_path / ".a&-&APw-"
    with pytest.raises(ValueError):
        m.folder("a&b")  # not valid modified UTF-7 on the wire


@pytest.mark.parametrize(
    "name",
    ["", "..", ".", "a/../b", "../x", "a/", "/a", "a//b", "x\0y", "a.b", "cur", "NEW", "a/Tmp", "x\ny", "a\\b",
     "x" * 300],
)
def test_unsafe_folder_names_refused(tmp_path, name):
    with pytest.raises(ValueError):
        Maildir(tmp_path).folder(name)


@given(st.text(max_size=30))
def test_folder_never_escapes(name):
    try:
        d = md.folder_dirname(name)
    except ValueError:
        return
    if d is None:
        assert name.upper() == "INBOX"
        return
    assert d.startswith(".") and "/" not in d and "\0" not in d and ".." not in d
    assert d not in (".", "..")
    assert md.folder_name(d) is not None


def test_folder_lifecycle(tmp_path):
    m = Maildir(tmp_path)
    m.create()
    f = m.create_folder("Work")
    m.create_folder("Work/2024")
    assert (f.path / "maildirfolder").is_file()
    with pytest.raises(FileExistsError):
        m.create_folder("Work")
    f.deliver(MSG)
    assert m.list_folders() == ["INBOX", "Work", "Work/2024"]
    m.rename_folder("Work", "Archive")
    assert m.list_folders() == ["INBOX", "Archive", "Archive/2024"]
    assert len(m.folder("Archive").scan()) == 1
    m.delete_folder("Archive")
    assert m.list_folders() == ["INBOX", "Archive/2024"]
    with pytest.raises(FileNotFoundError):
        m.delete_folder("Nope")
    with pytest.raises(ValueError):
        m.delete_folder("INBOX")
    (tmp_path / "..evil").mkdir()
    (tmp_path / ".a..b").mkdir()
    assert m.list_folders() == ["INBOX", "Archive/2024"]


def test_rename_inbox_moves_messages(tmp_path):
    m = Maildir(tmp_path)
    m.deliver(MSG)
    m.deliver(MSG, flags="S")
    m.rename_folder("INBOX", "Old")
    assert m.scan() == []
    assert len(m.folder("Old").scan()) == 2


def test_uidlist_assigns_in_order_and_is_stable(tmp_path):
    m = Maildir(tmp_path)
    paths = [m.deliver(b"%d\n" % i) for i in range(3)]
    ul = UidList.sync(tmp_path)
    assert ul.nextuid == 4
    assert [ul.uids[u] for u in (1, 2, 3)] == [parse_name(p.name)[0] for p in paths]
    text = (tmp_path / "dovecot-uidlist").read_text()
    head = text.splitlines()[0].split()
    assert head[0] == "3" and head[1] == f"V{ul.uidvalidity}" and head[2] == "N4"
    assert head[3].startswith("G") and len(head[3]) == 33
    assert text.splitlines()[1] == f"1 :{ul.uids[1]}"
    # flags change: same UID; one removed, one added: new UID 4, 2 dropped
    mf = m.scan()
    m.set_flags(mf[0], "S")
    os.unlink(mf[1].path)
    m.deliver(b"new\n")
    ul2 = UidList.sync(tmp_path)
    assert sorted(ul2.uids) == [1, 3, 4]
    assert ul2.uidvalidity == ul.uidvalidity and ul2.guid == ul.guid and ul2.nextuid == 5
    assert ul2.files[1].flags == "S"
    assert not (tmp_path / "dovecot-uidlist.lock").exists()


def test_uidlist_keeps_extensions_and_unknown_header_fields(tmp_path):
    (tmp_path / "cur").mkdir()
    (tmp_path / "new").mkdir()
    (tmp_path / "cur" / "100.M1P1.h,S=5:2,S").write_bytes(b"hello")
    (tmp_path / "dovecot-uidlist").write_text("3 V7 N10 Gabc Xfoo\n9 W6 :100.M1P1.h,S=5:2,S\n")
    ul = UidList.sync(tmp_path)
    assert ul.uids == {9: "100.M1P1.h,S=5"} and ul.uidvalidity == 7 and ul.nextuid == 10
    # unchanged: file not rewritten
    assert (tmp_path / "dovecot-uidlist").read_text() == "3 V7 N10 Gabc Xfoo\n9 W6 :100.M1P1.h,S=5:2,S\n"
    (tmp_path / "new" / "200.M1P1.h").write_bytes(b"x")
    UidList.sync(tmp_path)
    assert (tmp_path / "dovecot-uidlist").read_text() == "3 V7 N11 Gabc Xfoo\n9 W6 :100.M1P1.h,S=5\n10 :200.M1P1.h\n"


_ORDER_NAME = st.builds(
    "{}.{}{}{}{}".format,
    st.sampled_from(["1", "2", "10", "x", ""]), st.sampled_from(["M", "N", ""]),
    st.sampled_from(["0", "7", "12", "007", "", "99999999999999999999"]),
    st.sampled_from(["P", "Q", ""]), st.sampled_from(["1.h", "2.h", "h,S=3"]))


@settings(max_examples=300, deadline=None)
@given(st.lists(_ORDER_NAME, unique=True, max_size=12))
def test_delivery_order_is_sort_key_order(bases):
    # the fast path of the uidlist sync must order new messages exactly as sort_key does
    assert md.delivery_order(bases) == sorted(bases, key=md.sort_key)


def test_uidlist_sync_mixed_names_dot_files_and_duplicates(tmp_path):
    for sub in ("new", "cur", "tmp"):
        (tmp_path / sub).mkdir()
    for sub, name in [("cur", "3.M1P1.h:2,S"), ("cur", "1.M1P1.h:1,odd"), ("new", "2.M5P1.h"),
                      ("cur", ".hidden"), ("new", "2.M5P1.h.dup"), ("cur", "2.M5P1.h.dup:2,RS")]:
        (tmp_path / sub / name).write_bytes(b"x")
    (tmp_path / "dovecot-uidlist").write_text("3 V9 N20 Gg\n4 W1 :3.M1P1.h:2,S\n7 :gone.h\n")
    ul = UidList.sync(tmp_path)
    assert ul.uids == {4: "3.M1P1.h", 20: "1.M1P1.h", 21: "2.M5P1.h", 22: "2.M5P1.h.dup"}
    assert ul.ext == {4: "W1"} and ul.nextuid == 23
    f = ul.files
    assert [(f[u].subdir, f[u].name, f[u].flags) for u in f] == [
        ("cur", "3.M1P1.h:2,S", "S"), ("cur", "1.M1P1.h:1,odd", ""), ("new", "2.M5P1.h", ""),
        ("cur", "2.M5P1.h.dup:2,RS", "RS")]
    assert os.fspath(f[22]) == os.path.join(tmp_path, "cur", "2.M5P1.h.dup:2,RS")
    assert f[22].path.read_bytes() == b"x" and f[22].size == 1
    assert UidList.read(tmp_path).uids == ul.uids


def test_uidlist_waits_for_lock_and_takes_over_stale_lock(tmp_path):
    Maildir(tmp_path).create()
    lock = tmp_path / "dovecot-uidlist.lock"
    lock.write_text("")
    with pytest.raises(TimeoutError):
        UidList.sync(tmp_path, wait=0.1)
    os.utime(lock, (1, 1))
    UidList.sync(tmp_path, wait=0.1)
    assert not lock.exists()


def test_uidlist_concurrent_syncs_never_reuse_uids(tmp_path):
    m = Maildir(tmp_path)
    errors = []

    def worker(i):
        try:
            for j in range(5):
                m.deliver(b"%d-%d\n" % (i, j))
                UidList.sync(tmp_path)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    ul = UidList.sync(tmp_path)
    assert sorted(ul.uids) == list(range(1, 31))
    assert len(set(ul.uids.values())) == 30


def test_keywords(tmp_path):
    kw = Keywords(tmp_path)
    assert kw.letter("$Junk") is None
    assert kw.letter("$Junk", create=True) == "a"
    assert kw.letter("work", create=True) == "b"
    kw2 = Keywords(tmp_path)
    assert kw2.name(1) == "work" and kw2.index("$Junk") == 0
    assert kw2.names_for("Sbaz") == ["work", "$Junk"]
    assert kw2.letters_for(["work", "new"]) == "bc"
    assert (tmp_path / "dovecot-keywords").read_text() == "0 $Junk\n1 work\n2 new\n"
    with pytest.raises(ValueError):
        kw2.add("two words")
    assert not (tmp_path / "dovecot-uidlist.lock").exists() and not (tmp_path / "dovecot-keywords.lock").exists()


def test_keywords_wait_for_the_uidlist_lock(tmp_path):
    (tmp_path / "dovecot-uidlist.lock").write_text("")
    kw = Keywords(tmp_path)
    import mailtools.core.maildir as mdm

    old = mdm.LOCK_WAIT
    mdm.LOCK_WAIT = 0.1
    try:
        with pytest.raises(TimeoutError):
            kw.add("x")
    finally:
        mdm.LOCK_WAIT = old
    assert not (tmp_path / "dovecot-keywords").exists()


@settings(max_examples=50)
@given(st.lists(st.integers(min_value=0, max_value=10**6), max_size=20, unique=True), st.data())
def test_uidlist_render_parse_roundtrip(uids, data):
    ul = UidList(12345, guid="0" * 32)
    for u in uids:
        ul.uids[u + 1] = data.draw(BASES.filter(lambda s: " :" not in s and "\n" not in s and "\r" not in s
                                             and s.strip() == s))
    ul.nextuid = max(ul.uids, default=0) + 1
    back = UidList.parse(ul.render().decode())
    assert back.uids == ul.uids and back.nextuid == ul.nextuid and back.uidvalidity == 12345


# -- interoperability with a real Dovecot (dovecot-lda, doveadm) ---------------------------------

@pytest.fixture
def dovecot():
    """A private Dovecot (tests/support_dovecot.py), started and stopped by PID."""
    import support_dovecot

    if not support_dovecot.available():
        pytest.skip("needs root and Dovecot (dovecot, dovecot-lda, doveadm)")
    d = support_dovecot.Dovecot().start()
    try:
        yield d
    finally:
        d.stop()


def test_uids_flags_and_keywords_move_between_dovecot_and_mailtools(dovecot):
    for i in range(3):
        dovecot.lda(b"Subject: dovecot %d\n\nbody\n" % i)
    path = dovecot.maildir
    theirs = UidList.read(path)
    assert sorted(theirs.uids) == [1, 2, 3]
    ul = UidList.sync(path)  # reads Dovecot's list, keeps its UIDVALIDITY and UIDs
    assert (ul.uidvalidity, ul.guid, ul.uids) == (theirs.uidvalidity, theirs.guid, theirs.uids)
    assert ul.nextuid == 4

    m = Maildir(path)
    mine = [m.deliver(b"Subject: mailtools %d\n\nbody\n" % i) for i in range(2)]
    files = {f.base: f for f in m.scan()}
    m.set_flags(files[ul.uids[1]], "S")
    kw = Keywords(path)
    m.set_flags(files[ul.uids[2]], "F" + kw.letter("$Junk", create=True))
    ul = UidList.sync(path)
    assert [ul.uids[4], ul.uids[5]] == [parse_name(p.name)[0] for p in mine]

    seen = dovecot.fetch()  # Dovecot reads our uidlist, flags and keywords
    assert sorted(seen) == [1, 2, 3, 4, 5]
    assert seen[1]["flags"] == {"\\Seen"}
    assert seen[2]["flags"] == {"\\Flagged", "$Junk"}
    assert seen[4]["guid"] == ul.uids[4] and seen[5]["guid"] == ul.uids[5]

    # and back: Dovecot sets a keyword and a flag, delivers one more; we read it all
    dovecot.doveadm("flags", "add", "-u", "lda", "\\Answered work", "mailbox", "INBOX", "uid", "4")
    dovecot.lda(b"Subject: dovecot again\n\nbody\n")
    ul = UidList.sync(path)
    assert sorted(ul.uids) == [1, 2, 3, 4, 5, 6]
    assert ul.uidvalidity == theirs.uidvalidity
    f4 = ul.files[4]
    kw.load()
    assert "R" in f4.flags and kw.names_for(f4.flags) == ["work"]
    assert kw.names_for(ul.files[2].flags) == ["$Junk"]
    assert dovecot.fetch()[6]["guid"] == ul.uids[6]
