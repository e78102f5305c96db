"""Maildir: atomic durable delivery, listing, flags, Maildir++ folders, Dovecot's uidlist/keywords.

The on-disk format is the cr.yp.to Maildir (https://cr.yp.to/proto/maildir.html) with
Maildir++ sub-folders (`.A.B` directories beside cur/new/tmp, each holding a `maildirfolder`
file) and Dovecot's `dovecot-uidlist` (version 3) and `dovecot-keywords`, so a mailbox moves
between mailtools and Dovecot with its UIDs, flags and keywords intact.

Durability of :func:`deliver` (the only writer of new messages), state by state:

1. tmp/NAME created with O_EXCL and written durably (opened O_DSYNC when small, else written
   then fsynced). A crash here leaves at most a file in tmp/, which no reader ever
   looks at (it is swept after 36 hours, as Dovecot does); the caller has not been told
   "delivered", so the sender keeps its copy and retries.
2. tmp/NAME linked to new/NAME (or cur/NAME:2,FLAGS). The link is one directory-entry
   operation: a reader sees the whole, already fsynced file under its final name, or nothing.
3. new/ (or cur/) fsynced: the name survives a power loss; only now does deliver() return
   (or, for a batch of deliveries in a DirSyncBatch, the block end: one fsync for them all).
4. tmp/NAME unlinked: a crash before it leaves a harmless hard link in tmp/.
At no point is a partial message visible in new/ or cur/, and at no point does the message
exist nowhere while someone believes it was delivered.

This module is on the hot path of `mailtools deliver` (one process per message): it imports
only built-in or already-loaded modules (os, sys, errno, time, gc, itertools, operator) at load
time; pathlib is imported for the public API only.
"""

from __future__ import annotations

import errno
import gc
import os
import sys
import time
from itertools import compress, repeat
from operator import is_, itemgetter, lshift, methodcaller, or_

# Maildir++ folder names are IMAP names with '/' as the hierarchy separator; on disk each level
# is joined with '.' (RFC 3501 names arrive in modified UTF-7, which is also what Dovecot stores).
SEP = "/"
INBOX = "INBOX"
INFO = ":2,"  # the info part of a file name (cr.yp.to: "experimental semantics" = ':1,')
STD_FLAGS = "DFPRST"  # Draft Flagged Passed Replied Seen Trashed
UIDLIST = "dovecot-uidlist"
KEYWORDS = "dovecot-keywords"
TMP_MAX_AGE = 36 * 3600  # tmp/ files older than this are debris (Dovecot and qmail agree)
LOCK_STALE = 120  # a dotlock whose mtime is older than this (seconds) is taken over
LOCK_WAIT = 30  # how long to wait for a dotlock before giving up (ETIMEDOUT -> retry later)

_counter = 0
_hostname: str | None = None


def _host() -> str:
    """The host part of unique names: '/' and ':' escaped the way Dovecot and qmail do."""
    global _hostname
    if _hostname is None:
        h = os.uname().nodename or "localhost"
        _hostname = h.replace("/", "\\057").replace(":", "\\072")
    return _hostname


def unique_name(size: int | None = None) -> str:
    """time.MusecPpidQn.host[,S=size]: unique per host (pid), per process (counter) and time."""
    global _counter
    _counter += 1
    now = time.time()
    sec = int(now)
    usec = int((now - sec) * 1_000_000)
    name = f"{sec}.M{usec}P{os.getpid()}Q{_counter}.{_host()}"
    if size is not None:
        name += f",S={size}"
    return name


# A tmp/ file of up to DSYNC_MAX bytes (one write) is opened O_DSYNC where there is one: the
# write returns once its data and the file's size are on disk (fdatasync's promise, all a new
# file's content needs; the queue's entries are written the same way), one system call less
# than write + fsync. A bigger one may take several writes, each of which would wait on the
# disk: written, then fsynced once.
_O_DSYNC = getattr(os, "O_DSYNC", 0)
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
DSYNC_MAX = 1 << 16


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirSyncBatch:
    """Deliveries made by this thread inside ``with DirSyncBatch():`` leave the fsync of new/
    (or cur/) to the end of the block: one fsync per directory for all of them instead of one
    per message (what group commit does across writers, here within one writer). Durability is
    the same at the block's end, which raises OSError when a directory's fsync fails: until
    then the caller must not report any of these messages delivered (step 3 above simply
    happens later for all of them together). A failure raises DirSyncFailed naming the
    directories whose fsync failed (each is tried), so that only their deliveries are retried.
    Blocks do not nest; other threads, and this thread outside a block, fsync at once as
    before."""

    _local = None  # threading.local(), made by the first block (never in one-thread callers)

    def __enter__(self) -> "DirSyncBatch":
        cls = type(self)
        if cls._local is None:
            import threading

            cls._local = threading.local()
        cls._local.dirs = self.dirs = {}  # dict: insertion order, each directory once
        return self

    def __exit__(self, *exc) -> None:
        local = type(self)._local
        local.dirs = local.last = None
        failed = {}
        for d in self.dirs:  # every one, even after a failure: the others' deliveries stand
            try:
                _fsync_dir(d)
            except OSError as err:
                failed[d] = err
        if failed:
            raise DirSyncFailed(failed)

    def take_last(self) -> str | None:
        """The directory whose fsync this block owes the last delivery made in it (None when
        none was made since the last call): a caller that tells deliveries apart asks after
        each, to know which ones a DirSyncFailed concerns."""
        local = type(self)._local
        d, local.last = getattr(local, "last", None), None
        return d


