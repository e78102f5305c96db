"""The mailboxes as IMAP sees them: one shared, refreshable state per Maildir folder.

A :class:`Folder` is shared by every session of this process that has the folder open; it
knows each message's UID (from Dovecot's `dovecot-uidlist`, through core.maildir.UidList),
its file and its flags. "Nothing changed" is decided from the mtimes of new/, cur/ and the
uidlist (not trusted within MTIME_MARGIN_NS of our last reading, since mtimes are coarse), so a
100,000-message SELECT does not rescan the directory. Sessions keep their own snapshot (the
sequence numbers the client knows) and compare it with the folder at the points where RFC 3501
allows untagged EXISTS/EXPUNGE/FETCH.
"""

from __future__ import annotations

import gc
import os
import time
from collections import OrderedDict
from pathlib import Path

from mailtools.core import maildir as md
from mailtools.imap import mime
from mailtools.imap.cache import Cache, Info

# Maildir info letters <-> IMAP system flags (Dovecot's mapping; 'P' passed has no flag).
LETTER_FLAG = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen", "T": "\\Deleted"}
FLAG_LETTER = {v.lower(): k for k, v in LETTER_FLAG.items()}
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
MTIME_MARGIN_NS = 200_000_000  # well above a kernel clock tick (1-10 ms)


class Gone(Exception):
    """The folder was deleted underneath us."""


class Msg:
    __slots__ = ("uid", "base", "flags", "subdir", "name")

    def __init__(self, uid: int, base: str, flags: str, subdir: str, name: str):
        self.uid, self.base, self.flags, self.subdir, self.name = uid, base, flags, subdir, name


