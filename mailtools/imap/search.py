"""SEARCH (RFC 3501 6.4.4): parse a search program into predicates, evaluate per message.

Predicates pull only what they need: flags and UIDs from the folder state, size, date and
headers from the cache, the whole file only for BODY/TEXT. Header keys first look for the
needle in the raw header bytes and only decode (RFC 2047) when it could match, so a SUBJECT
search over 10,000 cached headers takes milliseconds; work per message is linear in its size.
"""

from __future__ import annotations

import email.header
import re
import email.utils
from datetime import date, datetime

from mailtools.imap import mime
from mailtools.imap.parser import Cursor, ParseError, in_ranges, parse_seqset

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


def _header_has(ctx: Ctx, name: str | None, needle: str) -> bool:
    inf = ctx.info
    if inf is None:
        return False
    hdr = inf.header
    if needle.isascii() and b"=?" not in hdr and needle.lower().encode() not in hdr.lower():
        return False
    for n, v in mime.headers(hdr):
        if name is None or n == name:
            if not needle:
                return True
            if needle.lower() in decode_header(v).lower():
                return True
    return False


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
    v = mime.get(mime.headers(inf.header), "date")
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
    """A parsed search program; call matches(ctx)."""

    def __init__(self, cur: Cursor, session, *, uid_max: int, seq_max: int, keyword_letter):
        self.cur = cur
        self.session = session
        self.uid_max, self.seq_max = uid_max, seq_max
        self.keyword_letter = keyword_letter
        self.needs_order = False
        keys = [self.key(0)]
        while not cur.at_end():
            cur.sp()
            keys.append(self.key(0))
        self.pred = keys[0] if len(keys) == 1 else (lambda c, ks=keys: all(k(c) for k in ks))

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
            return lambda c: True
        if word in flagkeys:
            letter, want = flagkeys[word]
            return lambda c: (letter in c.msg.flags) == want
        if word in ("KEYWORD", "UNKEYWORD"):
            cur.sp()
            kw = cur.atom()
            letter = self.keyword_letter(kw)
            want = word == "KEYWORD"
            if letter is None:
                return lambda c: not want
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
        if word in ("FROM", "TO", "CC", "BCC", "SUBJECT"):
            s = self.astr()
            name = word.lower()
            return lambda c: _header_has(c, name, s)
        if word == "HEADER":
            field = self.astr().lower()
            s = self.astr()
            return lambda c: _header_has(c, field, s)
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