class DirSyncFailed(OSError):
    """The fsync at the end of a DirSyncBatch failed for `failed` (directory -> OSError): the
    deliveries into those directories are not durable; the others are."""

    def __init__(self, failed: dict):
        first = next(iter(failed.values()))
        super().__init__(first.errno, f"fsync of {', '.join(failed)}: {first.strerror or first}")
        self.failed = failed


def _fsync_new_dir(d: str) -> None:
    """Step 3 of deliver(): now, or at the end of this thread's DirSyncBatch block."""
    local = DirSyncBatch._local
    pending = getattr(local, "dirs", None) if local is not None else None
    if pending is None:
        _fsync_dir(d)
    else:
        pending[d] = True
        local.last = d


def make_dirs(path: str, folder_marker: bool = False) -> None:
    """Create path with cur/ new/ tmp/ (mode 0700, like every MDA) and, for a Maildir++
    folder, the empty `maildirfolder` file. Existing directories are left as they are."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    if not all(os.path.isdir(os.path.join(path, sub)) for sub in ("cur", "new", "tmp")):
        # cur/ new/ tmp/ each in a block group of the kernel's choosing (chattr +T on the
        # Maildir, as on the queue directory: see core.queue.Queue._ensure): a delivery's new
        # inode (tmp/'s group) and new/'s fsync then do not wait on each other's metadata
        from mailtools.core.queue import spread_subdirs

        spread_subdirs(path)
    for sub in ("cur", "new", "tmp"):
        try:
            os.mkdir(os.path.join(path, sub), 0o700)
        except FileExistsError:
            pass
    if folder_marker:
        marker = os.path.join(path, "maildirfolder")
        if not os.path.exists(marker):
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT, 0o600))


def deliver_path(path, data: bytes, *, flags: str = "", folder_marker: bool = False) -> str:
    """:func:`deliver` returning a str (the hot path avoids importing pathlib)."""
    path = os.fspath(path)
    if folder_marker and not os.path.exists(os.path.join(path, "maildirfolder")):
        make_dirs(path, folder_marker=True)
    size = len(data)
    info = name_with_flags("", flags) if flags else ""
    dsync = _O_DSYNC if size <= DSYNC_MAX else 0
    for attempt in range(10):
        name = unique_name(size)
        tmp = os.path.join(path, "tmp", name)
        try:
            fd = os.open(tmp, _CREATE_FLAGS | dsync, 0o600)
        except FileNotFoundError:
            if attempt:
                raise
            make_dirs(path, folder_marker)  # first delivery: create cur/ new/ tmp/
            continue
        except FileExistsError:
            time.sleep(0.001 * (attempt + 1))
            continue
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            if not dsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink_quietly(tmp)
            raise
        os.close(fd)
        subdir = "cur" if flags else "new"
        final = os.path.join(path, subdir, name + info)
        try:
            try:
                os.link(tmp, final)
            except FileNotFoundError:  # tmp/ was there but new/ or cur/ is missing
                make_dirs(path, folder_marker)
                os.link(tmp, final)
        except FileExistsError:
            _unlink_quietly(tmp)
            continue
        except OSError as exc:
            # File systems without hard links (some FUSE/SMB): rename is atomic too.
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS):
                _unlink_quietly(tmp)
                raise
            if os.path.exists(final):
                _unlink_quietly(tmp)
                continue
            os.rename(tmp, final)
        else:
            _unlink_quietly(tmp)
        _fsync_new_dir(os.path.join(path, subdir))
        return final
    raise FileExistsError(errno.EEXIST, "could not find a unique file name", os.path.join(path, "tmp"))


def deliver(path, data: bytes, *, flags: str = "", folder_marker: bool = False):
    """Deliver data into the Maildir at path atomically and durably; return the final Path.

    Creates cur/ new/ tmp/ (and `maildirfolder` when folder_marker) when missing. Without flags
    the message lands in new/; with flags in cur/ as NAME:2,FLAGS. Raises OSError.
    """
    from pathlib import Path

    return Path(deliver_path(path, data, flags=flags, folder_marker=folder_marker))


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# -- names and flags ----------------------------------------------------------------------


def parse_name(basename: str) -> tuple[str, str]:
    """'1700.M1P2Q3.host,S=12:2,RS' -> ('1700.M1P2Q3.host,S=12', 'RS').

    A name without an info part (new/) has no flags; an info part of another version
    (':1,...') is not flags either. Flags are returned as stored (sorted when we wrote them).
    """
    base, sep, info = basename.partition(":")
    if not sep:
        return basename, ""
    if info.startswith("2,"):
        return base, info[2:]
    return base, ""


def name_with_flags(base: str, flags: str) -> str:
    """base + ':2,' + flags in ASCII order, each once (standard DFPRST and keyword letters a-z).

    Raises ValueError for anything that is not a flag letter.
    """
    for c in flags:
        if not ("A" <= c <= "Z" or "a" <= c <= "z"):
            raise ValueError(f"not a Maildir flag: {c!r}")
    return base + INFO + "".join(sorted(set(flags)))


def size_from_name(base: str) -> int | None:
    """The ',S=<size>' field of a file name (the byte size Dovecot and Courier record)."""
    for field in base.split(",")[1:]:
        if field.startswith("S="):
            try:
                return int(field[2:])
            except ValueError:
                return None
    return None


def sort_key(base: str) -> tuple:
    """Delivery order: seconds, then microseconds (M<usec>), then the name (as Dovecot sorts)."""
    sec, _, rest = base.partition(".")
    usec = 0
    if rest[:1] == "M":
        tail = rest[1:]
        n = len(tail) - len(tail.lstrip("0123456789"))
        if n:
            usec = int(tail[:n])
    return (int(sec) if sec.isdigit() else 0, usec, base)


def delivery_order(bases: list[str]) -> list[str]:
    """bases sorted by :func:`sort_key`. The usual `<sec>.M<usec>P...` names are keyed with no
    Python-level call per name (100k names: ~50 ms instead of ~400); others take sort_key."""
    sec_rest = list(map(str.partition, bases, repeat(".")))
    secs = list(map(itemgetter(0), sec_rest))
    rests = list(map(itemgetter(2), sec_rest))
    usecs = list(map(itemgetter(0), map(str.partition, map(str.removeprefix, rests, repeat("M")), repeat("P"))))
    n = len(bases)
    if (sum(map(str.startswith, rests, repeat("M"))) == n and all(map(str.isdigit, usecs))
            and all(map(str.isdigit, secs)) and all(map(str.isascii, secs)) and all(map(str.isascii, usecs))):
        # sec and usec packed into one int: sorts far faster than (sec, usec, base) tuples
        keys = list(map(or_, map(lshift, map(int, secs), repeat(64)), map(int, usecs)))
        by_key = dict(zip(keys, bases))
        if len(by_key) == n and (not usecs or max(map(len, usecs)) < 19):  # usec < 2**64, no ties
            keys.sort()
            return list(map(by_key.__getitem__, keys))
    return sorted(bases, key=sort_key)


_new_object = object.__new__


class MessageFile:
    """One message file found by :meth:`Maildir.scan`. path, size and mtime are made lazily
    (a scan of 100k messages should not build 100k Path objects or stat every file)."""

    __slots__ = ("_dir", "_path", "subdir", "name", "base", "flags", "_size", "_stat")

    def __init__(self, path, subdir: str, name: str):
        self._dir = None
        self._path = os.fspath(path)
        self.subdir = subdir  # "new" or "cur"
        self.name = name  # the whole file name, info part included
        self.base, self.flags = parse_name(name)
        self._size = -1
        self._stat = None

    @classmethod
    def _listed(cls, directory: str, subdir: str, name: str, base: str, flags: str) -> "MessageFile":
        """A file found by listing directory: name already split, the path joined on demand
        (UidList.sync makes 100k of these; a join each would be a third of its time)."""
        m = _new_object(cls)
        m._dir = directory
        m._path = None
        m.subdir = subdir
        m.name = name
        m.base = base
        m.flags = flags
        m._size = -1
        m._stat = None
        return m

    @property
    def path(self):
        from pathlib import Path

        return Path(self.fspath)

    @property
    def fspath(self) -> str:
        p = self._path
        if p is None:
            p = self._path = self._dir + "/" + self.name
        return p

    def __fspath__(self) -> str:
        return self.fspath

    def _st(self):
        if self._stat is None:
            self._stat = os.stat(self.fspath)
        return self._stat

    @property
    def size(self) -> int:
        """The ',S=' size from the name when present (what Dovecot trusts), else the file's."""
        if self._size < 0:
            s = size_from_name(self.base)
            self._size = s if s is not None else self._st().st_size
        return self._size

    @property
    def mtime(self) -> float:
        return self._st().st_mtime

    def __repr__(self) -> str:
        return f"MessageFile({self.subdir}/{self.name})"


