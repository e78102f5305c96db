"""SEARCH (RFC 3501 6.4.4): parse a search program into predicates, evaluate per message.

Predicates pull only what they need: flags and UIDs from the folder state, size, date and
headers from the cache, the whole file only for BODY/TEXT. A header key compares with the
field's decoded (RFC 2047), lower-cased values, which the folder remembers per field name, so
a second SUBJECT search over 10,000 messages is a dictionary walk; work per message is linear
in its size.

A search runs as a generator (`Program.run`) that yields every SLICE seconds, so the session
can pause it and let the server answer other connections during a long BODY/TEXT search.
The keys of the top-level AND that need no file (flags, UIDs, header fields) filter the whole
candidate list first, in one tight loop each; the rest are evaluated per message.
"""

from __future__ import annotations

import email.header
import re
import email.utils
import time
from datetime import date, datetime

from mailtools.imap import mime
from mailtools.imap.parser import Cursor, ParseError, in_ranges, parse_seqset

SLICE = 0.01  # seconds of work between two yields of Program.run
_MISSING = object()
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


class BadCharset(Exception):
    pass


def parse_date(s: str) -> date:
    """date = day-month-year ('1-Feb-1994'), RFC 3501 9."""
    try:
        d, m, y = s.split("-")
        return date(int(y), MONTHS.index(m.capitalize()) + 1, int(d))
    except (ValueError, IndexError):
        raise ParseError(f"bad date: {s!r}") from None


def decode_header(v: bytes) -> str:
    s = v.decode("utf-8", "replace")
    if "=?" not in s:
        return s
    try:
        out = []
        for part, cs in email.header.decode_header(s):
            if isinstance(part, bytes):
                out.append(part.decode(cs or "ascii", "replace") if cs else part.decode("latin-1"))
            else:
                out.append(part)
        return "".join(out)
    except (LookupError, ValueError, email.errors.HeaderParseError):
        return s


class Ctx:
    """Per-message evaluation context: loads the cached info and the file only when asked."""

    __slots__ = ("folder", "msg", "seq", "recent", "_info", "_data")

    def __init__(self, folder, msg, seq, recent):
        self.folder, self.msg, self.seq, self.recent = folder, msg, seq, recent
        self._info = self._data = None

    @property
    def info(self):
        if self._info is None:
            self._info = self.folder.info_for(self.msg)
        return self._info

    @property
    def data(self) -> bytes:
        if self._data is None:
            self._data = self.folder.read(self.msg) or b""
        return self._data


def field_text(folder, m, name: str):
    """The values of header field `name` of message m as SEARCH compares them: decoded and
    lower-cased; one str, a tuple when the field repeats, None when it is absent."""
    idx = folder.field_index(name)
    v = idx.get(m.base, _MISSING)
    if v is _MISSING:
        inf = folder.info_for(m)
        if inf is None:
            return None  # expunged meanwhile: nothing to remember
        vals = [decode_header(x).lower() for x in mime.field_values(inf.header, name)]
        v = idx[m.base] = (vals[0] if len(vals) == 1 else tuple(vals)) if vals else None
    return v


def _has(v, needle: str) -> bool:
    """needle (lower case) in one of the values; "" matches a field that is present."""
    if v is None:
        return False
    if type(v) is str:
        return needle in v
    return any(needle in x for x in v)


def _header_has(ctx: Ctx, name: str, needle: str) -> bool:
    return _has(field_text(ctx.folder, ctx.msg, name), needle.lower())


def _header_filter(name: str, needle: str):
    """The batch form of _header_has: (folder, [(seq, Msg)]) -> the matching ones."""
    nl = needle.lower()

    def run(folder, items):
        get = folder.field_index(name).get
        out = []
        clock = time.monotonic
        until = clock() + SLICE
        for i, it in enumerate(items):
            v = get(it[1].base, _MISSING)
            if v is _MISSING:
                v = field_text(folder, it[1], name)
                if not i & 15 and clock() > until:
                    yield  # building the index may read every file of a cold folder
                    until = clock() + SLICE
            if v is not None and (nl in v if type(v) is str else any(nl in x for x in v)):
                out.append(it)
        return out

    return run


