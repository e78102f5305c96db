"""Users and passwords: Dovecot's passwd-file format, read, verified and rewritten safely.

One line per user, ``user@domain:{SCHEME}hash:uid:gid:gecos:home:shell:extra`` (mailtools writes
``user@domain:{ARGON2ID}$argon2id$...::::::``, as ``doveadm pw -s ARGON2ID`` would). Blank lines
and lines starting with '#' are comments. User names are full addresses, matched without regard
to case (Dovecot's ``%Lu``).

Verified schemes: ARGON2ID and ARGON2I (libsodium through PyNaCl for one-lane hashes, as
Dovecot does, else argon2-cffi), BLF-CRYPT (bcrypt), SHA512-CRYPT and
SHA256-CRYPT (crypt(3) "$6$"/"$5$", implemented here from the published specification because
the stdlib crypt module is deprecated), and a bare crypt string ("$6$...", "$2y$...",
"$argon2id$...") without a {SCHEME} prefix, as Dovecot's default CRYPT scheme reads it. Written:
ARGON2ID (default) or BLF-CRYPT.

Safety: comparisons are constant-time; an unknown user (or one whose line is broken) costs one
dummy verification with the scheme and cost most users of the file have (ARGON2ID for an empty
file), so timing does not tell which users exist. A malformed line is
reported with its line number (Users.problems) and skipped: everyone else still logs in.
Rewrites hold an flock on ``users.lock``, write a temporary file, fsync it, rename it over the
file and fsync the directory, so a crash leaves the old file or the new one, never a mix.
"""

from __future__ import annotations

import os

from mailtools.core.exitcodes import CantCreate, DataError, NoUser

WRITE_SCHEMES = ("ARGON2ID", "BLF-CRYPT")
VERIFY_SCHEMES = ("ARGON2ID", "ARGON2I", "BLF-CRYPT", "SHA512-CRYPT", "SHA256-CRYPT")
# Dovecot's own ARGON2 parameters (doveadm pw -s ARGON2ID): 64 MiB, 3 passes, 1 lane.
ARGON2_PARAMS = {"time_cost": 3, "memory_cost": 65536, "parallelism": 1}
BCRYPT_ROUNDS = 10


# -- crypt(3) SHA-256 / SHA-512 ("$5$", "$6$"), after Ulrich Drepper's specification -----------