# -- folders ------------------------------------------------------------------------------


def encode_mutf7(name: str) -> str:
    """RFC 3501 5.1.3 modified UTF-7 ('&' -> '&-', other non-ASCII in &base64-)."""
    import base64

    out, run = [], []

    def flush():
        if run:
            b = base64.b64encode("".join(run).encode("utf-16-be")).decode("ascii")
            out.append("&" + b.rstrip("=").replace("/", ",") + "-")
            run.clear()

    for c in name:
        if 0x20 <= ord(c) <= 0x7E:
            flush()
            out.append("&-" if c == "&" else c)
        else:
            run.append(c)
    flush()
    return "".join(out)


def decode_mutf7(name: str) -> str:
    """The inverse of :func:`encode_mutf7`; raises ValueError on malformed input."""
    import base64

    out, i = [], 0
    while i < len(name):
        c = name[i]
        if c != "&":
            out.append(c)
            i += 1
            continue
        j = name.find("-", i)
        if j < 0:
            raise ValueError(f"bad modified UTF-7: {name!r}")
        chunk = name[i + 1 : j]
        if not chunk:
            out.append("&")
        else:
            b = chunk.replace(",", "/")
            b += "=" * (-len(b) % 4)
            try:
                out.append(base64.b64decode(b, validate=True).decode("utf-16-be"))
            except Exception:
                raise ValueError(f"bad modified UTF-7: {name!r}") from None
        i = j + 1
    return "".join(out)


