"""The mail queue: a Maildir-shaped spool of entries moved between state directories by
atomic rename(2). A waiting entry is one plain file; a claimed one lives in a directory of its
own, where its runner writes state beside it.

Layout under the queue directory (cfg.queue_dir)::

    tmp/QID               an entry file being written by enqueue()
    new/QID               queued: waiting for a runner (the only place claim() takes from)
    active/QID.PID.HOST.N/  claimed by runner PID on HOST, its claim number N (the name says
                          who, the directory's mtime says since when); holds the entry
    hold/QID              held by the operator: no runner takes it until release_hold()
    trash/QID.RANDOM      being removed (delivered to every recipient, or deleted)
    nudge                 a FIFO: a byte written here wakes a relay daemon (see nudge())

An entry has one of two shapes, and every reader takes either:

- a plain file: what enqueue() writes, the envelope (see core/envelope.py), one empty line,
  then the message as submitted (``cat`` shows both; the envelope never holds an empty line,
  so the first one ends it). Never rewritten once renamed into new/.
- a directory holding that file as ``entry`` (or, for entries queued before the one-file
  layout, mailtools until 2026-11-28, ``message`` and ``envelope``), maybe with a separate
  ``envelope`` that update() wrote and that wins over the head of ``entry``, and in active/
  maybe a ``hold`` mark (the operator held it during its delivery: release() and recover()
  then move it to hold/, not new/). Entry directories were what enqueue() wrote until
  2026-11-29; now one appears in new/ or hold/ when a claimed entry goes back (release(),
  recover(), a broken envelope parked in hold/).

claim() of a plain file makes active/NAME (or renames a spare directory there, see
_Remover.SPARE_AGE) and renames new/QID to active/NAME/entry; claim() of a directory renames
it to active/NAME, as before. The runner needs that directory: update() writes ``envelope``
into it, hold() its mark, and a claim taken away by recover() shows as the unique active/NAME
path gone (ClaimLost). An active/ directory that is still empty is a claim being made, or
(its claimer's PID gone, or older than the timeout) one a crash cut short: recover() removes it.

A queue id is 13 hex digits of microseconds since the epoch then 10 random hex digits: ids
sort by arrival and two hosts sharing the spool never pick the same one (O_EXCL in tmp/ is
the tie-breaker if they ever did).

Durability (STYLE.md practice 8; qmail's INTERNALS is the model). enqueue() creates tmp/QID
(O_EXCL, opened O_DSYNC: the one write returns with the data and the file size on disk),
renames it into new/ and fsyncs new/ (one fsync for the enqueues that meet there, _GroupSync);
only then does it return the id (and only then may SMTP say 250 or submit exit 0). Nothing
else needs to reach the disk: the name in tmp/ is never relied on, and the name in new/ is
written by new/'s fsync. Postfix does the same (its queue file, then the directory). It is
one flush to disk per message fewer than when enqueue() wrote an entry directory (its
``entry`` file, an fsync of that directory for the name ``entry``, then new/): on ext4
without a journal each fsync is its own disk write. A rename would replace a file silently, so enqueue() checks that
new/QID does not exist before it (an id passed in twice; made ids are unique).

What a crash leaves behind, state by state:

- during enqueue, before the rename: a (possibly partial) file in tmp/. No runner ever looks
  in tmp/, the submitter was not told "accepted", so nothing is lost; recover() removes tmp/
  entries older than a day and a half.
- after the rename, before new/ is fsynced (power loss): the entry is whole either in tmp/
  (the submitter saw no success and retries) or in new/. Never half in new/: its data and
  size were on disk before the rename that makes it visible.
- claiming: between the mkdir of active/NAME and the rename into it, an empty directory
  (removed by recover(): see above) and the entry still in new/. After the rename the entry
  is claimed. A claim of a plain file that raced another runner's claim and release (which
  puts a directory back into new/) takes that directory in as active/NAME/entry/; the claim
  then renames it to a claim name of its own, and recover() puts a crash's leftover of that
  (the inner directory) back whole.
- claimed (active/): the runner died mid-delivery. recover() renames the entry back into new/
  at once when the claimer was on this host and its PID is gone, else when the claim is older
  than the timeout. Delivery is at-least-once: a recipient may get a duplicate, none is lost.
- update() while claimed: the new envelope is written to envelope.tmp, fsynced, renamed over
  envelope and the directory fsynced. A crash leaves the old or the new envelope, whole.
- release() with a recipient still pending: one rename of the claim directory back into new/
  (or hold/), not fsynced: a crash that loses it leaves the entry in active/, where recover()
  finds it (the state is in the envelope update() made durable).
- release() when every recipient is final: no fsync and no envelope update at all (the runner
  skips update()): a rename into trash/, which takes the entry out of the queue, then a
  background thread unlinks the file and the directory (or, in a process that also queues
  mail, keeps them for a second as spares: see _Remover.SPARE_AGE). A crash that loses the
  rename leaves the entry in active/ or new/ with its last durable envelope: it is delivered
  again to the recipients not recorded as final there (at-least-once, as Postfix, which does
  not fsync its unlink either). A leftover in trash/ is removed by recover().
- hold/release_hold/delete: one rename each (of a file or a directory), fsynced (delete then
  empties trash/), so an entry is always whole in exactly one state directory. Holding an
  active entry writes the ``hold`` mark (and fsyncs the claim directory); a crash either side
  of that leaves it marked or not, whole.

Two runners (processes, or hosts on NFS) claim with rename(new/QID, active/NAME/entry) (or
rename(new/QID, active/NAME) for a directory): the kernel (or NFS server) lets exactly one
rename succeed; the other gets ENOENT, removes its empty claim directory and moves on.

Import cost matters: submit (the sendmail path) imports this module, so only os, errno, sys,
time and core.envelope are imported at the top; anything heavier where it is used.
"""

from __future__ import annotations

import errno
import os
import sys
import time

from mailtools.core.envelope import (  # noqa: F401 - re-exported: callers import them from here
    FINAL_STATES, FORMAT_VERSION, STATES, Entry, Recipient, format_time, parse_time,
)

HOLD_MARK = "hold"  # in an active entry: the operator asked to hold it when its runner is done
TMP_MAX_AGE = 36 * 3600  # qmail's rule: a tmp/ file this old belongs to nobody