def _msg_filter(test):
    """The batch form of a key that looks only at the Msg (flags, UID): test(Msg) -> bool."""

    def run(folder, items):
        return [it for it in items if test(it[1])]
        yield  # a generator like the others; this one never needs to pause

    return run


_needles: dict[str, "re.Pattern"] = {}


def _needle_re(needle: str):
    rx = _needles.get(needle)
    if rx is None:
        if len(_needles) > 64:
            _needles.clear()
        rx = _needles[needle] = re.compile(re.escape(needle.encode("ascii")), re.I)
    return rx


def _body_text(data: bytes) -> bytes:
    """The body with base64/quoted-printable text parts decoded (for BODY/TEXT searches)."""
    low = data.lower()
    if b"content-transfer-encoding" not in low or (b"base64" not in low and b"quoted-printable" not in low):
        return mime.split(data)[1]
    import base64
    import quopri

    root = mime.parse(data)
    out = []
    stack = [root]
    while stack:
        p = stack.pop()
        if p.children:
            stack.extend(reversed(p.children))
            continue
        if p.message is not None:
            stack.append(p.message)
            out.append(p.message.header)
            continue
        enc = (mime.get(p.hdrs, "content-transfer-encoding") or b"").strip().lower()
        body = p.body
        try:
            if enc == b"base64" and p.type == b"text":
                body = base64.b64decode(body, validate=False)
            elif enc == b"quoted-printable":
                body = quopri.decodestring(body)
        except Exception:  # malformed encodings: search the raw text
            pass
        out.append(body)
    return b"\n".join(out)


def _contains(hay: bytes, needle: str) -> bool:
    if not needle:
        return True
    nb = needle.encode("utf-8")
    if needle.isascii():
        return nb.lower() in hay.lower()
    return needle.casefold() in hay.decode("utf-8", "replace").casefold()


def _sent_date(ctx: Ctx) -> date | None:
    inf = ctx.info
    if inf is None:
        return None
    vals = mime.field_values(inf.header, "date")
    v = vals[0] if vals else None
    if not v:
        return None
    try:
        dt = email.utils.parsedate_to_datetime(v.decode("latin-1"))
        return dt.date()
    except (TypeError, ValueError, IndexError):
        return None


def _idate(ctx: Ctx) -> date | None:
    inf = ctx.info
    return None if inf is None else datetime.fromtimestamp(inf.idate).date()


