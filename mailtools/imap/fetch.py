"""FETCH (RFC 3501 6.4.5, 7.4.2): attribute parsing and response items.

The cheap items (UID, FLAGS, RFC822.SIZE, INTERNALDATE, ENVELOPE, header sections) come from
the folder's cache; the file is read only for body sections and BODYSTRUCTURE when not cached.
"""

from __future__ import annotations

import re
import time

from mailtools.imap import mime
from mailtools.imap.parser import Cursor, ParseError

SIMPLE = {"UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODYSTRUCTURE", "BODY",
          "RFC822", "RFC822.HEADER", "RFC822.TEXT"}
MACROS = {
    "ALL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"],
    "FAST": ["FLAGS", "INTERNALDATE", "RFC822.SIZE"],
    "FULL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"],
}


class Att:
    __slots__ = ("kind", "peek", "parts", "spec", "fields", "partial", "label")

    def __init__(self, kind, peek=False, parts=(), spec="", fields=(), partial=None, label=""):
        self.kind, self.peek, self.parts, self.spec = kind, peek, list(parts), spec
        self.fields, self.partial, self.label = list(fields), partial, label

    @property
    def sets_seen(self) -> bool:
        return (self.kind == "SECTION" and not self.peek) or self.kind in ("RFC822", "RFC822.TEXT")

    @property
    def needs_data(self) -> bool:
        if self.kind in ("RFC822", "RFC822.TEXT"):
            return True
        if self.kind == "SECTION":
            return self.parts or self.spec not in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT")
        return False


_section_re = re.compile(rb"((?:[1-9][0-9]*\.)*[1-9][0-9]*)?\.?(HEADER\.FIELDS\.NOT|HEADER\.FIELDS|HEADER|TEXT|MIME)?", re.I)


def _one(cur: Cursor) -> list[Att]:
    word = cur._re(re.compile(rb"[A-Za-z0-9.]+"), "fetch attribute").decode().upper()
    if word in MACROS:
        return [Att(k) for k in MACROS[word]]
    if word in ("BODY", "BODY.PEEK") and cur.peek() == b"[":
        cur.expect(b"[")
        m = _section_re.match(cur.data, cur.pos)
        cur.pos = m.end()
        parts = [int(x) for x in m.group(1).split(b".")] if m.group(1) else []
        spec = (m.group(2) or b"").decode().upper()
        if spec == "MIME" and not parts:
            raise ParseError("MIME needs a part number")
        fields: list[str] = []
        if spec.startswith("HEADER.FIELDS"):
            cur.sp()
            fields = [f.decode("ascii", "replace") for f in cur.paren_list(lambda c: c.astring())]
            if not fields:
                raise ParseError("empty header list")
        cur.expect(b"]")
        partial = None
        if cur.take(b"<"):
            start = cur.number()
            cur.expect(b".")
            length = cur.nz_number()
            cur.expect(b">")
            partial = (start, length)
        sect = ".".join(str(p) for p in parts)
        if spec:
            sect = f"{sect}.{spec}" if sect else spec
        if fields:
            sect += " (" + " ".join(f.upper() for f in fields) + ")"
        return [Att("SECTION", word == "BODY.PEEK", parts, spec, [f.lower() for f in fields], partial, f"BODY[{sect}]")]
    if word in SIMPLE:
        return [Att(word)]
    raise ParseError(f"unknown fetch attribute {word}")


_WORD = re.compile(rb"[A-Za-z0-9.]+")


def _listed(cur: Cursor) -> list[Att]:
    """One fetch-att inside '(...)': the macros ALL, FULL and FAST stand alone (RFC 3501 9)."""
    m = _WORD.match(cur.data, cur.pos)
    if m and m.group(0).decode().upper() in MACROS:
        raise ParseError("ALL, FULL and FAST are not allowed in a list")
    return _one(cur)


def parse_atts(cur: Cursor) -> list[Att]:
    if cur.peek() == b"(":
        groups = cur.paren_list(_listed)
        atts = [a for g in groups for a in g]
    else:
        atts = _one(cur)
    if not atts:
        raise ParseError("empty fetch attribute list")
    return atts


_atts_cache: dict[bytes, tuple] = {}


def parse_atts_cached(cur: Cursor) -> list[Att]:
    """parse_atts, remembered by the command's remaining text when that is all of it: a client
    downloading a mailbox sends the same attribute list once per message (Att objects are
    never changed after parsing, so they can be shared)."""
    rest = cur.data[cur.pos :]
    got = _atts_cache.get(rest)
    if got is not None:
        cur.pos = len(cur.data)
        return list(got)
    atts = parse_atts(cur)
    if cur.at_end() and len(rest) <= 512:
        if len(_atts_cache) >= 256:
            _atts_cache.clear()
        _atts_cache[rest] = tuple(atts)
    return atts