_HEX = "0123456789ABCDEF"
_SUBDIRS = ("tmp", "new", "active", "hold", "trash")
_HOST = os.uname().nodename.replace("/", "_").replace(".", "_") or "localhost"
_claims = 0


def _as_typed(qid: str) -> str:
    """A queue id as an operator may type it (spaces, lower case) -> the id; QueueError naming
    what was typed (not its upper-cased form) when it cannot be one."""
    norm = qid.strip().upper()
    if not valid_id(norm):
        raise QueueError(f"not a queue id: {qid!r}")
    return norm


class QueueError(Exception):
    """A queue operation that cannot be done (unknown id, entry busy)."""


class ClaimLost(QueueError):
    """The entry this runner claimed was recovered by someone else (it took too long)."""


# -- small helpers ------------------------------------------------------------------------


# Entries this process just enqueued, for its own runner's claim (serve: the submission
# server and the queue runner in one process): (queue path, qid) -> (envelope, message), the
# very bytes of the entry file, which is never rewritten (an update() writes a separate
# envelope, which the claim looks for after its rename as before). The claim then reads no
# file before its rename: four system calls fewer on the runner's event loop per message.
# Kept only once this process has claimed with the message (a runner lives here), for
# messages up to _FRESH_SIZE, at most _FRESH_MAX of them (the oldest go first).
_fresh: dict = {}
_fresh_on = False
_FRESH_MAX = 256
_FRESH_SIZE = 64 * 1024


def _fresh_switch_on() -> None:
    global _fresh_on
    _fresh_on = True


def _fresh_put(key: tuple, head: bytes, data: bytes) -> None:
    _fresh[key] = (head, data)
    while len(_fresh) > _FRESH_MAX:
        try:
            del _fresh[next(iter(_fresh))]
        except (RuntimeError, StopIteration, KeyError):  # another thread changed it meanwhile
            break


_random_chunks: list = []  # five bytes from os.urandom each; see random5()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_random_chunks.clear)  # a child never repeats its parent's


def random5() -> bytes:
    """Five random bytes (os.urandom's), drawn 320 at a time. Each os.urandom call hands the
    GIL over and waits to get it back, and a threaded server (serve) made four per message,
    two of them on the event loop's thread. list.pop() is atomic: no two callers get the same
    bytes; a forked child starts with none."""
    try:
        return _random_chunks.pop()
    except IndexError:
        block = os.urandom(320)
        _random_chunks.extend([block[i:i + 5] for i in range(0, 320, 5)])
        return _random_chunks.pop()


def new_id(now: float | None = None) -> str:
    """13 hex digits of microseconds since the epoch + 10 random hex digits (sortable, unique)."""
    usec = int((time.time() if now is None else now) * 1_000_000)
    return f"{usec:013X}{random5().hex().upper()}"


def valid_id(qid: str) -> bool:
    return 16 <= len(qid) <= 40 and all(c in _HEX for c in qid)


_O_DSYNC = getattr(os, "O_DSYNC", 0)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)