_RESERVED = {"cur", "new", "tmp"}


def folder_dirname(name: str) -> str | None:
    """IMAP name ('Lists/python') -> Maildir++ directory ('.Lists.python'); None for INBOX.

    An ASCII name is taken as the IMAP wire form (modified UTF-7, RFC 3501 5.1.3), which is
    also what Dovecot stores on disk; a non-ASCII name is encoded to it first.

    Raises ValueError for a name that could escape the Maildir or collide with its parts:
    empty levels, '.' inside a level (the Maildir++ separator), '..', NUL and other control
    characters, a level that folds to cur/new/tmp, or an over-long name.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("empty folder name")
    if name.upper() == INBOX:
        return None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise ValueError(f"control character in folder name: {name!r}")
    if not name.isascii():
        name = encode_mutf7(name)  # a Unicode name (from a command line): store it as Dovecot does
    elif "&" in name:
        decode_mutf7(name)  # an IMAP wire name must be valid modified UTF-7 (raises ValueError)
    parts = name.split(SEP)
    if parts[0].upper() == INBOX:
        parts[0] = INBOX
    for part in parts:
        if not part:
            raise ValueError(f"empty level in folder name: {name!r}")
        if "." in part:
            raise ValueError(f"'.' is not allowed in a folder name (it is the Maildir++ separator): {name!r}")
        if "\\" in part:
            raise ValueError(f"'\\' is not allowed in a folder name: {name!r}")
        if part.lower() in _RESERVED:
            raise ValueError(f"reserved folder name: {name!r}")
    dirname = "." + ".".join(parts)
    if len(dirname.encode("utf-8")) > 255:
        raise ValueError(f"folder name too long: {name!r}")
    return dirname


def folder_name(dirname: str) -> str | None:
    """Maildir++ directory ('.Lists.python') -> IMAP name ('Lists/python'); None if not a
    (safe) folder directory."""
    if not dirname.startswith(".") or dirname in (".", ".."):
        return None
    name = dirname[1:].replace(".", SEP)
    try:
        if folder_dirname(name) != dirname:
            return None
    except ValueError:
        return None
    return name


class Maildir:
    """A Maildir (the INBOX) and its Maildir++ folders."""

    def __init__(self, path, *, folder: str | None = None):
        from pathlib import Path

        self.path = Path(path)
        self.name = folder or INBOX  # the IMAP name of this folder
        self._root = self.path if folder is None else self.path.parent

    def __repr__(self) -> str:
        return f"Maildir({str(self.path)!r}, name={self.name!r})"

    @property
    def is_folder(self) -> bool:
        return self.name != INBOX

    def root(self) -> "Maildir":
        return Maildir(self._root)

    def folder(self, name: str) -> "Maildir":
        """The folder called name (IMAP form, '/' hierarchy); INBOX is the root Maildir.
        Raises ValueError for unsafe names."""
        d = folder_dirname(name)
        if d is None:
            return Maildir(self._root)
        return Maildir(self._root / d, folder=d[1:].replace(".", SEP))

    def exists(self) -> bool:
        return (self.path / "cur").is_dir() and (self.path / "new").is_dir()

    def create(self) -> None:
        make_dirs(str(self.path), folder_marker=self.is_folder)

    def list_folders(self) -> list[str]:
        """INBOX first, then every folder's IMAP name, sorted. Unsafe directories are skipped."""
        names = []
        try:
            entries = os.scandir(self._root)
        except FileNotFoundError:
            return [INBOX]
        with entries:
            for e in entries:
                n = folder_name(e.name)
                if n is not None and e.is_dir(follow_symlinks=False):
                    names.append(n)
        return [INBOX, *sorted(names)]

    def create_folder(self, name: str) -> "Maildir":
        """Create a folder (and its cur/ new/ tmp/, maildirfolder). FileExistsError if it exists."""
        f = self.folder(name)
        if not f.is_folder:
            raise FileExistsError(errno.EEXIST, "INBOX always exists", str(f.path))
        os.makedirs(self._root, mode=0o700, exist_ok=True)
        os.mkdir(f.path, 0o700)
        make_dirs(str(f.path), folder_marker=True)
        _fsync_dir(str(self._root))
        return f

    def delete_folder(self, name: str) -> None:
        """Delete a folder and its messages (its sub-folders stay, as IMAP DELETE wants).
        The directory is first renamed away atomically, then removed."""
        f = self.folder(name)
        if not f.is_folder:
            raise ValueError("INBOX cannot be deleted")
        if not f.path.is_dir():
            raise FileNotFoundError(errno.ENOENT, "no such folder", str(f.path))
        trash = self._root / f"..mailtools-trashed.{os.getpid()}.{time.time_ns()}"
        os.rename(f.path, trash)
        import shutil

        shutil.rmtree(trash, ignore_errors=True)
        _fsync_dir(str(self._root))

    def rename_folder(self, old: str, new: str) -> "Maildir":
        """Rename a folder and its sub-folders. Renaming INBOX moves its messages into a new
        folder and leaves INBOX empty (RFC 3501 6.3.5)."""
        src, dst = self.folder(old), self.folder(new)
        if not dst.is_folder:
            raise FileExistsError(errno.EEXIST, "INBOX already exists", str(dst.path))
        if dst.path.exists():
            raise FileExistsError(errno.EEXIST, "folder exists", str(dst.path))
        if not src.is_folder:
            self.create_folder(new)
            for sub in ("new", "cur"):
                d = src.path / sub
                if not d.is_dir():
                    continue
                for n in os.listdir(d):
                    if not n.startswith("."):
                        os.rename(d / n, dst.path / sub / n)
                _fsync_dir(str(dst.path / sub))
                _fsync_dir(str(d))
            return dst
        if not src.path.is_dir():
            raise FileNotFoundError(errno.ENOENT, "no such folder", str(src.path))
        if (dst.name + SEP).startswith(src.name + SEP):
            raise ValueError("cannot move a folder into itself")
        prefix = src.path.name + "."
        children = [n for n in os.listdir(self._root) if n.startswith(prefix)]
        os.rename(src.path, dst.path)
        for n in children:
            os.rename(self._root / n, self._root / (dst.path.name + n[len(src.path.name):]))
        _fsync_dir(str(self._root))
        return dst

    def scan(self) -> list[MessageFile]:
        """Every message in new/ and cur/ in delivery order (dot files skipped)."""
        out = []
        for sub in ("new", "cur"):
            d = os.path.join(self.path, sub)
            try:
                names = os.listdir(d)
            except FileNotFoundError:
                continue
            out.extend(MessageFile(os.path.join(d, n), sub, n) for n in names if not n.startswith("."))
        out.sort(key=lambda m: sort_key(m.base))
        return out

    def deliver(self, data: bytes, flags: str = ""):
        return deliver(self.path, data, flags=flags, folder_marker=self.is_folder)

    def set_flags(self, msg: MessageFile, flags: str) -> MessageFile:
        """Move msg to cur/ with exactly these flags (a rename; the content is untouched)."""
        name = name_with_flags(msg.base, flags)
        dst = os.path.join(self.path, "cur", name)
        if msg.fspath != dst:
            os.rename(msg.fspath, dst)
        return MessageFile(dst, "cur", name)

    def clean_tmp(self, max_age: float = TMP_MAX_AGE) -> int:
        """Remove tmp/ files older than max_age (debris of crashed deliveries); return a count."""
        d = os.path.join(self.path, "tmp")
        n, cutoff = 0, time.time() - max_age
        try:
            with os.scandir(d) as it:
                for e in it:
                    try:
                        if e.is_file(follow_symlinks=False) and e.stat().st_mtime < cutoff:
                            os.unlink(e.path)
                            n += 1
                    except OSError:
                        pass
        except FileNotFoundError:
            pass
        return n