class Folder:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.spath = str(self.path)
        self.sig: tuple | None = None
        self.sig_time = 0
        self.uidvalidity = 0
        self.nextuid = 1
        self.msgs: list[Msg] = []
        self.by_uid: dict[int, Msg] = {}
        self.cache = Cache(self.path)
        self.info: dict[str, Info] | None = None
        self._hf: OrderedDict = OrderedDict()  # field list -> {base: HEADER.FIELDS bytes}
        self._fields: OrderedDict = OrderedDict()  # field name -> {base: values for SEARCH}
        self.dirty = False
        self.read_ns = 0  # when the state was last read (time.time_ns() before the stat)
        self.by_base: dict[str, Msg] = {}
        self.names: dict[str, set] = {"new": set(), "cur": set()}
        self.generation = 0  # bumped on every change seen or made: sessions skip work when equal
        self._keywords: md.Keywords | None = None
        self._kw_sig = None

    # -- state --------------------------------------------------------------------------
    def _signature(self) -> tuple:
        p = self.spath
        try:
            n = os.stat(p + "/new").st_mtime_ns
            c = os.stat(p + "/cur").st_mtime_ns
        except FileNotFoundError:
            raise Gone(p) from None
        try:
            u = os.stat(p + "/" + md.UIDLIST)
            us = (u.st_mtime_ns, u.st_size, u.st_ino)
        except FileNotFoundError:
            us = None
        return (n, c, us)

    def refresh(self, force: bool = False) -> bool:
        """Re-read the folder if anything may have changed; True when it was re-read."""
        started = time.time_ns()
        sig = self._signature()  # taken first: a change made while we read shows next time
        # Directory mtimes are coarse (a clock tick): a change in the same tick as our last
        # reading would leave them equal, so they are only trusted when older than that
        # reading by a margin. The uidlist is replaced by rename: its inode always changes.
        if (not force and not self.dirty and sig == self.sig
                and max(sig[0], sig[1]) < self.read_ns - MTIME_MARGIN_NS):
            return False
        self.dirty = False
        if not force and self.msgs and self.sig is not None and sig[2] == self.sig[2] and self._incremental():
            self.sig = sig
            self.read_ns = started
            self.generation += 1
            return True
        fast = self._read_known()
        if fast is not None:
            ul, msgs = fast
        else:
            ul = md.UidList.sync(self.path)
            # 100k small objects: the cyclic GC would walk them all several times meanwhile.
            gc_was_on = gc.isenabled()
            gc.disable()
            try:
                msgs = [Msg(uid, f.base, f.flags, f.subdir, f.name) for uid, f in ul.files.items()]
            finally:
                if gc_was_on:
                    gc.enable()
        old = self.by_uid
        self.msgs = msgs
        self.by_uid = {m.uid: m for m in msgs}
        self.by_base = {m.base: m for m in msgs}
        self.names = {"new": {m.name for m in msgs if m.subdir == "new"},
                      "cur": {m.name for m in msgs if m.subdir == "cur"}}
        if self.info is not None and old:
            vanished = [m.base for u, m in old.items() if u not in self.by_uid]
            for b in vanished:
                self.info.pop(b, None)
                for memo in (self._hf, self._fields):
                    for per in memo.values():
                        per.pop(b, None)
            self.cache.drop(vanished)
        self.uidvalidity = ul.uidvalidity
        self.nextuid = ul.nextuid
        # new/ and cur/ as they were before reading (a change meanwhile shows next time); the
        # uidlist as it is now, since the sync above may have rewritten it itself
        self.sig = (sig[0], sig[1], self._signature()[2])
        self.read_ns = started
        self.generation += 1
        return True

    def _incremental(self) -> bool:
        """The uidlist did not change: compare the file names with the last reading and apply
        renames (flag changes by us, mutt, Dovecot) in place. False when a message appeared or
        vanished, which needs the full uidlist sync."""
        p = self.spath
        try:
            now = {"new": set(os.listdir(p + "/new")), "cur": set(os.listdir(p + "/cur"))}
        except FileNotFoundError:
            raise Gone(p) from None
        parse = md.parse_name
        for sub in ("new", "cur"):
            known = self.names[sub]
            if now[sub] == known:
                continue
            for n in now[sub] - known:
                if n[:1] == ".":
                    continue
                base, flags = parse(n)
                m = self.by_base.get(base)
                if m is None:
                    return False  # a new message: it needs a UID
                m.subdir, m.name, m.flags = sub, n, flags
        for sub in ("new", "cur"):
            for n in self.names[sub] - now[sub]:
                m = self.by_base.get(parse(n)[0])
                if m is not None and m.name not in now[m.subdir]:
                    return False  # gone (expunged elsewhere)
        self.names = now  # dot files in it are harmless: skipped above, unknown below
        return True

    def _read_known(self):
        """(uidlist, msgs) without taking the uidlist lock when every file already has a UID
        and none vanished (the common case: flags renamed, nothing delivered); else None and
        the caller runs UidList.sync. Dovecot replaces the uidlist by rename, so an unlocked
        read sees a whole file."""
        try:
            ul = md.UidList.read(self.path)
        except (ValueError, OSError):
            return None
        if ul is None:
            return None
        by_base = {b: u for u, b in ul.uids.items()}
        msgs = []
        parse = md.parse_name
        for sub in ("new", "cur"):
            try:
                names = os.listdir(f"{self.spath}/{sub}")
            except FileNotFoundError:
                raise Gone(self.spath) from None
            for n in names:
                if n[:1] == ".":
                    continue
                base, flags = parse(n)
                uid = by_base.get(base)
                if uid is None:
                    return None
                msgs.append(Msg(uid, base, flags, sub, n))
        if len(msgs) != len(by_base):
            return None
        msgs.sort(key=lambda m: m.uid)
        return ul, msgs

    def touched(self) -> None:
        """We changed the folder ourselves: look again at the next refresh."""
        self.dirty = True

    # -- keywords -----------------------------------------------------------------------
    def keywords(self) -> md.Keywords:
        try:
            st = os.stat(self.spath + "/" + md.KEYWORDS)
            sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            sig = None
        if self._keywords is None or sig != self._kw_sig:
            self._keywords = md.Keywords(self.path)
            self._kw_sig = sig
        return self._keywords

    def flag_names(self, letters: str) -> list[str]:
        out = [LETTER_FLAG[c] for c in letters if c in LETTER_FLAG]
        if any("a" <= c <= "z" for c in letters):
            out += self.keywords().names_for(letters)
        return out

    def letters(self, flags: list[str], create: bool = True) -> str:
        sys_letters = "".join(FLAG_LETTER[f.lower()] for f in flags if f.lower() in FLAG_LETTER)
        kws = [f for f in flags if not f.startswith("\\")]
        if kws:
            kw = self.keywords()
            sys_letters += kw.letters_for(kws, create=create)
            self._kw_sig = None
        return sys_letters

    # -- files --------------------------------------------------------------------------
    def file(self, m: Msg) -> str:
        return f"{self.spath}/{m.subdir}/{m.name}"

    def _locate(self, m: Msg) -> bool:
        """The file was renamed by someone else: find it again by its base name."""
        for sub in ("cur", "new"):
            try:
                for n in os.listdir(f"{self.spath}/{sub}"):
                    if n == m.base or n.startswith(m.base + ":"):
                        m.subdir, m.name = sub, n
                        m.flags = md.parse_name(n)[1]
                        return True
            except FileNotFoundError:
                pass
        return False

    def read(self, m: Msg) -> bytes | None:
        """The message in CRLF form, or None when it has been expunged meanwhile."""
        for _ in range(2):
            try:
                with open(self.file(m), "rb") as f:
                    return mime.to_crlf(f.read())
            except FileNotFoundError:
                if not self._locate(m):
                    return None
        return None

    def set_flags(self, m: Msg, letters: str) -> bool:
        """Rename the file to carry exactly these flags (moving it to cur/)."""
        letters = "".join(sorted(set(letters)))
        if letters == m.flags and m.subdir == "cur":
            return True
        new = md.name_with_flags(m.base, letters)
        for _ in range(2):
            try:
                os.rename(self.file(m), f"{self.spath}/cur/{new}")
                m.subdir, m.name, m.flags = "cur", new, letters
                self.generation += 1
                self.touched()
                return True
            except FileNotFoundError:
                if not self._locate(m):
                    return False
        return False

    def expunge(self, m: Msg) -> None:
        try:
            os.unlink(self.file(m))
        except FileNotFoundError:
            if self._locate(m):
                try:
                    os.unlink(self.file(m))
                except FileNotFoundError:
                    pass
        self.touched()

    def append(self, data: bytes, letters: str, idate: float | None) -> int:
        """Deliver data (durably, core.maildir.deliver) and return its UID."""
        return self.append_many([(data, letters, idate)])[0]

    def append_many(self, items) -> list[int]:
        """Deliver each (data, flag letters, INTERNALDATE or None), then assign UIDs in one
        uidlist sync (COPY of many messages must not re-read the folder per message)."""
        bases = []
        for data, letters, idate in items:
            if b"\r\n" in data:
                data = data.replace(b"\r\n", b"\n")  # Maildir files hold LF line ends, as deliver writes
            path = md.deliver(self.path, data, flags=letters, folder_marker=self.path.name.startswith("."))
            if idate is not None:
                os.utime(path, (idate, idate))
            bases.append(md.parse_name(path.name)[0])
        self.refresh(force=True)
        by_base = {m.base: m.uid for m in self.msgs[-len(bases) - 64 :]} if bases else {}
        missing = [b for b in bases if b not in by_base]
        if missing:
            by_base.update({m.base: m.uid for m in self.msgs})
        return [by_base.get(b, 0) for b in bases]

    # -- cached message data --------------------------------------------------------------
    def _info_map(self) -> dict[str, Info]:
        if self.info is None:
            self.info = self.cache.load()
        return self.info

    def info_for(self, m: Msg) -> Info | None:
        """Size, INTERNALDATE, header, ENVELOPE of m (computed once, then cached)."""
        infos = self._info_map()
        inf = infos.get(m.base)
        if inf is not None:
            return inf
        for _ in range(2):
            try:
                path = self.file(m)
                with open(path, "rb") as f:
                    raw = f.read()
                    st = os.fstat(f.fileno())
                break
            except FileNotFoundError:
                if not self._locate(m):
                    return None
        else:
            return None
        data = mime.to_crlf(raw)
        header = mime.split(data)[0]
        inf = Info(len(data), int(st.st_mtime), header, None)  # ENVELOPE: on first FETCH
        infos[m.base] = inf
        self.cache.put(m.base, inf)
        return inf

    def envelope(self, m: Msg, inf: Info) -> bytes:
        if inf.envelope is None:
            inf.envelope = mime.envelope(inf.header)
            self.cache.put(m.base, inf)
        return inf.envelope

    @staticmethod
    def _memo(memos: OrderedDict, key, keep: int) -> dict:
        """The {base: value} dict of one key, the `keep` most recently used keys kept."""
        per = memos.get(key)
        if per is None:
            per = memos[key] = {}
            while len(memos) > keep:
                memos.popitem(last=False)
        else:
            memos.move_to_end(key)
        return per

    def header_fields(self, m: Msg, header: bytes, fields: list[str]) -> bytes:
        """BODY[HEADER.FIELDS (...)], remembered in memory for the last few field lists
        (clients ask for the same list on every sync)."""
        per = self._memo(self._hf, tuple(fields), 4)
        got = per.get(m.base)
        if got is None:
            got = per[m.base] = mime.header_fields(header, set(fields), False)
        return got

    def field_index(self, name: str) -> dict:
        """{base: what SEARCH compares} for header field `name`, filled by the search module;
        the message content behind a base never changes, so entries stay valid until it
        vanishes. Kept for the 8 most recently searched fields."""
        return self._memo(self._fields, name, 8)

    def structure(self, m: Msg, extended: bool, data: bytes | None = None) -> bytes | None:
        inf = self.info_for(m)
        if inf is None:
            return None
        have = inf.bs if extended else inf.body
        if have is not None:
            return have
        if data is None:
            data = self.read(m)
            if data is None:
                return None
        part = mime.parse(data)
        inf.bs = mime.structure(part, True)
        inf.body = mime.structure(part, False)
        self.cache.put(m.base, inf)
        return inf.bs if extended else inf.body

    def flush(self, background: bool = False) -> None:
        self.cache.flush(background)