class Program:
    """A parsed search program; `run(...)` evaluates it over a mailbox."""

    def __init__(self, cur: Cursor, session, *, uid_max: int, seq_max: int, keyword_letter):
        self.cur = cur
        self.session = session
        self.uid_max, self.seq_max = uid_max, seq_max
        self.keyword_letter = keyword_letter
        self.needs_order = False
        self.filters = []  # batch forms of top-level keys, (folder, items) -> generator
        keys = []
        while True:
            self.last_filter = None
            k = self.key(0)
            if self.last_filter is not None:
                self.filters.append(self.last_filter)
            else:
                keys.append(k)
            if cur.at_end():
                break
            cur.sp()
        self.rest = keys  # the keys without a batch form, evaluated per message by pred
        self.pred = (lambda c: True) if not keys else keys[0] if len(keys) == 1 else (
            lambda c, ks=keys: all(k(c) for k in ks))

    def run(self, folder, items: list, recent: set):
        """Generator: yields now and then (every SLICE seconds of work), returns the matching
        [(seq, Msg)] of items in their order."""
        for f in self.filters:
            items = yield from f(folder, items)
        if not self.rest:
            return items
        pred, clock = self.pred, time.monotonic
        hits = []
        until = clock() + SLICE
        for i, (seq, m) in enumerate(items):
            if pred(Ctx(folder, m, seq, recent)):
                hits.append((seq, m))
            if not i & 15 and clock() > until:
                yield
                until = clock() + SLICE
        return hits

    def _filter(self, fn):
        """Offer the batch form of the key being returned (used when it is top-level)."""
        self.last_filter = fn

    def astr(self) -> str:
        self.cur.sp()
        raw = self.cur.astring()
        return raw.decode("utf-8", "replace")

    def key(self, depth: int):
        cur = self.cur
        if depth > cur.max_depth:
            raise ParseError("search program nested too deep")
        if cur.peek() == b"(":
            cur.expect(b"(")
            keys = [self.key(depth + 1)]
            while not cur.take(b")"):
                cur.sp()
                keys.append(self.key(depth + 1))
            return lambda c, ks=keys: all(k(c) for k in ks)
        if cur.peek() in b"0123456789*$" and cur.peek():
            ranges = parse_seqset(cur.seqset(), self.seq_max)
            return lambda c: in_ranges(c.seq, ranges)
        word = cur.atom().upper()
        flagkeys = {
            "ANSWERED": ("R", True), "DELETED": ("T", True), "DRAFT": ("D", True), "FLAGGED": ("F", True),
            "SEEN": ("S", True), "UNANSWERED": ("R", False), "UNDELETED": ("T", False),
            "UNDRAFT": ("D", False), "UNFLAGGED": ("F", False), "UNSEEN": ("S", False),
        }
        if word == "ALL":
            if depth == 0:
                self._filter(_msg_filter(lambda m: True))
            return lambda c: True
        if word in flagkeys:
            letter, want = flagkeys[word]
            if depth == 0:
                self._filter(_msg_filter(lambda m: (letter in m.flags) == want))
            return lambda c: (letter in c.msg.flags) == want
        if word in ("KEYWORD", "UNKEYWORD"):
            cur.sp()
            kw = cur.atom()
            letter = self.keyword_letter(kw)
            want = word == "KEYWORD"
            if letter is None:
                return lambda c: not want
            if depth == 0:
                self._filter(_msg_filter(lambda m: (letter in m.flags) == want))
            return lambda c: (letter in c.msg.flags) == want
        if word == "NEW":
            return lambda c: c.msg.uid in c.recent and "S" not in c.msg.flags
        if word == "OLD":
            return lambda c: c.msg.uid not in c.recent
        if word == "RECENT":
            return lambda c: c.msg.uid in c.recent
        if word == "NOT":
            cur.sp()
            k = self.key(depth + 1)
            return lambda c: not k(c)
        if word == "OR":
            cur.sp()
            a = self.key(depth + 1)
            cur.sp()
            b = self.key(depth + 1)
            return lambda c: a(c) or b(c)
        if word == "UID":
            cur.sp()
            ranges = parse_seqset(cur.seqset(), self.uid_max)
            if depth == 0:
                self._filter(_msg_filter(lambda m: in_ranges(m.uid, ranges)))
            return lambda c: in_ranges(c.msg.uid, ranges)
        if word in ("LARGER", "SMALLER"):
            cur.sp()
            n = cur.number()
            if word == "LARGER":
                return lambda c: c.info is not None and c.info.size > n
            return lambda c: c.info is not None and c.info.size < n
        if word in ("BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"):
            d = parse_date(self.astr())
            get = _sent_date if word.startswith("SENT") else _idate
            op = word[4:] if word.startswith("SENT") else word
            if op == "BEFORE":
                return lambda c: (x := get(c)) is not None and x < d
            if op == "ON":
                return lambda c: (x := get(c)) is not None and x == d
            return lambda c: (x := get(c)) is not None and x >= d
        if word in ("FROM", "TO", "CC", "BCC", "SUBJECT", "HEADER"):
            name = self.astr().lower() if word == "HEADER" else word.lower()
            s = self.astr()
            if depth == 0:
                self._filter(_header_filter(name, s))
            return lambda c: _header_has(c, name, s)
        if word == "BODY":
            s = self.astr()
            return lambda c: _contains(_body_text(c.data), s)
        if word == "TEXT":
            s = self.astr()
            return lambda c: _contains(c.data, s) or _contains(_body_text(c.data), s)
        raise ParseError(f"unknown search key {word}")


def parse_program(cur: Cursor, session, **kw) -> Program:
    if cur.take(b"CHARSET "):
        cs = cur.astring().decode("ascii", "replace").upper()
        if cs not in ("UTF-8", "US-ASCII"):
            raise BadCharset(cs)
        cur.sp()
    return Program(cur, session, **kw)