# -- dotlock ------------------------------------------------------------------------------


class DotLock:
    """Dovecot-style dotlock: FILE.lock created with O_EXCL; the new content of FILE is written
    into the lock file and renamed over FILE (so the replace also releases the lock).
    A lock whose mtime has not changed for LOCK_STALE seconds is taken over."""

    def __init__(self, target: str, wait: float | None = None, stale: float | None = None):
        self.target = target
        self.path = target + ".lock"
        self.wait = LOCK_WAIT if wait is None else wait
        self.stale = LOCK_STALE if stale is None else stale
        self.fd: int | None = None

    def acquire(self) -> "DotLock":
        deadline = time.monotonic() + self.wait
        delay = 0.002
        while True:
            try:
                self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                return self
            except FileExistsError:
                pass
            try:
                age = time.time() - os.stat(self.path).st_mtime
                if age > self.stale:
                    _unlink_quietly(self.path)
                    continue
            except FileNotFoundError:
                continue
            if time.monotonic() >= deadline:
                raise TimeoutError(errno.ETIMEDOUT, "timed out waiting for the lock", self.path)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def replace(self, content: bytes) -> None:
        """Write content as the new target atomically and durably, releasing the lock."""
        assert self.fd is not None
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(self.fd, view):]
            os.fsync(self.fd)
        finally:
            os.close(self.fd)
            self.fd = None
        os.rename(self.path, self.target)
        _fsync_dir(os.path.dirname(self.target) or ".")

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            _unlink_quietly(self.path)

    def __enter__(self) -> "DotLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# -- dovecot-uidlist ----------------------------------------------------------------------