_B64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Byte order of the final encoding, three bytes to four characters (the spec's table).
_ORDER_512 = [
    (0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4), (47, 5, 26), (6, 27, 48),
    (28, 49, 7), (50, 8, 29), (9, 30, 51), (31, 52, 10), (53, 11, 32), (12, 33, 54),
    (34, 55, 13), (56, 14, 35), (15, 36, 57), (37, 58, 16), (59, 17, 38), (18, 39, 60),
    (40, 61, 19), (62, 20, 41),
]
_ORDER_256 = [
    (0, 10, 20), (21, 1, 11), (12, 22, 2), (3, 13, 23), (24, 4, 14), (15, 25, 5), (6, 16, 26),
    (27, 7, 17), (18, 28, 8), (9, 19, 29),
]
ROUNDS_DEFAULT, ROUNDS_MIN, ROUNDS_MAX = 5000, 1000, 999_999_999


def _b64_24(b2: int, b1: int, b0: int, n: int) -> str:
    w = (b2 << 16) | (b1 << 8) | b0
    out = []
    for _ in range(n):
        out.append(_B64[w & 0x3F])
        w >>= 6
    return "".join(out)


def _repeat_to(block: bytes, length: int) -> bytes:
    return (block * (length // len(block) + 1))[:length]


def sha_crypt(password: bytes, setting: str) -> str:
    """crypt(3) for "$5$[rounds=N$]salt" and "$6$[rounds=N$]salt"; returns the full string."""
    import hashlib

    if setting.startswith("$6$"):
        new, size, prefix = hashlib.sha512, 64, "$6$"
    elif setting.startswith("$5$"):
        new, size, prefix = hashlib.sha256, 32, "$5$"
    else:
        raise ValueError("not a SHA-crypt setting")
    rest = setting[3:]
    rounds, custom = ROUNDS_DEFAULT, False
    if rest.startswith("rounds="):
        num, sep, rest2 = rest[7:].partition("$")
        if sep and num.isdigit():
            rounds = min(max(int(num), ROUNDS_MIN), ROUNDS_MAX)
            custom, rest = True, rest2
    salt = rest.split("$", 1)[0][:16].encode("utf-8", "surrogateescape")
    p, s, plen = password, salt, len(password)

    b = new(p + s + p).digest()
    a = new(p + s)
    n = plen
    while n > size:
        a.update(b)
        n -= size
    a.update(b[:n])
    n = plen
    while n > 0:
        a.update(b if n & 1 else p)
        n >>= 1
    a_sum = a.digest()

    dp = new(p * plen).digest() if plen else new(b"").digest()
    p_seq = _repeat_to(dp, plen) if plen else b""
    ds = new(s * (16 + a_sum[0])).digest()
    s_seq = _repeat_to(ds, len(s)) if s else b""

    c = a_sum
    for i in range(rounds):
        h = new(p_seq if i & 1 else c)
        if i % 3:
            h.update(s_seq)
        if i % 7:
            h.update(p_seq)
        h.update(c if i & 1 else p_seq)
        c = h.digest()

    if size == 64:
        enc = "".join(_b64_24(c[x], c[y], c[z], 4) for x, y, z in _ORDER_512)
        enc += _b64_24(0, 0, c[63], 2)
    else:
        enc = "".join(_b64_24(c[x], c[y], c[z], 4) for x, y, z in _ORDER_256)
        enc += _b64_24(0, c[31], c[30], 3)
    head = prefix + (f"rounds={rounds}$" if custom else "")
    return f"{head}{salt.decode('utf-8', 'surrogateescape')}${enc}"


# -- hashing and verifying ----------------------------------------------------------------


def _argon2():
    from argon2 import PasswordHasher

    return PasswordHasher(**ARGON2_PARAMS)


def hash_password(password: str, scheme: str = "ARGON2ID") -> str:
    """'{SCHEME}hash' ready for the users file."""
    scheme = scheme.upper()
    if scheme == "ARGON2ID":
        return "{ARGON2ID}" + _argon2().hash(password)
    if scheme == "BLF-CRYPT":
        import bcrypt

        raw = bcrypt.hashpw(_bcrypt_secret(password.encode("utf-8")), bcrypt.gensalt(BCRYPT_ROUNDS, b"2b"))
        # $2b$ and $2y$ are the same algorithm; "$2y$" is what doveadm writes and every reader takes.
        return "{BLF-CRYPT}$2y$" + raw.decode("ascii")[4:]
    raise ValueError(f"cannot write scheme {scheme} (use one of {', '.join(WRITE_SCHEMES)})")


def _bcrypt_secret(secret: bytes) -> bytes:
    # bcrypt uses the first 72 bytes of a password (crypt_blowfish, hence doveadm, cut there);
    # the bcrypt module refuses longer ones instead, so cut them the same way.
    return secret[:72]


def split_scheme(stored: str) -> tuple[str, str]:
    """'{SHA512-CRYPT}$6$..' -> ('SHA512-CRYPT', '$6$..'); a bare crypt string gets its scheme
    from its prefix (Dovecot's CRYPT). ('', stored) when unknown."""
    if stored.startswith("{"):
        end = stored.find("}")
        if end > 1:
            scheme, value = stored[1:end].upper(), stored[end + 1 :]
            if scheme == "CRYPT":  # what a plain `doveadm pw` writes: the hash's prefix tells
                return split_scheme(value)[0] or "CRYPT", value
            return scheme, value
        return "", stored
    for prefix, scheme in (("$argon2id$", "ARGON2ID"), ("$argon2i$", "ARGON2I"), ("$6$", "SHA512-CRYPT"),
                           ("$5$", "SHA256-CRYPT"), ("$2y$", "BLF-CRYPT"), ("$2b$", "BLF-CRYPT"),
                           ("$2a$", "BLF-CRYPT")):
        if stored.startswith(prefix):
            return scheme, stored
    return "", stored


def check_password(stored: str, password: str) -> bool:
    """Verify `password` against a '{SCHEME}hash' value; False for a wrong password or an
    unknown/broken hash (never raises for bad data)."""
    import hmac

    scheme, value = split_scheme(stored)
    secret = password.encode("utf-8", "surrogatepass")
    try:
        if scheme in ("ARGON2ID", "ARGON2I"):
            from argon2.exceptions import Argon2Error, InvalidHashError

            expect = "$argon2id$" if scheme == "ARGON2ID" else "$argon2i$"
            if not value.startswith(expect):
                return False
            fast = _sodium_verify(scheme, value, secret)
            if fast is not None:
                return fast
            try:
                return _argon2().verify(value, secret)
            except (Argon2Error, InvalidHashError, ValueError):
                return False
        if scheme == "BLF-CRYPT":
            import bcrypt

            if not value.startswith(("$2y$", "$2b$", "$2a$")):
                return False
            return bcrypt.checkpw(_bcrypt_secret(secret), value.encode("ascii"))
        if scheme in ("SHA512-CRYPT", "SHA256-CRYPT"):
            want = "$6$" if scheme == "SHA512-CRYPT" else "$5$"
            if not value.startswith(want):
                return False
            return hmac.compare_digest(sha_crypt(secret, value).encode(), value.encode())
    except (ValueError, UnicodeError, TypeError):
        return False
    return False


def _sodium_verify(scheme: str, value: str, secret: bytes) -> bool | None:
    """An Argon2 check through libsodium (PyNaCl) for the hashes it takes whole: version 19, one
    lane (what doveadm and hash_password() write), at least 3 passes for Argon2i; None for any
    other (more lanes: libsodium has one; or no PyNaCl): argon2-cffi checks those. Same answer,
    ~2/3 of the CPU: Dovecot's 64 MiB, 3 passes took 0.18 s against argon2-cffi's 0.28 s
    here (Dovecot itself verifies with libsodium). The dummy check for unknown users has the
    same parameters, so it takes the same path and time."""
    parts = value.split("$")  # ['', 'argon2id', 'v=19', 'm=65536,t=3,p=1', salt, hash]
    if len(parts) != 6 or parts[2] != "v=19":
        return None
    # libsodium takes a string of at most 127 characters (PyNaCl raises ValueError for more)
    # and a hash of 16 bytes or more (22 base64 characters); Argon2 allows longer strings
    # (a 64-byte hash, a 48-byte salt) and hashes down to 4 bytes, which it would refuse as
    # a wrong password: argon2-cffi checks those
    if len(value) > 127 or len(parts[5]) < 22:
        return None
    try:
        params = dict(kv.split("=", 1) for kv in parts[3].split(","))
        if set(params) != {"m", "t", "p"} or params["p"] != "1" or int(params["t"]) < (3 if scheme == "ARGON2I" else 1):
            return None
        if not 8 <= int(params["m"]) <= 1 << 22:  # 8 KiB .. 4 GiB
            return None
    except ValueError:
        return None
    try:
        from nacl.exceptions import InvalidkeyError
        from nacl.pwhash import argon2i, argon2id
    except ImportError:
        return None
    try:
        return (argon2id if scheme == "ARGON2ID" else argon2i).verify(value.encode("ascii"), secret)
    except InvalidkeyError:  # a wrong password (libsodium tells nothing else apart)
        return False


_dummies: dict[str, str] = {}


def _cost_key(stored: str) -> str:
    """The part of a hash that sets its cost: '{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1',
    '{BLF-CRYPT}$2y$05', '{SHA512-CRYPT}$6$rounds=5000'."""
    scheme, value = split_scheme(stored)
    parts = value.split("$")
    if scheme in ("ARGON2ID", "ARGON2I") and len(parts) > 3:
        # and the salt's and the hash's lengths (base64 characters) when not the usual 22
        # and 43: they decide which library verifies it (see _sodium_verify), at its cost
        sizes = [len(p) for p in parts[4:6]]
        tail = "$%d$%d" % tuple(sizes) if len(sizes) == 2 and sizes != [22, 43] else ""
        return "{%s}%s%s" % (scheme, "$".join(parts[:4]), tail)
    if scheme == "BLF-CRYPT" and len(parts) > 2 and parts[2].isdigit():
        return "{BLF-CRYPT}$2y$%02d" % min(max(int(parts[2]), 4), 31)
    if scheme in ("SHA512-CRYPT", "SHA256-CRYPT") and len(parts) > 2:
        rounds = parts[2] if parts[2].startswith("rounds=") else f"rounds={ROUNDS_DEFAULT}"
        return "{%s}$%s$%s" % (scheme, parts[1], rounds)
    return "{ARGON2ID}"


def _make_dummy(key: str) -> str:
    secret = os.urandom(12).hex()
    scheme, value = split_scheme(key)
    if scheme in ("ARGON2ID", "ARGON2I"):
        from argon2 import PasswordHasher, Type

        try:
            parts = value.split("$")
            params = dict(kv.split("=") for kv in parts[3].split(","))
            salt, out = (int(n) * 3 // 4 for n in parts[4:6]) if len(parts) == 6 else (16, 32)
            ph = PasswordHasher(time_cost=min(int(params["t"]), 100), memory_cost=min(int(params["m"]), 4 << 20),
                                parallelism=min(int(params["p"]), 64), salt_len=min(max(salt, 8), 1024),
                                hash_len=min(max(out, 4), 1024), type=Type.ID if scheme == "ARGON2ID" else Type.I)
            return "{%s}%s" % (scheme, ph.hash(secret))
        except (KeyError, ValueError, IndexError):
            return hash_password(secret)
    if scheme == "BLF-CRYPT":
        import bcrypt

        raw = bcrypt.hashpw(secret.encode(), bcrypt.gensalt(int(value.split("$")[2]), b"2b"))
        return "{BLF-CRYPT}$2y$" + raw.decode("ascii")[4:]
    if scheme in ("SHA512-CRYPT", "SHA256-CRYPT"):
        return "{%s}%s" % (scheme, sha_crypt(secret.encode(), f"{value}${os.urandom(8).hex()}"))
    return hash_password(secret)


def dummy_verify(password: str, like: str = "{ARGON2ID}") -> None:
    """Spend what verifying a hash like `like` costs (same scheme and cost parameters), so an
    unknown user takes as long as a known one with a wrong password."""
    key = _cost_key(like)
    dummy = _dummies.get(key)
    if dummy is None:
        dummy = _dummies[key] = _make_dummy(key)
    check_password(dummy, password)


# -- the users file -----------------------------------------------------------------------


class UserRecord:
    __slots__ = ("name", "password", "rest", "lineno")

    def __init__(self, name: str, password: str, rest: str, lineno: int):
        self.name = name  # as written in the file
        self.password = password  # '{SCHEME}hash'
        self.rest = rest  # ':uid:gid:gecos:home:shell:extra' kept as it was
        self.lineno = lineno

    @property
    def scheme(self) -> str:
        return split_scheme(self.password)[0] or "UNKNOWN"

    def line(self) -> str:
        return f"{self.name}:{self.password}{self.rest}"


def _key(user: str) -> str:
    return user.strip().lower()


def check_username(user: str) -> str:
    """The canonical (lower-case) user name for an address; raises DataError (65)."""
    from mailtools.core.address import split_address

    user = user.strip()
    if not user or any(c in user for c in ":\r\n\0\t ") or any(ord(c) < 32 for c in user):
        raise DataError(f"not a usable user name: {user!r}")
    try:
        local, domain = split_address(user)
    except ValueError:
        raise DataError(f"not a full address (user@domain): {user!r}") from None
    if user.startswith("<") or "/" in local or "/" in domain or local in (".", "..") \
            or local.startswith("-") or not _is_host_name(domain):
        raise DataError(f"not a usable address for a mailbox: {user!r}")
    return f"{local}@{domain}".lower()


def _is_host_name(domain: str) -> bool:
    """A domain a mailbox can live under: dot-separated labels of letters, digits and inner
    hyphens (non-ASCII letters allowed: IDN U-labels), no empty label. A single label is fine
    (`localhost`, or a host called `mybox` that `serve` puts in local_domains)."""
    if not domain or len(domain) > 253:
        return False
    for label in domain.split("."):
        if not label or len(label) > 63 or label[0] == "-" or label[-1] == "-":
            return False
        if not all(c.isalnum() or c == "-" for c in label):
            return False
    return True


class Users:
    """The users file at `path`, read when created. Missing file: no users."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.lines: list[str] = []
        self.records: dict[str, UserRecord] = {}
        self.problems: list[str] = []
        self.typical = "{ARGON2ID}"  # the hash kind a dummy verification imitates
        self.stamp = None
        self._read()

    def _read(self) -> None:
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                raw = f.read()
        except FileNotFoundError:
            self.stamp = None
            self.lines, self.records, self.problems = [], {}, []
            return
        self.stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        self._parse(raw.decode("utf-8", "surrogateescape"))

    def _parse(self, text: str) -> None:
        # Lines end at LF only, as Dovecot reads them (str.splitlines would also split at VT,
        # FF, U+2028... and a rewrite would then change those lines); a CR before it is ignored.
        self.lines = text.split("\n")
        if self.lines and self.lines[-1] == "":
            self.lines.pop()
        self.records, self.problems = {}, []
        self.typical = "{ARGON2ID}"
        for n, raw in enumerate(self.lines, start=1):
            line = raw[:-1] if raw.endswith("\r") else raw
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            name, sep, rest = line.partition(":")
            password, colon, tail = rest.partition(":")
            tail = colon + tail
            why = None
            if not sep or not name or name != name.strip():
                why = "malformed line (expected user@domain:{SCHEME}hash::::::)"
            elif "@" not in name:
                why = f"user name {name!r} is not a full address"
            elif not password:
                why = f"no password for {name}"
            elif not split_scheme(password)[0]:
                why = f"unknown password scheme for {name}"
            elif _key(name) in self.records:
                why = f"duplicate user {name} (the first one, line {self.records[_key(name)].lineno}, is used)"
            if why:
                self.problems.append(f"{self.path}:{n}: {why}")
                continue
            rec = UserRecord(name, password, tail, n)
            if rec.scheme not in VERIFY_SCHEMES:
                # kept (so `user passwd` can fix it), but it cannot log in
                self.problems.append(f"{self.path}:{n}: password scheme {rec.scheme} of {name} is not supported")
            self.records[_key(name)] = rec
        costs: dict[str, int] = {}
        for rec in self.records.values():
            if rec.scheme in VERIFY_SCHEMES:
                k = _cost_key(rec.password)
                costs[k] = costs.get(k, 0) + 1
        if costs:
            # unknown users cost what most known users cost
            self.typical = max(costs, key=lambda k: costs[k])

    # reading ---------------------------------------------------------------------------

    def exists(self, user: str) -> bool:
        return _key(user) in self.records

    def list(self) -> list[str]:
        """User names in file order."""
        return [r.name for r in sorted(self.records.values(), key=lambda r: r.lineno)]

    def canonical(self, user: str) -> str | None:
        """The name as the file spells it ('Alice@Example.test' -> 'alice@example.test'), or
        None: use it for the Maildir path so every spelling of an address finds one mailbox."""
        rec = self.records.get(_key(user))
        return rec.name if rec else None

    def get(self, user: str) -> UserRecord | None:
        return self.records.get(_key(user))

    def verify(self, user: str, password: str) -> bool:
        """True when `password` is right for `user`. Unknown users and broken or unsupported
        hashes cost one dummy verification (like the file's typical hash) and give False."""
        rec = self.records.get(_key(user)) if isinstance(user, str) else None
        if rec is None or not isinstance(password, str) or not password:
            dummy_verify(password if isinstance(password, str) else "", self.typical)
            return False
        scheme = rec.scheme
        if scheme not in VERIFY_SCHEMES:
            dummy_verify(password, self.typical)
            return False
        return check_password(rec.password, password)

    # writing (each call re-reads under the lock, changes one line, writes atomically) ---------

    def add(self, user: str, password: str, scheme: str = "ARGON2ID") -> str:
        """Add a user (canonical name returned); raises CantCreate (73) if it exists."""
        name = check_username(user)
        stored = hash_password(password, scheme)

        def change() -> None:
            if _key(name) in self.records:
                raise CantCreate(f"user {name} already exists")
            self.lines.append(f"{name}:{stored}::::::")

        self._rewrite(change)
        return name

    def set_password(self, user: str, password: str, scheme: str = "ARGON2ID") -> None:
        """Change a user's password; raises NoUser (67) if there is no such user."""
        stored = hash_password(password, scheme)

        def change() -> None:
            rec = self.records.get(_key(user))
            if rec is None:
                raise NoUser(f"no such user: {user}")
            rec.password = stored
            self.lines[rec.lineno - 1] = rec.line()

        self._rewrite(change)

    def delete(self, user: str) -> None:
        """Remove a user's line; raises NoUser (67) if there is no such user."""

        def change() -> None:
            rec = self.records.get(_key(user))
            if rec is None:
                raise NoUser(f"no such user: {user}")
            del self.lines[rec.lineno - 1]

        self._rewrite(change)

    def _rewrite(self, change) -> None:
        import fcntl

        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        lock_fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            self._read()  # someone may have changed it since we read it
            change()
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                st = None
            mode = st.st_mode & 0o7777 if st else 0o600
            tmp = f"{self.path}.tmp.{os.getpid()}"
            data = ("\n".join(self.lines) + "\n").encode("utf-8", "surrogateescape") if self.lines else b""
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
            try:
                os.fchmod(fd, mode)
                if st and (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                    # keep the owner too: servers running as another user must still read it
                    try:
                        os.fchown(fd, st.st_uid, st.st_gid)
                    except PermissionError:
                        pass
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                os.unlink(tmp)
                raise
            os.close(fd)
            from mailtools.core.maildir import _fsync_dir

            os.rename(tmp, self.path)
            _fsync_dir(directory)
            self._read()
        finally:
            os.close(lock_fd)


_cache: dict[str, Users] = {}


def forget_users() -> None:
    """Make load_users() read the users file again at its next call, even one edited in place
    with the same size and time stamp (a server's SIGHUP)."""
    _cache.clear()


def load_users(cfg) -> Users:
    """The users file of this configuration, re-read whenever it changed on disk (cheap stat
    on every call, so a server sees `mailtools user add` at the next login). New problems are
    logged once per reading."""
    path = os.fspath(cfg.users_file)
    users = _cache.get(path)
    try:
        st = os.stat(path)
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
    except FileNotFoundError:
        stamp = None
    if users is None or users.stamp != stamp:
        users = Users(path)
        _cache[path] = users
        if users.problems:
            import logging

            log = logging.getLogger("mailtools.auth")
            for p in users.problems:
                log.warning("%s", p)
    return users


def decode_sasl_plain(b64: str) -> tuple[str, str, str]:
    """RFC 4616 PLAIN: base64 of authzid NUL authcid NUL passwd -> (authzid, authcid, passwd).
    Raises ValueError for bad base64, a wrong shape, an empty user or password, or non-UTF-8."""
    import binascii

    try:
        raw = binascii.a2b_base64(b64.strip().encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeError, ValueError):
        raise ValueError("not valid base64") from None
    parts = raw.split(b"\0")
    if len(parts) != 3:
        raise ValueError("PLAIN needs authzid NUL authcid NUL password")
    if any(len(p) > 255 for p in parts):
        raise ValueError("credentials too long")  # RFC 4616 2: at most 255 octets each
    try:
        authzid, authcid, password = (p.decode("utf-8") for p in parts)
    except UnicodeDecodeError:
        raise ValueError("PLAIN credentials are not UTF-8") from None
    if not authcid or not password:
        raise ValueError("empty user name or password")
    return authzid, authcid, password