def _fsync_dir(path: str) -> None:
    # Our own, not core.maildir's: importing that 900-line module (with operator and
    # itertools) cost sendmail a tenth of its start-up instructions for these five lines.
    fd = os.open(path, _DIR_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: str, data: bytes, exclusive: bool = True, *, dir_fd: int | None = None,
                dsync: bool = False) -> None:
    """Create (or truncate) path, write data, make it durable. With dsync the file is opened
    O_DSYNC: each write returns once its data and the file's size are on disk (what
    fdatasync promises, and all a new file's content needs), one system call less than
    write + fsync."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    synced = dsync and _O_DSYNC
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0) | (_O_DSYNC if synced else 0), 0o600,
                 dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if not synced:
            os.fsync(fd)
    finally:
        os.close(fd)


ENTRY = "entry"  # the one-file layout: envelope, an empty line, the message

_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | _O_DSYNC
_REWRITE_FLAGS = os.O_WRONLY | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0) | _O_DSYNC


def _write_entry(fd: int, head: bytes, data: bytes) -> None:
    """Write a one-file entry (the envelope, an empty line, the message) to fd, opened O_DSYNC:
    one writev(), which returns once data and size are on disk (fsync'd here where the
    platform has no O_DSYNC). No copy of the message is made to join the parts."""
    parts = [head + b"\n", data]
    total = len(parts[0]) + len(data)
    done = os.writev(fd, parts)
    if done < total:  # a short write (a signal, a quota): the rest from where it stopped
        view = memoryview(parts[0] + data)[done:]
        while view:
            view = view[os.write(fd, view):]
    if not _O_DSYNC:
        os.fsync(fd)


def _unlink_quietly(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except IsADirectoryError:  # (a directory left by an older version's enqueue)
        pass


_READ_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)


def _read_file(path: str) -> bytes:
    """A whole file through os.open/os.read: open() would add a buffered file object's fstat,
    isatty ioctl and seeks, four more system calls per file, and a runner reads two or three
    files per claimed entry on its event loop. Raises OSError as open() does."""
    fd = os.open(path, _READ_FLAGS)
    try:
        # Read until read() says end of file: a short read is not one everywhere (the spool
        # may be on NFS), and a message cut there would be delivered cut.
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


def _read_head(where: str) -> bytes:
    """The envelope at the head of a one-file entry (through its empty line, without it): read
    in 64 KiB steps until the empty line, not the whole message. Raises IsADirectoryError when
    `where` is a directory (open() takes one, read() refuses), ValueError without the line."""
    fd = os.open(where, _READ_FLAGS)
    try:
        head = b""
        while True:
            chunk = os.read(fd, 65536)
            head += chunk
            end = head.find(b"\n\n")
            if end >= 0:
                return head[: end + 1]
            if not chunk:
                raise ValueError(f"{where}: no empty line after the envelope")
    finally:
        os.close(fd)


def _read_envelope(path: str, is_dir: bool = False) -> tuple[bytes, str]:
    """(envelope bytes, the path they came from) of an entry in any shape: a plain file (what
    enqueue() writes), or a directory holding ``entry`` or ``message``, and maybe a separate
    ``envelope``, which wins. `is_dir`: expected a directory (active/), so tried as one first.
    Raises OSError as open() does (FileNotFoundError: gone), ValueError for a one-file entry
    without its empty line."""
    if not is_dir:
        try:
            return _read_head(path), path
        except IsADirectoryError:
            pass
    where = os.path.join(path, "envelope")
    try:
        return _read_file(where), where
    except FileNotFoundError:
        pass
    except NotADirectoryError:  # a plain file after all
        return _read_head(path), path
    where = os.path.join(path, ENTRY)
    return _read_head(where), where


def _read_whole(path: str, is_dir: bool = False) -> tuple[bytes, str, bytes | None]:
    """_read_envelope(), plus the message when the envelope came from a one-file entry (read
    whole, once), else None."""
    if not is_dir:
        try:
            head, body = _split_entry(_read_file(path), path)
            return head, path, body
        except IsADirectoryError:
            pass
    where = os.path.join(path, "envelope")
    try:
        return _read_file(where), where, None
    except FileNotFoundError:
        pass
    except NotADirectoryError:
        return _read_whole(path)
    where = os.path.join(path, ENTRY)
    head, body = _split_entry(_read_file(where), where)
    return head, where, body


def _split_entry(data: bytes, where: str) -> tuple[bytes, bytes]:
    """A one-file entry -> (its envelope, with its last newline; the message)."""
    end = data.find(b"\n\n")
    if end < 0:
        raise ValueError(f"{where}: no empty line after the envelope")
    return data[: end + 1], data[end + 2 :]


def _read_message(path: str, is_dir: bool = False) -> bytes:
    """The message of an entry in any shape (see _read_envelope)."""
    if not is_dir:
        try:
            return _split_entry(_read_file(path), path)[1]
        except IsADirectoryError:
            pass
    where = os.path.join(path, ENTRY)
    try:
        data = _read_file(where)
    except FileNotFoundError:
        return _read_file(os.path.join(path, "message"))
    except NotADirectoryError:  # a plain file after all
        return _read_message(path)
    return _split_entry(data, where)[1]


_FS_IOC_GETFLAGS, _FS_IOC_SETFLAGS, _TOPDIR_FL = 0x80086601, 0x40086602, 0x00020000


def spread_subdirs(path: str) -> None:
    """Best effort: set the ext2/3/4 "top of directory hierarchy" flag (chattr +T) on a
    directory (the queue's active/, a Maildir tree), so the kernel places each new directory
    made in it in a block group of its own choosing instead of the parent's group. Why: ext4
    without a journal will not reuse an inode freed in the last minutes, and finds a free one
    by looking at every such inode of the group from its start (recently_deleted() in
    fs/ext4/ialloc.c). In a group where thousands of inodes were just freed (a busy /tmp, or
    this queue after a burst of deliveries) that made each creation cost 0.3-1.2 ms of CPU
    here; spread, 0.03 ms. In the queue the directories made per message are the claim
    directories in active/ (entry files go where tmp/ is: the flag places directories only;
    spares spare both, see _Remover.SPARE_AGE); the queue directory itself gets it before its
    state directories are made (and a Maildir before its cur/ new/ tmp/), so that tmp/ and new/
    do not share a group (see _ensure). Placement only: nothing about the entry or its
    durability changes. Other file systems refuse the ioctl or ignore the flag."""
    try:
        import fcntl
        import struct

        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except (ImportError, OSError):
        return
    try:
        flags = struct.unpack("l", fcntl.ioctl(fd, _FS_IOC_GETFLAGS, struct.pack("l", 0)))[0]
        if not flags & _TOPDIR_FL:
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("l", flags | _TOPDIR_FL))
    except OSError:
        pass
    finally:
        os.close(fd)


class _GroupSync:
    """fsync of one directory for the threads that need it at about the same time (group
    commit). A caller takes a ticket after its change (the rename into new/); an fsync that
    starts after ticket N was taken makes changes 1..N durable, so a caller whose ticket is
    covered by an fsync that started later returns without one of its own. Under concurrent
    submissions most enqueues then share new/'s fsync (and its disk cache flush)."""

    def __init__(self, fd: int):
        self.fd = fd
        # A process that has not imported threading (sendmail, deliver: one message, one thread)
        # fsyncs on its own; importing threading for it cost sendmail ~5 ms of start-up. Were
        # threads started later, each would fsync for itself: slower, never less durable.
        threading = sys.modules.get("threading")
        self._cond = threading.Condition(threading.Lock()) if threading is not None else None
        self._tickets = 0  # changes made
        self._durable = 0  # changes 1.._durable are on disk
        self._running = False

    def sync(self) -> None:
        cond = self._cond
        if cond is None:
            os.fsync(self.fd)
            return
        with cond:
            self._tickets += 1
            mine = self._tickets
            while self._durable < mine:
                if self._running:
                    cond.wait()
                    continue
                self._running = True
                covers = self._tickets  # every change counted here happened before the fsync
                cond.release()
                ok = False
                try:
                    os.fsync(self.fd)
                    ok = True
                finally:
                    cond.acquire()
                    self._running = False
                    if ok and covers > self._durable:
                        self._durable = covers
                    cond.notify_all()


def _remove_tree(path: str) -> None:
    """Remove an entry of either shape (a file, or a flat directory of files); tolerant of a
    concurrent remover."""
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return
    except NotADirectoryError:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    for name in names:
        try:
            os.unlink(os.path.join(path, name))
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            _remove_tree(os.path.join(path, name))
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass


def _remove_entry(path: str) -> None:
    """Remove an entry in trash/: a claim directory with its one file and itself (no
    listing), a plain file, or (through _remove_tree) a directory holding more (the two-file
    layout, update()'s envelope, a hold mark, an envelope.tmp, an entry directory released
    into a claim directory)."""
    try:
        os.unlink(os.path.join(path, ENTRY))
    except FileNotFoundError:
        pass
    except NotADirectoryError:  # a plain file (a deleted entry)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    except IsADirectoryError:
        pass  # _remove_tree below
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        _remove_tree(path)


class _Remover:
    """One thread that empties trash/ entries handed over by release(), so a runner's threads
    do not wait for unlink and rmdir. Not a daemon: the process ends once it has caught up
    (what a crash leaves in trash/, recover() removes). Caught up, it looks again every
    IDLE_STEP seconds for IDLE_ROUNDS rounds before it ends: releases come one by one, and a
    thread started for each lull cost a thread's start and end (ten system calls and its
    stack's page faults) for every two or three messages of a busy daemon."""

    IDLE_STEP = 0.05
    IDLE_ROUNDS = 5
    # Spares. A process that also queues mail (serve, relay --listen) keeps a removed entry's
    # claim directory and its ``entry`` file: its next enqueue() truncates that file and
    # renames it into tmp/ (a spare file), and its runner's next claim of a one-file entry
    # renames the emptied directory into active/ (a spare directory) instead of mkdir: two
    # inodes less freed and allocated per message. A runner that queues nothing (relay
    # --once) removes the file and keeps the directory: a claim without mkdir, a removal
    # without rmdir. On ext4 without a journal the allocator
    # skips over every recently freed inode of a group one by one, and under a steady stream
    # that scan was a fifth of serve's CPU. A spare not taken within SPARE_AGE seconds (or
    # when the program ends) is removed as before; recover() leaves this process's spares
    # alone and removes everything else in trash/.
    SPARE_AGE = 1.0
    SPARE_MAX = 64
    recycle = False  # set by enqueue()

    _lock = None
    _paths: list = []
    _spares: list = []  # (trash dir, name, monotonic time it became spare): holding ``entry``
    _dirs: list = []  # (trash dir, name, monotonic time): emptied by enqueue(), for a claim
    _thread = None

    @classmethod
    def _start(cls) -> None:
        # with cls._lock held
        if cls._thread is None:
            import threading

            cls._thread = threading.Thread(target=cls._run, name="queue-remover")
            cls._thread.start()

    @classmethod
    def add(cls, path: str) -> None:
        import threading

        if cls._lock is None:
            cls._lock = threading.Lock()
        with cls._lock:
            cls._paths.append(path)
            cls._start()

    @classmethod
    def _run(cls) -> None:
        import threading

        main = threading.main_thread()
        idle = 0
        while True:
            with cls._lock:
                batch, cls._paths = cls._paths, []
                # spares nobody took in time, or all of them when the program is ending
                cutoff = time.monotonic() - cls.SPARE_AGE if main.is_alive() else float("inf")
                old = [s for s in cls._spares if s[2] < cutoff]
                if old:
                    cls._spares = [s for s in cls._spares if s[2] >= cutoff]
                old_dirs = [s for s in cls._dirs if s[2] < cutoff]
                if old_dirs:
                    cls._dirs = [s for s in cls._dirs if s[2] >= cutoff]
                if (not batch and not old and not old_dirs and not cls._spares and not cls._dirs
                        and idle >= cls.IDLE_ROUNDS):
                    cls._thread = None
                    return
            for trash, name, _ in old + old_dirs:
                try:
                    _remove_entry(os.path.join(trash, name))
                except OSError:
                    pass
            if not batch:
                idle += 1
                time.sleep(cls.IDLE_STEP)
                continue
            idle = 0
            for path in batch:
                try:
                    if os.listdir(path) == [ENTRY]:
                        if cls.recycle and len(cls._spares) < cls.SPARE_MAX:
                            with cls._lock:
                                cls._spares.append((*os.path.split(path), time.monotonic()))
                            continue
                        if len(cls._dirs) < cls.SPARE_MAX:  # a runner alone: the directory
                            os.unlink(os.path.join(path, ENTRY))
                            with cls._lock:
                                cls._dirs.append((*os.path.split(path), time.monotonic()))
                            continue
                except OSError:
                    pass  # a plain file, or gone: removed below (or already)
                try:
                    _remove_entry(path)
                except OSError:
                    pass  # recover() sweeps trash/

    @classmethod
    def take(cls, trash: str) -> str | None:
        """A spare directory in `trash` holding only an old ``entry`` file, for enqueue() to
        take the file from (then hand the directory back with emptied()), or None."""
        return cls._pop(cls._spares, trash)

    @classmethod
    def emptied(cls, path: str) -> None:
        """enqueue() took the file out of spare `path`: the empty directory waits for a claim."""
        with cls._lock:
            cls._dirs.append((*os.path.split(path), time.monotonic()))
            cls._start()  # (the thread may have ended since take(): it expires this one)

    @classmethod
    def take_dir(cls, trash: str) -> str | None:
        """An empty spare directory in `trash` for claim() to rename into active/, or None."""
        return cls._pop(cls._dirs, trash)

    @classmethod
    def _pop(cls, spares: list, trash: str) -> str | None:
        """The newest of `spares` ((trash dir, name, time) tuples) in `trash`, taken out."""
        with cls._lock:
            for i in range(len(spares) - 1, -1, -1):
                if spares[i][0] == trash:
                    return os.path.join(trash, spares.pop(i)[1])
        return None

    @classmethod
    def spares(cls) -> set:
        if cls._lock is None:
            return set()
        with cls._lock:
            return {os.path.join(t, n) for t, n, _ in cls._spares + cls._dirs}


# -- the queue ------------------------------------------------------------------------------


class Queue:
    """The spool at `path` (cfg.queue_dir). Directories are created on first use."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self._ready = False
        self._fds: tuple[int, int] | None = None  # tmp/ and new/, for enqueue()
        self.problems: list[str] = []  # envelopes entries() could not read

    def _dir(self, sub: str) -> str:
        return os.path.join(self.path, sub)

    def _ensure(self) -> None:
        if self._ready:
            return
        created = False
        if not all(os.path.isdir(self._dir(sub)) for sub in _SUBDIRS):
            os.makedirs(self.path, mode=0o700, exist_ok=True)
            # Before the state directories are made: each then gets a block group of the
            # kernel's choosing. Left in the queue directory's group together, every enqueue
            # (a new inode in tmp/'s group, then new/'s fsync) waited on metadata blocks the
            # other's write had in flight: a fresh spool took ~400 submissions/s and reached
            # ~900 only once some 8,000 entries had pushed new inodes out of that group; spread,
            # ~900 from the first message (ext4 without a journal, 10 sessions).
            spread_subdirs(self.path)
        for sub in _SUBDIRS:
            d = self._dir(sub)
            try:
                os.mkdir(d, 0o700)
                created = True
            except FileExistsError:
                pass
        # an attribute of active/, where claims make directories: looked at once per Queue (a
        # queue made before claims made directories has it on tmp/ only)
        spread_subdirs(self._dir("active"))
        if created:
            _fsync_dir(self.path)
            parent = os.path.dirname(os.path.abspath(self.path))
            if parent:
                _fsync_dir(parent)
        self._ready = True

    # writing --------------------------------------------------------------------------

    def enqueue(self, sender: str, recipients, data: bytes, *, dsn: dict | None = None,
                qid: str | None = None) -> str:
        """Write the message and its envelope durably and return the queue id.

        `qid`: one chosen beforehand with new_id() (the servers name it in their Received
        header); OSError if an entry of that id exists (never another id).

        `recipients`: addresses (str) or Recipient objects (to carry DSN NOTIFY/ORCPT). `dsn`:
        see Entry. Returns only after files and directories are fsynced (see module docstring).
        Raises OSError when the disk cannot take it (the caller answers 4xx / exits 75).
        """
        rcpts = [r if isinstance(r, Recipient) else Recipient(r) for r in recipients]
        if not rcpts:
            raise ValueError("no recipients")
        for r in rcpts:
            if "\n" in r.address or "\r" in r.address:
                raise ValueError(f"unsafe recipient address {r.address!r}")
        if "\n" in sender or "\r" in sender:
            raise ValueError(f"unsafe sender address {sender!r}")
        tmp_fd, new_fd = self._dir_fds()
        _Remover.recycle = True
        chosen = qid
        while True:
            now = time.time()
            qid = chosen or new_id(now)
            fd = self._take_spare(qid, tmp_fd) if _Remover._spares else None
            if fd is not None:
                break
            try:
                fd = os.open(qid, _CREATE_FLAGS, 0o600, dir_fd=tmp_fd)
                break
            except FileExistsError:
                if chosen:
                    raise
        key = (self.path, qid)
        try:
            try:
                head = Entry(qid, sender, rcpts, now, len(data), dsn).serialise()
                _write_entry(fd, head, data)
            finally:
                os.close(fd)
            if _fresh_on and len(data) <= _FRESH_SIZE:
                _fresh_put(key, head, data)
            # rename() replaces a file silently: never an entry already queued under this id
            # (one chosen twice by a caller; a made one is unique)
            try:
                os.stat(qid, dir_fd=new_fd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            else:
                raise FileExistsError(errno.EEXIST, "queue entry exists", qid)
            os.rename(qid, qid, src_dir_fd=tmp_fd, dst_dir_fd=new_fd)
        except BaseException:
            # disk full, I/O error: leave nothing behind (nothing was accepted)
            _fresh.pop(key, None)
            _unlink_quietly(qid, tmp_fd)
            raise
        try:
            self._new_sync.sync()  # the name new/QID (one fsync for the concurrent enqueues)
        except OSError:
            # Not durable, so not accepted: take the entry back before saying so, or the
            # caller's retry would queue it twice. A runner that claimed it meanwhile has made
            # it its own: then it is accepted after all.
            try:
                os.rename(qid, qid, src_dir_fd=new_fd, dst_dir_fd=tmp_fd)
            except OSError:
                return qid
            _fresh.pop(key, None)
            _unlink_quietly(qid, tmp_fd)
            raise
        return qid

    def _take_spare(self, qid: str, tmp_fd: int) -> int | None:
        """A spare entry file (see _Remover.SPARE_AGE) opened, truncated and renamed to tmp/QID,
        as a descriptor to write the entry through; None when there is none to take. The open
        truncates before the rename: tmp/QID never shows another entry's bytes, and it has a
        fresh mtime there (recover() ages tmp/ by it; a spare can be days old)."""
        spare = _Remover.take(self._dir("trash"))
        if spare is None:
            return None
        old = os.path.join(spare, ENTRY)
        try:
            fd = os.open(old, _REWRITE_FLAGS, 0o600)
        except OSError:  # another process's recover() removed it
            _remove_tree(spare)
            return None
        try:
            # (no O_EXCL for a rename: a made id is unique by its 40 random bits, and a
            # chosen one already queued is caught before the rename into new/)
            os.rename(old, qid, dst_dir_fd=tmp_fd)
        except OSError:
            os.close(fd)
            _remove_tree(spare)
            return None
        _Remover.emptied(spare)
        return fd

    def _dir_fds(self) -> tuple[int, int]:
        """Descriptors of tmp/ and new/, opened once: enqueue() creates, renames and fsyncs
        relative to them (as Postfix works from inside its queue directory), which spares a
        path walk per call and the open/close around each directory fsync. The fsync of new/
        is of the very directory the rename went into. The other state directories are not
        looked at when these two open (sendmail's one enqueue spares ten system calls): whoever
        claims, holds or recovers makes sure of them."""
        fds = self._fds
        if fds is None:
            try:
                fds = self._open_tmp_new()
            except FileNotFoundError:
                self._ensure()  # a new queue (or one missing a directory)
                fds = self._open_tmp_new()
            # (Two threads racing here both open; either's new/ descriptor fsyncs the same
            # directory, so whichever _GroupSync a caller sees is right.)
            self._new_sync = _GroupSync(fds[1])
            self._fds = fds
        return fds

    def _open_tmp_new(self) -> tuple[int, int]:
        tmp_fd = os.open(self._dir("tmp"), _DIR_FLAGS)
        try:
            return tmp_fd, os.open(self._dir("new"), _DIR_FLAGS)
        except BaseException:
            os.close(tmp_fd)
            raise

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", None) or ():
            try:
                os.close(fd)
            except OSError:
                pass

    # reading --------------------------------------------------------------------------

    def _load(self, entry_path: str, state_dir: str, name: str) -> Entry:
        raw, where = _read_envelope(entry_path, state_dir == "active")
        entry = Entry.parse(raw, where)
        entry.state_dir = state_dir
        entry.path = entry_path
        if state_dir == "active":
            parts = name.split(".")
            entry.claimed_by = ".".join(parts[1:3]) if len(parts) >= 3 else None
        return entry

    def entries(self, include: tuple[str, ...] = ("new", "active", "hold")) -> list[Entry]:
        """Every entry (queued, claimed and held), oldest first. An entry that moves while
        listing is read where it went, or missed; one whose envelope cannot be parsed is left
        out and described in self.problems ("path: why") for the caller to log. What this user
        may not read (a state directory, another user's entry) is counted in self.unreadable."""
        out = []
        self.problems = []
        self.unreadable = 0
        for state_dir in include:
            d = self._dir(state_dir)
            try:
                names = os.listdir(d)
            except FileNotFoundError:
                continue
            except PermissionError:
                self.unreadable += 1
                continue
            for name in names:
                try:
                    out.append(self._load(os.path.join(d, name), state_dir, name))
                except PermissionError:
                    self.unreadable += 1
                except OSError:
                    continue
                except ValueError as exc:
                    self.problems.append(str(exc))
        out.sort(key=lambda e: e.id)
        return out

    def ids(self, state_dir: str = "new") -> list[str]:
        """Queue ids in one state directory, oldest first (cheap: no envelope is read)."""
        try:
            names = os.listdir(self._dir(state_dir))
        except FileNotFoundError:
            return []
        return sorted(n.split(".", 1)[0] for n in names)

    def _find(self, qid: str) -> tuple[str, str, str]:
        if not valid_id(qid):
            raise QueueError(f"not a queue id: {qid!r}")
        for state_dir in ("new", "hold"):
            p = os.path.join(self._dir(state_dir), qid)
            if os.path.lexists(p):  # a plain file or a directory
                return p, state_dir, qid
        try:
            names = [n for n in os.listdir(self._dir("active")) if n.split(".", 1)[0] == qid]
        except FileNotFoundError:
            names = []
        if len(names) > 1:
            # an empty claim directory beside the real claim (a claimer that died between its
            # mkdir and its rename, or one losing a race right now): the one with the entry
            names.sort(key=lambda n: not _holds_something(os.path.join(self._dir("active"), n)))
        if names:
            return os.path.join(self._dir("active"), names[0]), "active", names[0]
        raise QueueError(f"no such queue entry: {qid}")

    def get(self, qid: str) -> Entry:
        """The entry with this id wherever it is; raises QueueError when there is none."""
        qid = _as_typed(qid)
        try:  # the common case first: one open() in new/, no stat, no listing
            return self._load(os.path.join(self._dir("new"), qid), "new", qid)
        except (FileNotFoundError, NotADirectoryError):
            pass
        for _ in range(3):  # it may move between finding and reading
            p, state_dir, name = self._find(qid)
            try:
                return self._load(p, state_dir, name)
            except FileNotFoundError:
                continue
        raise QueueError(f"no such queue entry: {qid}")

    def read_message(self, entry: Entry) -> bytes:
        """The message as submitted (any shape of entry), read from where the entry was seen."""
        if entry.path is None:
            entry.path = self._find(entry.id)[0]
        return _read_message(entry.path, entry.state_dir == "active")

    # claiming -------------------------------------------------------------------------

    def claim(self, qid: str, *, want=None) -> Entry | None:
        """Take an entry in new/ for delivery (atomic rename into active/); None if another
        runner has it, it is held, or it is gone.

        `want(entry) -> bool` (a runner's "is it due?") is asked of the envelope as it is in
        new/, before the rename: an entry not wanted costs one read and no rename. After the
        rename the envelope is read again and parsed only when its bytes changed meanwhile
        (another runner's update() won the race), and then asked again (None, the entry back
        in new/, when no longer wanted)."""
        got = self._claim(qid, want, False)
        return None if got is None else got[0]

    def claim_with_message(self, qid: str, *, want) -> tuple[Entry, bytes | None] | None:
        """claim(), and the message when it came with the claim's one read of a one-file
        entry (else None: read_message()). A plain file in new/ is never rewritten, so after
        the rename one failed open (through the file, ENOTDIR) shows it is still that file
        and nothing is read again; when another runner claimed, updated and released it
        meanwhile (a directory came back to new/), its separate envelope is read instead."""
        return self._claim(qid, want, True)

    def _claim(self, qid: str, want, with_message: bool) -> tuple[Entry, bytes | None] | None:
        self._ensure()
        if not valid_id(qid):
            raise QueueError(f"not a queue id: {qid!r}")
        seen = raw = body = None
        is_dir = None  # the shape of new/QID: a plain file, or a directory (see the docstring)
        if with_message and not _fresh_on:
            _fresh_switch_on()
        fresh = _fresh.pop((self.path, qid), None) if _fresh else None  # any claim ends it
        src = os.path.join(self._dir("new"), qid)
        if want is not None:
            try:
                if fresh is not None and with_message:  # what enqueue() wrote here, as it is
                    raw, body = fresh
                    where = src
                elif with_message:
                    raw, where, body = _read_whole(src)
                else:
                    raw, where = _read_envelope(src)
                is_dir = where != src
            except (FileNotFoundError, NotADirectoryError):
                return None  # claimed, held or gone meanwhile
            except ValueError:
                raw, where = b"", qid  # a one-file entry without its empty line: parked below
            try:
                seen = Entry.parse(raw, where)
            except ValueError:
                seen = None  # claimed all the same: a broken envelope is parked in hold/ below
            if seen is not None and not want(seen):
                return None
        if is_dir is None:
            try:
                is_dir = os.lstat(src).st_mode & 0o170000 == 0o040000
            except FileNotFoundError:
                return None
        name = self._claim_name(qid)
        dst = os.path.join(self._dir("active"), name)
        if is_dir:
            # an entry directory (written before the one-file layout, or released back to new/
            # after a claim): it becomes the claim directory
            try:
                os.rename(src, dst)
            except FileNotFoundError:
                # NFS: a retransmitted rename that did succeed reports ENOENT; check it is ours.
                if not os.path.isdir(dst):
                    return None
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    return None
                raise
            try:
                os.utime(dst)  # the claim's age is the directory's mtime
            except OSError:
                pass
        else:
            # a plain file: into a claim directory of its own as active/NAME/entry. The
            # directory is made (or a spare renamed) first, so the one rename that takes the
            # entry is the claim: of two claimers exactly one gets it, the other ENOENT.
            made = False
            if _Remover._dirs:
                spare = _Remover.take_dir(self._dir("trash"))
                if spare is not None:
                    try:
                        os.rename(spare, dst)
                        made = True
                    except OSError:
                        _remove_tree(spare)
            if not made:
                os.mkdir(dst, 0o700)
            try:
                os.rename(src, os.path.join(dst, ENTRY))  # also sets dst's mtime: the claim's age
            except OSError as exc:
                # NFS: a retransmitted rename that did succeed reports ENOENT; check it is ours.
                if not (isinstance(exc, FileNotFoundError) and os.path.exists(os.path.join(dst, ENTRY))):
                    try:
                        os.rmdir(dst)  # lost the race (or gone): no empty claim left behind
                    except OSError:
                        pass
                    if isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
                        return None
                    raise
            # Between our look and the rename another runner may have claimed the file and
            # released it back as a directory: then the rename moved that directory in as
            # entry. One open tells (a plain file refuses a path through it: ENOTDIR).
            try:
                _read_file(os.path.join(dst, ENTRY, "envelope"))
            except NotADirectoryError:
                pass  # the plain file (never rewritten: what we read is what it holds)
            except OSError:
                dst, name, is_dir = self._unnest(dst, qid)
            else:
                dst, name, is_dir = self._unnest(dst, qid)
        try:
            if raw is None:
                return self._load(dst, "active", name), None
            if not is_dir:
                now = raw
            elif body is not None:  # read whole before the rename: has an envelope appeared?
                where = os.path.join(dst, "envelope")
                try:
                    now = _read_file(where)
                except FileNotFoundError:
                    now = raw
            else:
                now, where = _read_envelope(dst, True)
            entry = seen if now == raw and seen is not None else Entry.parse(now, where)
        except ValueError:
            # A broken envelope: park it in hold/ for the operator rather than retry forever.
            os.rename(dst, os.path.join(self._dir("hold"), qid))
            return None
        entry.state_dir, entry.path, entry.claimed_by = "active", dst, ".".join(name.split(".")[1:3])
        if entry is not seen and not want(entry):
            self.release(entry)
            return None
        return entry, body

    def _claim_name(self, qid: str) -> str:
        # A unique name per claim: two tasks of one process never both win, and an NFS
        # retransmitted rename can be told apart from someone else's claim.
        global _claims
        _claims += 1
        return f"{qid}.{os.getpid()}.{_HOST}.{_claims:x}{random5()[:2].hex()}"

    def _unnest(self, outer: str, qid: str) -> tuple[str, str, bool]:
        """The claim of a plain file took an entry directory in as outer/entry (see _claim):
        make that directory the claim (a fresh name in active/) and drop the outer one. A
        crash in between leaves outer/entry/, which recover() puts back whole."""
        name = self._claim_name(qid)
        dst = os.path.join(self._dir("active"), name)
        os.rename(os.path.join(outer, ENTRY), dst)
        try:
            os.rmdir(outer)
        except OSError:
            pass
        try:
            os.utime(dst)
        except OSError:
            pass
        return dst, name, True

    def _check_claim(self, entry: Entry) -> str:
        # No stat here: the write, rename or unlink that follows fails with ENOENT when the
        # claim was lost (our active/ name is unique to this claim), and says so for free.
        if entry.state_dir != "active" or not entry.path:
            raise QueueError(f"{entry.id}: not claimed")
        return entry.path

    def update(self, entry: Entry) -> None:
        """Write the envelope of a claimed entry durably (tmp + fsync + rename + fsync dir).
        Raises ClaimLost when the claim was recovered by someone else meanwhile."""
        p = self._check_claim(entry)
        tmp = os.path.join(p, "envelope.tmp")
        try:
            _write_file(tmp, entry.serialise(), exclusive=False)
            os.rename(tmp, os.path.join(p, "envelope"))
        except FileNotFoundError:
            raise ClaimLost(f"{entry.id}: claim lost (recovered by another runner)") from None
        _fsync_dir(p)  # the rename also sets p's mtime: the claim stays fresh (no utime)

    def release(self, entry: Entry) -> bool:
        """Give a claimed entry back: into new/ if any recipient is pending, else removed.
        Call update() first to keep state changes (not needed when every recipient is final:
        the removal does not depend on it). Returns False if the claim was lost."""
        p = self._check_claim(entry)
        if entry.done:
            try:
                self._discard(p, entry.id, durable=False, now=False)
            except FileNotFoundError:
                return False
            entry.path, entry.state_dir, entry.claimed_by = None, "trash", None
            return True
        to = "hold" if os.path.exists(os.path.join(p, HOLD_MARK)) else "new"
        dst = os.path.join(self._dir(to), entry.id)
        try:
            os.rename(p, dst)
        except FileNotFoundError:
            return False
        # No fsync of new/: a crash that loses this rename leaves the entry in active/, and
        # recover() returns it (its claimer's PID is gone), with the envelope update() wrote.
        entry.path, entry.state_dir, entry.claimed_by = dst, to, None
        return True

    def _discard(self, p: str, qid: str, durable: bool = True, now: bool = True) -> None:
        trash = os.path.join(self._dir("trash"), f"{qid}.{random5()[:4].hex()}")
        os.rename(p, trash)
        if durable:
            _fsync_dir(os.path.dirname(p))
        if now:
            _remove_entry(trash)
        else:
            _Remover.add(trash)

    def recover(self, older_than_s: float, tmp_older_than_s: float = TMP_MAX_AGE) -> list[str]:
        """Put entries claimed by dead runners back into new/; clean tmp/ and trash/.

        A claim from this host is recovered at once when its PID is gone (or now belongs to a
        process started after the claim was made), and never while its runner lives, however
        long a delivery takes; a claim from another host when its directory's mtime is older
        than `older_than_s`. Returns the recovered ids."""
        self._ensure()
        now = time.time()
        recovered = []
        starts: dict = {}  # PID -> its start time, False when gone, None when unknown
        active = self._dir("active")
        for name in os.listdir(active):
            qid, pid_s, host = (name.split(".") + ["", ""])[:3]
            p = os.path.join(active, name)
            try:
                mtime = os.stat(p).st_mtime
            except FileNotFoundError:
                continue
            mine = host == _HOST and pid_s.isdigit()
            if mine and int(pid_s) == os.getpid():
                continue
            alive = _claimer_alive(int(pid_s), mtime, starts) if mine else None
            if alive or (alive is None and now - mtime <= older_than_s):
                continue
            src = p
            try:
                os.rmdir(p)  # an empty claim directory: its claimer died between mkdir and rename
                continue
            except FileNotFoundError:
                continue
            except NotADirectoryError:
                pass  # a plain file in active/: put back as it is
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    continue
                if os.path.isdir(os.path.join(p, ENTRY)):
                    src = os.path.join(p, ENTRY)  # an entry directory claimed into it: see _unnest
            to = "hold" if os.path.exists(os.path.join(p, HOLD_MARK)) else "new"
            try:
                os.rename(src, os.path.join(self._dir(to), qid))
            except OSError:
                continue
            if src != p:
                _remove_tree(p)
            recovered.append(qid)
        if recovered:
            _fsync_dir(self._dir("new"))
            _fsync_dir(self._dir("hold"))
        spares = _Remover.spares()
        for sub, limit in (("tmp", tmp_older_than_s), ("trash", 0)):
            d = self._dir(sub)
            for name in os.listdir(d):
                p = os.path.join(d, name)
                if p in spares:
                    continue  # this process's, for its next enqueue() (or removed within a second)
                try:
                    if now - os.stat(p).st_mtime >= limit:
                        _remove_tree(p)
                except FileNotFoundError:
                    continue
        return sorted(recovered)

    # the operator ---------------------------------------------------------------------

    def hold(self, qid: str) -> None:
        """Move a waiting entry to hold/. An entry being delivered gets a `hold` mark instead:
        its runner's release() (or recover()) then puts it in hold/ rather than back in new/.
        Raises QueueError for an unknown id."""
        qid = _as_typed(qid)
        self._ensure()
        p, state_dir, _ = self._find(qid)
        if state_dir == "hold":
            return
        if state_dir == "active":
            try:
                _write_file(os.path.join(p, HOLD_MARK), b"", exclusive=False)
                _fsync_dir(p)
            except FileNotFoundError:
                self.hold(qid)  # released or recovered meanwhile: try where it is now
            return
        try:
            os.rename(p, os.path.join(self._dir("hold"), qid))
        except FileNotFoundError:
            return self.hold(qid)  # claimed meanwhile: mark it there
        _fsync_dir(self._dir("hold"))

    def release_hold(self, qid: str) -> None:
        """Move a held entry back to new/ (raises QueueError if it is not held)."""
        qid = _as_typed(qid)
        self._ensure()
        p, state_dir, _ = self._find(qid)
        if state_dir == "active" and os.path.exists(os.path.join(p, HOLD_MARK)):
            try:
                os.unlink(os.path.join(p, HOLD_MARK))  # un-ask before its runner finishes
                return
            except FileNotFoundError:
                return self.release_hold(qid)
        if state_dir != "hold":
            raise QueueError(f"{qid}: not held")
        try:
            os.unlink(os.path.join(p, HOLD_MARK))
        except (FileNotFoundError, NotADirectoryError):
            pass
        os.rename(p, os.path.join(self._dir("new"), qid))
        _fsync_dir(self._dir("new"))

    def delete(self, qid: str) -> None:
        """Remove a waiting or held entry for good (raises QueueError if claimed or unknown)."""
        qid = _as_typed(qid)
        self._ensure()
        p, state_dir, _ = self._find(qid)
        if state_dir == "active":
            raise QueueError(f"{qid}: being delivered right now; try again")
        try:
            self._discard(p, qid)
        except FileNotFoundError:
            raise QueueError(f"{qid}: was claimed meanwhile; try again") from None


def _holds_something(path: str) -> bool:
    try:
        return bool(os.listdir(path))
    except NotADirectoryError:
        return True
    except OSError:
        return False


def _claimer_alive(pid: int, claimed_at: float, starts: dict) -> bool | None:
    """Whether the process of this host that made a claim (its directory's mtime, which is
    never older than the claim) still runs: False when the PID is gone or now belongs to a
    process started after the claim; None when that cannot be told (no /proc: the caller
    goes by the claim's age). `starts` keeps what was learnt of each PID for one pass over
    active/ (a runner holds many claims: one look at its process, not one per claim)."""
    if pid not in starts:
        starts[pid] = _process_start(pid) if _pid_alive(pid) else False
    started = starts[pid]
    if started is None or started is False:
        return started
    return started <= claimed_at + 1.0  # (start times have clock-tick resolution)


def _process_start(pid: int) -> float | None:
    """When a process started (seconds since the epoch), from Linux's /proc; None elsewhere."""
    global _BOOT_TIME
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        ticks = int(stat[stat.rindex(b")") + 2:].split()[19])  # field 22: starttime
        if _BOOT_TIME is None:
            with open("/proc/stat", "rb") as f:
                _BOOT_TIME = next(int(line.split()[1]) for line in f if line.startswith(b"btime "))
        return _BOOT_TIME + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


_BOOT_TIME: int | None = None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- waking a relay daemon ------------------------------------------------------------------

NUDGE = "nudge"


def nudge(queue_dir) -> bool:
    """Wake a relay daemon on this host that waits on the queue (best effort, never blocks).

    Writes one byte to the FIFO queue_dir/nudge when a reader has it open; with no daemon (no
    FIFO, or no reader: ENXIO) or a full pipe (EAGAIN: it is awake already) nothing happens.
    Returns True when a byte was written. On a spool shared over NFS a FIFO is per host: daemons
    elsewhere find the entry at their next timed pass."""
    path = os.path.join(os.fspath(queue_dir), NUDGE)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        import stat

        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
        os.write(fd, b"!")
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def __getattr__(name: str):
    # The long-lived sides of nudge() live in core.nudge (sendmail's path does not load them);
    # `from mailtools.core.queue import Nudger, NudgeListener` keeps working.
    if name in ("Nudger", "NudgeListener"):
        from mailtools.core import nudge as _nudge

        return getattr(_nudge, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