class UidList:
    """Dovecot's `dovecot-uidlist`, version 3.

    Header: `3 V<uidvalidity> N<nextuid> G<guid>` (other header fields are kept). Each record:
    `<uid> [extensions] :<file name>`; extensions such as `W<vsize>` are kept as they were.
    `uids` maps uid -> base name (the file name without its ':2,flags' info part).
    """

    def __init__(self, uidvalidity: int, nextuid: int = 1, guid: str = ""):
        self.uidvalidity = uidvalidity
        self.nextuid = nextuid
        self.guid = guid or os.urandom(16).hex()
        self.uids: dict[int, str] = {}
        self.ext: dict[int, str] = {}  # uid -> extension fields as read (e.g. "W1234")
        self.header_extra: list[str] = []
        self.files: dict[int, MessageFile] = {}  # filled by sync(): uid -> its file

    @property
    def by_base(self) -> dict[str, int]:
        return dict(zip(self.uids.values(), self.uids.keys()))

    @classmethod
    def parse(cls, text: str) -> "UidList":
        """Parse the file's text; raises ValueError when it is not a version 3 uidlist."""
        first, _, body = text.partition("\n")
        head = first.split()
        if not head or head[0] != "3":
            raise ValueError(f"unsupported dovecot-uidlist header: {first[:60]!r}")
        fields = {}
        extra = []
        for tok in head[1:]:
            if tok[:1] in ("V", "N", "G") and tok[:1] not in fields:
                fields[tok[0]] = tok[1:]
            else:
                extra.append(tok)
        try:
            ul = cls(int(fields["V"]), int(fields.get("N", "1")), fields.get("G", ""))
        except (KeyError, ValueError):
            raise ValueError(f"bad dovecot-uidlist header: {first[:60]!r}") from None
        ul.header_extra = extra
        uids = _plain_records(body)
        if uids is not None:
            ul.uids = uids
            if uids:
                ul.nextuid = max(ul.nextuid, max(uids) + 1)
            return ul
        for line in body.split("\n"):
            if not line:
                continue
            left, sep, fname = line.partition(" :")
            if not sep:
                # a record without extensions may be "<uid> :name"; tolerate "<uid>:name"? no.
                raise ValueError(f"bad dovecot-uidlist record: {line[:60]!r}")
            uid_s, _, ext = left.partition(" ")
            uid = int(uid_s)
            ul.uids[uid] = parse_name(fname)[0]
            if ext:
                ul.ext[uid] = ext
        if ul.uids:
            ul.nextuid = max(ul.nextuid, max(ul.uids) + 1)
        return ul

    def render(self) -> bytes:
        head = ["3", f"V{self.uidvalidity}", f"N{self.nextuid}", f"G{self.guid}", *self.header_extra]
        lines = [" ".join(head)]
        uids, ext = self.uids, self.ext
        if ext:
            for uid in sorted(uids):
                e = ext.get(uid)
                lines.append(f"{uid} {e} :{uids[uid]}" if e else f"{uid} :{uids[uid]}")
        else:
            order = sorted(uids)
            lines.extend(map("{} :{}".format, order, map(uids.__getitem__, order)))
        lines.append("")
        return "\n".join(lines).encode("utf-8", "surrogateescape")

    @classmethod
    def read(cls, maildir_path) -> "UidList | None":
        """The current uidlist without locking (None when there is none)."""
        try:
            with open(os.path.join(maildir_path, UIDLIST), "rb") as f:
                return cls.parse(f.read().decode("utf-8", "surrogateescape"))
        except FileNotFoundError:
            return None

    @classmethod
    def sync(cls, maildir_path, *, wait: float | None = None) -> "UidList":
        """Under the dovecot-uidlist.lock dotlock: read the list, give new messages the next
        UIDs in delivery order, drop vanished ones, and write it back atomically if changed.

        Cost on 100k messages is one listdir per directory, one dict lookup per name and no
        stat; the list is rewritten only when a UID was given or dropped. There is no
        directory-mtime shortcut here: `files` must carry every file's current name (flags
        change by rename), so the directories are listed anyway; callers that can skip the
        whole sync (the IMAP store) keep the mtimes themselves."""
        path = os.fspath(maildir_path)
        lock = DotLock(os.path.join(path, UIDLIST), wait=wait)
        lock.acquire()
        # 100k+ new objects and no cycles among them: a collection would only walk them all
        gc_was_on = gc.isenabled()
        gc.disable()
        try:
            try:
                ul = cls.read(path)
            except ValueError:
                ul = None  # unreadable: start over with a new UIDVALIDITY (as Dovecot does)
            changed = ul is None
            if ul is None:
                ul = cls(int(time.time()))
            known = ul.by_base
            present: dict[int, MessageFile] = {}
            fresh: dict[str, MessageFile] = {}  # base -> file; a base in new/ and cur/: cur/ wins
            for sub in ("new", "cur"):
                d = os.path.join(path, sub)
                try:
                    names = os.listdir(d)
                except FileNotFoundError:
                    continue
                # per name, only C-level map()s: ~3x faster than a Python loop on 100k names
                bases, files = _listing(d, sub, names)
                if not known:  # no uidlist yet: everything is new
                    fresh.update(zip(bases, files))
                    continue
                uids = list(map(known.get, bases))
                n_fresh = uids.count(None)
                if n_fresh:
                    fresh.update(compress(zip(bases, files), map(is_, uids, repeat(None))))
                present.update(zip(uids, files))
                if n_fresh:
                    del present[None]
            if fresh:
                changed = True
                ordered = delivery_order(list(fresh))
                given = range(ul.nextuid, ul.nextuid + len(ordered))
                ul.uids.update(zip(given, ordered))
                present.update(zip(given, map(fresh.__getitem__, ordered)))
                ul.nextuid = given.stop
            if len(present) != len(ul.uids):  # present's UIDs are a subset of ul.uids
                for uid in [u for u in ul.uids if u not in present]:
                    del ul.uids[uid]
                    ul.ext.pop(uid, None)
                changed = True
            order = sorted(present)
            ul.files = dict(zip(order, map(present.__getitem__, order)))
            if changed:
                lock.replace(ul.render())
            return ul
        finally:
            if gc_was_on:
                gc.enable()
            lock.release()


