"""A user's Maildir as a POP3 maildrop: locked, numbered, sized in CRLF octets, with UIDLs.

- Order and UIDLs come from Dovecot's `dovecot-uidlist` (shared with imap-serve): messages are
  numbered in UID order and the UIDL is Dovecot's default `%08Xu%08Xv` (UID, UIDVALIDITY; Dovecot
  expands it in lower-case hex), or the `P` extension when Dovecot recorded one (a mailbox
  migrated with its old UIDLs), so a Maildir moved between Dovecot and mailtools keeps its
  UIDLs and clients download nothing twice.
- Sizes are what RETR sends: the message with bare LF turned into CRLF (RFC 1939 11). They come
  from the `,W=` field of the file name (Dovecot writes it), the uidlist's `W` extension, or our
  cache file `mailtools-pop3-sizes` (base name -> size, rebuilt when missing, never the only copy
  of anything); only messages in none of these are read, once.
- The maildrop lock (RFC 1939 8 "exclusive-access lock") is `mailtools-pop3.lock` in the Maildir,
  held with flock(2) for the whole session, so it excludes other pop3-serve processes on the same
  tree and dies with its holder; the holder's pid is written into it for people. flock alone does
  not exclude two sessions of one process on every file system, so a per-process set does that.
- Deletions happen only in `commit` (QUIT, RFC 1939 6): each file is unlinked and the directory
  fsynced. imap-serve sees the missing files as expunges at its next uidlist sync. Messages
  retrieved (RETR) and kept get the Seen flag, as Dovecot's POP3 does.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading

from mailtools.core.maildir import UIDLIST, UidList, make_dirs, name_with_flags, parse_name
from mailtools.pop3.session import AuthFailed, InUse, MaildropError, MessageGone

LOCK_FILE = "mailtools-pop3.lock"
SIZE_CACHE = "mailtools-pop3-sizes"
_CACHE_MAGIC = "mailtools-pop3-sizes 1"

_held: set[str] = set()  # realpaths of maildrops locked by this process
_snapshots: dict[str, tuple] = {}  # realpath -> (stamp, paths, sizes, uidls) of the last load
_held_mutex = threading.Lock()


def to_crlf(data: bytes) -> bytes:
    """Bare LF -> CRLF; CRLF and lone CR stay as they are (what Dovecot counts as vsize)."""
    if b"\r" not in data:  # the usual Maildir file: one pass
        return data.replace(b"\n", b"\r\n")
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _slurp(path: str, hint: int) -> bytes:
    """The whole file in open + read + close (RETR's hot path: no file object, no fstat)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        data = os.read(fd, hint + 1)
        if len(data) <= hint:
            return data
        chunks = [data]
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def crlf_size(data: bytes) -> int:
    """len(to_crlf(data)) without building it."""
    n = len(data) + data.count(b"\n")
    return n - data.count(b"\r\n") if b"\r" in data else n


def _field(base: str, key: str) -> int | None:
    """The ',W=' (or other) field of a Maildir base name."""
    for f in base.split(",")[1:]:
        if f.startswith(key):
            v = f[len(key):]
            return int(v) if v.isdigit() else None
    return None


class Lock:
    """The maildrop lock; see the module docstring."""

    def __init__(self, path: str):
        self.key = os.path.realpath(path)
        self.file = os.path.join(path, LOCK_FILE)
        self.fd: int | None = None

    def acquire(self) -> None:
        with _held_mutex:
            if self.key in _held:
                raise InUse()
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise InUse() from None
                raise
            _held.add(self.key)
            self.fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the pid is for people; the flock is the lock

    def release(self) -> None:
        with _held_mutex:
            if self.fd is None:
                return
            try:
                os.ftruncate(self.fd, 0)
            except OSError:
                pass
            os.close(self.fd)  # drops the flock
            self.fd = None
            _held.discard(self.key)


class MaildirDrop:
    """An open maildrop (the `Maildrop` protocol of session.py). Indexes are 0-based."""

    def __init__(self, path: str, lock: Lock):
        self.path = path
        self.lock = lock
        self.paths: list[str] = []  # where each message file is (updated when it moved)
        self.sizes: list[int] = []
        self.uidls: list[str] = []

    @classmethod
    def open(cls, path) -> "MaildirDrop":
        """Lock and load the Maildir at path (created when missing). Raises InUse, MaildropError."""
        path = os.fspath(path)
        try:
            if not os.path.isdir(os.path.join(path, "cur")):
                make_dirs(path)
            lock = Lock(path)
            lock.acquire()
        except OSError as exc:
            raise MaildropError(f"Cannot open the mailbox: {exc.strerror}") from None
        drop = cls(path, lock)
        try:
            drop._load()
        except BaseException as exc:
            lock.release()
            if isinstance(exc, OSError):
                raise MaildropError(f"Cannot read the mailbox: {exc.strerror or exc}") from None
            raise
        return drop

    def _listing(self) -> tuple[UidList, dict[int, tuple[str, str]]]:
        """The uidlist and uid -> (file path, base name), in UID order.

        Fast path (the usual case: nothing delivered since the last sync): the uidlist already
        names every file, so it is only read, without its lock and without rewriting it; files
        it lists that are gone are simply not served. Otherwise UidList.sync gives the new
        files their UIDs under the dotlock, exactly as imap-serve and Dovecot do."""
        try:
            ul = UidList.read(self.path)
        except ValueError:
            ul = None
        if ul is not None:
            by_base = ul.by_base
            found: dict[int, tuple[str, str]] = {}
            complete = True
            for sub in ("new", "cur"):
                d = os.path.join(self.path, sub)
                try:
                    names = os.listdir(d)
                except FileNotFoundError:
                    continue
                for name in names:
                    if name.startswith("."):
                        continue
                    base = name.partition(":")[0]
                    uid = by_base.get(base)
                    if uid is None:
                        complete = False
                        break
                    found.setdefault(uid, (f"{d}/{name}", base))
                if not complete:
                    break
            if complete:
                return ul, dict(sorted(found.items()))
        ul = UidList.sync(self.path)
        return ul, {uid: (os.fspath(mf), mf.base) for uid, mf in ul.files.items()}

    def _stamp(self) -> tuple:
        """What changes whenever the maildrop could have: the uidlist and both directories."""
        out = []
        for name in (UIDLIST, "new", "cur"):
            try:
                st = os.stat(os.path.join(self.path, name))
                out.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def _load(self) -> None:
        # A second login to an unchanged maildrop (fetchmail polling every few minutes) reuses
        # what this process read last time; any delivery, rename or expunge changes the stamp.
        stamp = self._stamp()
        snap = _snapshots.get(self.lock.key)
        if snap is not None and snap[0] == stamp:
            self.paths, self.sizes, self.uidls = list(snap[1]), snap[2], snap[3]
            return
        ul, files = self._listing()
        cache = self._read_cache()
        fresh: dict[str, int] = {}
        validity = ul.uidvalidity
        exts = ul.ext
        for uid, (path, base) in files.items():
            ext = exts.get(uid)
            size = uidl = None
            if ext:  # Dovecot's record extensions: W<vsize>, P<pop3 uidl>, G<guid>, ...
                fields = {f[:1]: f[1:] for f in ext.split(" ") if f}
                w = fields.get("W")
                size = int(w) if w and w.isdigit() else None
                uidl = fields.get("P") or None
            if size is None and ",W=" in base:
                size = _field(base, "W=")
            if size is None:
                size = cache.get(base)
                if size is None:
                    try:
                        with open(path, "rb") as f:
                            size = crlf_size(f.read())
                    except FileNotFoundError:
                        continue  # expunged since the listing: not part of this maildrop
                fresh[base] = size
            # Dovecot expands its default pop3_uidl_format %08Xu%08Xv in lower-case hex.
            self.paths.append(path)
            self.sizes.append(size)
            self.uidls.append(uidl or f"{uid:08x}{validity:08x}")
        if fresh.keys() != cache.keys():
            self._write_cache(fresh)
        if stamp == self._stamp():  # nothing changed while we read: worth remembering
            _snapshots[self.lock.key] = (stamp, list(self.paths), self.sizes, self.uidls)

    def _read_cache(self) -> dict[str, int]:
        try:
            with open(os.path.join(self.path, SIZE_CACHE), encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
        except OSError:
            return {}
        lines = text.split("\n")
        if lines[0] != _CACHE_MAGIC:
            return {}
        out = {}
        for ln in lines[1:]:
            size, _, base = ln.partition(" ")
            if base and size.isdigit():
                out[base] = int(size)
        return out

    def _write_cache(self, sizes: dict[str, int]) -> None:
        """Best effort, no fsync: a lost or stale cache is rebuilt from the messages."""
        final = os.path.join(self.path, SIZE_CACHE)
        tmp = f"{final}.{os.getpid()}.tmp"
        body = "".join(f"{s} {b}\n" for b, s in sizes.items())
        try:
            with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
                f.write(_CACHE_MAGIC + "\n" + body)
            os.replace(tmp, final)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass

    # --- the Maildrop protocol ------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.paths)

    def size(self, index: int) -> int:
        return self.sizes[index]

    def uidl(self, index: int) -> str:
        return self.uidls[index]

    def _relocate(self, index: int) -> str | None:
        """The file was renamed (flags changed by IMAP) or expunged: find it by base name."""
        base = os.path.basename(self.paths[index]).partition(":")[0]
        for sub in ("cur", "new"):
            d = os.path.join(self.path, sub)
            try:
                names = os.listdir(d)
            except OSError:
                continue
            for n in names:
                if n == base or n.startswith(base + ":"):
                    self.paths[index] = path = f"{d}/{n}"
                    return path
        return None

    def read(self, index: int) -> bytes:
        hint = self.sizes[index]  # the CRLF size: at least the file's, so one read() is enough
        try:
            data = _slurp(self.paths[index], hint)
        except FileNotFoundError:
            path = self._relocate(index)
            if path is None:
                raise MessageGone() from None
            try:
                data = _slurp(path, hint)
            except FileNotFoundError:
                raise MessageGone() from None
        return to_crlf(data)

    def commit(self, deleted, retrieved) -> None:
        """RFC 1939 6: remove the deleted messages (durably), mark the retrieved ones Seen."""
        failed: OSError | None = None
        dirs: set[str] = set()
        for i in deleted:
            for attempt in (0, 1):
                path = self.paths[i] if attempt == 0 else self._relocate(i)
                if path is None:
                    break  # already gone: expunged elsewhere, which is what was asked
                try:
                    os.unlink(path)
                    dirs.add(os.path.dirname(path))
                    break
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    failed = exc
                    break
        cur_prefix = os.path.join(self.path, "cur") + "/"
        for i in retrieved:
            path = self.paths[i]
            base, flags = parse_name(path.rpartition("/")[2])
            if "S" in flags and path.startswith(cur_prefix):
                continue  # already Seen (the usual case for a client that keeps mail)
            try:
                os.rename(path, os.path.join(self.path, "cur", name_with_flags(base, flags + "S")))
            except OSError:
                pass  # renamed or expunged meanwhile: the flag is a courtesy
        for d in dirs:
            try:
                fd = os.open(d, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                failed = failed or exc
        if failed is not None:
            raise failed

    def close(self) -> None:
        self.lock.release()


class MaildirBackend:
    """Logins against the users file; each user's maildrop is cfg.maildir_for(user).

    A successful password check is remembered for VERIFIED_TTL seconds, as Dovecot's
    auth_cache does, so a client polling every minute (fetchmail, getmail) does not pay for
    a deliberately slow hash each time. Only an HMAC of (user, stored hash, password) under a
    random per-process key is kept, and changing the password in the users file changes the
    stored hash, so the old password stops working at once. Failures are never cached.
    """

    VERIFIED_TTL = 300.0
    VERIFIED_MAX = 10000

    def __init__(self, cfg):
        self.cfg = cfg
        self._key = os.urandom(32)
        self._verified: dict[bytes, float] = {}
        self._mutex = threading.Lock()

    def _verify(self, users, user: str, password: str) -> bool:
        import hashlib
        import hmac
        import time

        rec = users.get(user)
        if rec is None:
            return users.verify(user, password)  # the dummy check: unknown users cost the same
        tag = hmac.new(self._key, "\0".join((rec.name, rec.password, password)).encode("utf-8", "surrogatepass"),
                       hashlib.sha256).digest()
        now = time.monotonic()
        with self._mutex:
            expires = self._verified.get(tag)
            if expires is not None and expires > now:
                return True
        if not users.verify(user, password):
            return False
        with self._mutex:
            if len(self._verified) >= self.VERIFIED_MAX:
                self._verified = {t: e for t, e in self._verified.items() if e > now}
                if len(self._verified) >= self.VERIFIED_MAX:
                    self._verified.clear()
            self._verified[tag] = now + self.VERIFIED_TTL
        return True

    def login(self, user: str, password: str) -> MaildirDrop:
        from mailtools.core.auth import load_users

        try:
            users = load_users(self.cfg)
        except OSError as exc:
            raise MaildropError(f"Cannot read the users file: {exc.strerror}") from None
        if not self._verify(users, user, password):
            raise AuthFailed()
        rec = users.get(user)
        try:
            path = self.cfg.maildir_for(rec.name if rec is not None else user)
        except ValueError:
            raise AuthFailed() from None
        return MaildirDrop.open(path)