_date_cache: dict[int, bytes] = {}


def internaldate(ts: int) -> bytes:
    s = _date_cache.get(ts)
    if s is None:
        t = time.localtime(ts)
        off = t.tm_gmtoff // 60
        sign = "+" if off >= 0 else "-"
        off = abs(off)
        s = b'"' + (time.strftime("%d-%b-%Y %H:%M:%S", t) + f" {sign}{off // 60:02d}{off % 60:02d}").encode() + b'"'
        if len(_date_cache) > 100000:
            _date_cache.clear()
        _date_cache[ts] = s
    return s


def section_bytes(att: Att, data: bytes | None, header: bytes | None) -> bytes | None:
    """The bytes of BODY[section] (before <partial>); None when the part does not exist."""
    spec, parts = att.spec, att.parts
    if not parts:
        if spec == "HEADER":
            return header
        if spec.startswith("HEADER.FIELDS"):
            return mime.header_fields(header, set(att.fields), spec.endswith(".NOT"))
        if spec == "TEXT":
            return mime.split(data)[1]
        return data
    root = mime.parse(data)
    p = mime.find_part(root, parts)
    if p is None:
        return b""
    if spec == "MIME":
        return p.header
    if spec in ("HEADER", "TEXT") or spec.startswith("HEADER.FIELDS"):
        if p.message is None:
            return b""
        p = p.message
        if spec == "HEADER":
            return p.header
        if spec == "TEXT":
            return p.body
        return mime.header_fields(p.header, set(att.fields), spec.endswith(".NOT"))
    if p.message is not None and p.type == b"message":
        return p.body
    return p.body


def render(folder, msg, seq: int, atts: list[Att], flags: bytes, with_uid: bool) -> bytes | None:
    """One '* seq FETCH (...)' line (with CRLF); None when the message is gone. Joined once:
    a message body is copied into the line and nowhere else."""
    out: list[bytes] = [b"* %d FETCH (" % seq]
    add = out.append
    if with_uid and not any(a.kind == "UID" for a in atts):
        add(b"UID %d" % msg.uid)
    info = None
    data = None
    for a in atts:
        if len(out) > 1:
            add(b" ")
        k = a.kind
        if k == "UID":
            add(b"UID %d" % msg.uid)
        elif k == "FLAGS":
            out += (b"FLAGS (", flags, b")")
        elif k in ("RFC822.SIZE", "INTERNALDATE", "ENVELOPE", "RFC822.HEADER"):
            if info is None:
                info = folder.info_for(msg)
                if info is None:
                    return None
            if k == "RFC822.SIZE":
                add(b"RFC822.SIZE %d" % info.size)
            elif k == "INTERNALDATE":
                out += (b"INTERNALDATE ", internaldate(info.idate))
            elif k == "ENVELOPE":
                out += (b"ENVELOPE ", folder.envelope(msg, info))
            else:
                out += (b"RFC822.HEADER {%d}\r\n" % len(info.header), info.header)
        elif k in ("BODYSTRUCTURE", "BODY"):
            s = folder.structure(msg, k == "BODYSTRUCTURE", data)
            if s is None:
                return None
            out += (k.encode(), b" ", s)
        else:
            if data is None and a.needs_data:
                data = folder.read(msg)
                if data is None:
                    return None
            if k == "RFC822":
                label, body = b"RFC822", data
            elif k == "RFC822.TEXT":
                label, body = b"RFC822.TEXT", mime.split(data)[1]
            else:
                header = None
                if not a.parts and a.spec.startswith("HEADER"):  # BODY[] and BODY[TEXT] need no split
                    if data is not None:
                        header = mime.split(data)[0]
                    else:
                        if info is None:
                            info = folder.info_for(msg)
                            if info is None:
                                return None
                        header = info.header
                if not a.parts and a.spec == "HEADER.FIELDS" and data is None:
                    body = folder.header_fields(msg, header, a.fields)  # cached per field list
                else:
                    body = section_bytes(a, data, header)
                label = a.label.encode()
                if a.partial is not None:
                    start, length = a.partial
                    body = body[start : start + length]
                    label += b"<%d>" % start
            out += (label, b" {%d}\r\n" % len(body), body)
    add(b")\r\n")
    return b"".join(out)