def _listing(d: str, sub: str, names: list[str]) -> tuple[list[str], list[MessageFile]]:
    """(base names, MessageFiles) for the file names listed in directory d (dot files skipped),
    in the same order, as :func:`parse_name` would split them."""
    if any(map(methodcaller("startswith", "."), names)):
        names = [n for n in names if n[:1] != "."]
    parts = list(map(str.partition, names, repeat(":")))
    bases = list(map(itemgetter(0), parts))
    infos = list(map(itemgetter(2), parts))
    flags = list(map(str.removeprefix, infos, repeat("2,")))
    if len(infos) - infos.count("") != sum(map(str.startswith, infos, repeat("2,"))):
        flags = [f if i[:2] == "2," else "" for f, i in zip(flags, infos)]  # e.g. ':1,' names
    return bases, list(map(MessageFile._listed, repeat(d), repeat(sub), names, bases, flags))


def _plain_records(body: str) -> dict[int, str] | None:
    """uid -> name for a uidlist body whose every line is `<uid> :<base>` (what mailtools and,
    for plain Maildirs, Dovecot write), with no Python-level work per line; None for anything
    else (extensions, info parts, blank lines), which the line-by-line parser handles."""
    n = body.count("\n")
    if n == 0:
        return {} if not body else None
    if body[-1] != "\n" or body.count(" :") != n or body.count(":") != n:
        return None
    parts = body[:-1].replace("\n", " :").split(" :")
    try:  # int() is what the line parser applies to the same field
        return dict(zip(list(map(int, parts[0::2])), parts[1::2]))
    except ValueError:
        return None