class Store:
    """One user's mailboxes: name <-> Folder, shared by all of this process's sessions.

    At most MAX_FOLDERS folders stay in memory (least recently opened dropped first); a session
    still holding a dropped one keeps using it, and the disk keeps both views consistent."""

    _folders: "OrderedDict[str, Folder]" = OrderedDict()
    MAX_FOLDERS = 64

    def __init__(self, root: Path):
        self.root = Path(root)
        self.maildir = md.Maildir(self.root)

    def path_of(self, name: str) -> Path:
        """Raises ValueError for names that could leave the Maildir."""
        return self.maildir.folder(name).path

    def open(self, name: str) -> Folder:
        p = str(self.path_of(name))
        f = Store._folders.get(p)
        if f is None:
            f = Store._folders[p] = Folder(Path(p))
            while len(Store._folders) > Store.MAX_FOLDERS:
                Store._folders.popitem(last=False)[1].flush(background=True)
        else:
            Store._folders.move_to_end(p)
        return f

    def exists(self, name: str) -> bool:
        p = self.path_of(name)
        return os.path.isdir(p / "cur") and os.path.isdir(p / "new")

    def forget(self, name: str) -> None:
        try:
            p = str(self.path_of(name))
        except ValueError:
            return
        for k in [k for k in Store._folders if k == p or k.startswith(p + ".")]:
            Store._folders.pop(k).cache.close()

    def ensure_inbox(self) -> bool:
        """Create the user's Maildir if missing; True when it was new."""
        if (self.root / "cur").is_dir():
            return False
        md.make_dirs(str(self.root))
        return True

    def list(self) -> list[str]:
        return self.maildir.list_folders()