# -- dovecot-keywords ---------------------------------------------------------------------


class Keywords:
    """Dovecot's `dovecot-keywords`: lines `<index> <name>`; index 0..25 is the file-name flag
    letter 'a'..'z'. Changed only under the `dovecot-uidlist.lock` dotlock (as Dovecot does) and
    replaced atomically through `dovecot-keywords.lock`."""

    MAX = 26

    def __init__(self, maildir_path):
        self.path = os.path.join(os.fspath(maildir_path), KEYWORDS)
        self.names: dict[int, str] = {}
        self.load()

    def load(self) -> None:
        self.names = {}
        try:
            with open(self.path, "rb") as f:
                text = f.read().decode("utf-8", "surrogateescape")
        except FileNotFoundError:
            return
        for line in text.splitlines():
            idx, _, name = line.partition(" ")
            if idx.isdigit() and name and int(idx) < self.MAX:
                self.names[int(idx)] = name

    def index(self, name: str) -> int | None:
        for i, n in self.names.items():
            if n == name:
                return i
        return None

    def name(self, index: int) -> str | None:
        return self.names.get(index)

    def letter(self, name: str, *, create: bool = False) -> str | None:
        """The flag letter for a keyword; with create, allocate one (None when all 26 are used)."""
        i = self.index(name)
        if i is None and create:
            i = self.add(name)
        return None if i is None else chr(ord("a") + i)

    def add(self, name: str) -> int | None:
        """Allocate an index for name (re-reading the file under the lock first)."""
        if not name or any(c in name for c in " \r\n\0"):
            raise ValueError(f"bad keyword: {name!r}")
        # Dovecot changes dovecot-keywords only while it holds the uidlist lock (its
        # maildir-keywords.c relies on that), and replaces the file through its own dotlock.
        uidlist_lock = DotLock(os.path.join(os.path.dirname(self.path), UIDLIST))
        with uidlist_lock, DotLock(self.path) as lock:
            self.load()
            i = self.index(name)
            if i is not None:
                return i
            free = [k for k in range(self.MAX) if k not in self.names]
            if not free:
                return None
            i = free[0]
            self.names[i] = name
            body = "".join(f"{k} {v}\n" for k, v in sorted(self.names.items()))
            lock.replace(body.encode("utf-8", "surrogateescape"))
        return i

    def names_for(self, flags: str) -> list[str]:
        """Keyword names for the lower-case letters in flags (unknown letters are skipped)."""
        return [self.names[ord(c) - 97] for c in flags if "a" <= c <= "z" and ord(c) - 97 in self.names]

    def letters_for(self, names, *, create: bool = True) -> str:
        out = []
        for n in names:
            c = self.letter(n, create=create)
            if c:
                out.append(c)
        return "".join(sorted(set(out)))


if __name__ == "__main__":  # pragma: no cover - a tiny debugging aid
    for m in Maildir(sys.argv[1]).scan():
        print(m.subdir, m.base, m.flags, m.size)
