"""ENVELOPE and BODYSTRUCTURE (RFC 3501 section 7.4.2) from a message's bytes, and sections.

A small MIME walker of our own rather than the email package: it never recurses deeper than
MAX_DEPTH, looks at no more than MAX_PARTS parts and MAX_HEADERS header lines, so hostile
messages (deep nesting, 100k header lines) cost time linear in their size and nothing more.
All input is CRLF-normalised first (sizes and offsets are in CRLF octets, RFC 3501 2.3.4).
"""

from __future__ import annotations

import email.utils
import re

from mailtools.imap.parser import quote

MAX_DEPTH = 20
MAX_PARTS = 2000
MAX_HEADERS = 200000


def to_crlf(data: bytes) -> bytes:
    """Bare LF -> CRLF (Maildir files usually hold LF line ends)."""
    if b"\r" not in data:  # the common case: one pass to look, one to convert
        return data.replace(b"\n", b"\r\n")
    if data.count(b"\n") == data.count(b"\r\n"):
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def split(data: bytes) -> tuple[bytes, bytes]:
    """(header including the blank line, body) of CRLF data."""
    if data.startswith(b"\r\n"):
        return b"\r\n", data[2:]
    i = data.find(b"\r\n\r\n")
    if i < 0:
        return data, b""
    return data[: i + 4], data[i + 4 :]


def headers(header: bytes) -> list[tuple[str, bytes]]:
    """[(lower-case name, unfolded raw value)] of a CRLF header block, at most MAX_HEADERS."""
    out: list[tuple[str, bytes]] = []
    for line in header.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            if out:
                n, v = out[-1]
                out[-1] = (n, v + b" " + line.strip())
            continue
        if len(out) >= MAX_HEADERS:
            break
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        out.append((name.strip().decode("latin-1").lower(), value.strip()))
    return out


_odd_line_start = re.compile(rb"\n[\r\x0b\x0c]")  # names that strip() would shorten
_plain_name = re.compile(r"[!-9;-@\[-~]+")  # printable ASCII, lower case, no colon


def field_values(header: bytes, name: str) -> list[bytes]:
    """Every value of field `name` (lower case), exactly ``[v for n, v in headers(header) if
    n == name]``, but found by bytes.find in a lower-cased copy: only the field's own lines are
    parsed (a SEARCH SUBJECT over 10,000 headers would otherwise split 150,000 lines). Headers
    where line-by-line parsing could give another answer take the full parse."""
    if not _plain_name.fullmatch(name):
        return [v for n, v in headers(header) if n == name]
    low = b"\n" + header.lower()
    end = len(low) - 2 if header.endswith(b"\r\n\r\n") else len(low)  # the blank line is no name
    if _odd_line_start.search(low, 0, end) or low.count(b"\n") > MAX_HEADERS:
        return [v for n, v in headers(header) if n == name]
    key = b"\n" + name.encode("latin-1", "replace")
    out = []
    pos = low.find(key)
    while pos >= 0:  # low[pos] is the LF before header[pos], a line start
        eol = header.find(b"\r\n", pos)
        if eol < 0:
            eol = len(header)
        colon = header.find(b":", pos, eol)
        if colon >= 0 and not header[pos + len(key) - 1 : colon].strip():
            end = eol
            while header[end + 2 : end + 3] in (b" ", b"\t"):  # folded continuation lines
                end = header.find(b"\r\n", end + 2)
                if end < 0:
                    end = len(header)
                    break
            nxt_end = header.find(b"\r\n", end + 2)
            nxt = header[end + 2 : nxt_end if nxt_end >= 0 else len(header)]
            if nxt and b":" not in nxt:
                # headers() skips a line without a colon and joins what follows it to this field
                return [v for n, v in headers(header) if n == name]
            out.append(headers(header[pos:end])[0][1])
        pos = low.find(key, pos + 1)
    return out


def get(hdrs: list[tuple[str, bytes]], name: str) -> bytes | None:
    for n, v in hdrs:
        if n == name:
            return v
    return None


_fields_re_cache: dict[tuple, re.Pattern] = {}


def header_fields(header: bytes, names: set[str], negate: bool) -> bytes:
    """BODY[HEADER.FIELDS (...)] / .NOT: the matching raw lines (folding kept) + blank line."""
    if not negate and len(names) <= 32:
        # find each "\nname:" in a lower-cased copy (C speed), keep the lines in header order
        low = b"\n" + header.lower()
        hits = []
        for n in names:
            key = b"\n" + n.encode("latin-1", "replace")
            pos = low.find(key)
            while pos >= 0:
                after = low[pos + len(key) : pos + len(key) + 1]
                if after == b":" or after in (b" ", b"\t") and low[pos + len(key):].lstrip(b" \t")[:1] == b":":
                    end = pos
                    while True:
                        end = header.find(b"\r\n", end)
                        if end < 0:
                            end = len(header)
                            break
                        end += 2
                        if header[end : end + 1] not in (b" ", b"\t") or end >= len(header):
                            break
                    hits.append((pos, header[pos:end]))
                pos = low.find(key, pos + 1)
        hits.sort()
        return b"".join(h for _, h in hits if h.strip()) + b"\r\n"
    out = []
    keep = False
    for line in header.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            if keep:
                out.append(line)
            continue
        name = line.partition(b":")[0].strip().decode("latin-1").lower()
        keep = (name in names) != negate
        if keep:
            out.append(line)
    return b"\r\n".join(out) + (b"\r\n\r\n" if out else b"\r\n")


# --- ENVELOPE --------------------------------------------------------------------------------


_simple_addr = re.compile(
    r'\s*(?:"((?:[^"\\]|\\.)*)"|([^"<>,;:()@]*?))\s*<([^<>"(),;:\s]+@[^<>"(),;:\s]+)>\s*$'
    r'|\s*([^<>"(),;:\s]+@[^<>"(),;:\s]+)\s*$'
)


_chunk_re = re.compile(r'(?:"(?:[^"\\]|\\.)*"|[^,"])+')


def _fast_addresses(text: str):
    """The common shapes ('"N" <a@b>', 'N <a@b>', 'a@b', comma lists) without email.utils;
    None when anything unusual (comments, groups, quoted commas) needs the full parser."""
    if "(" in text or ":" in text or "\\" in text:
        return None
    if '"' in text and text.count('"') % 2:
        return None
    out = []
    chunks = text.split(",") if '"' not in text else _chunk_re.findall(text)
    for c in chunks:
        if not c.strip():
            continue
        m = _simple_addr.match(c)
        if not m:
            return None
        if m.group(4):
            out.append(("", m.group(4)))
        else:
            name = m.group(1) if m.group(1) is not None else m.group(2)
            out.append((name.replace('\\"', '"') if name else "", m.group(3)))
    return out


# the group name is a phrase: atoms or a quoted-string (RFC 5322 3.4, "Team": a@b, c@d;)
_group_re = re.compile(r'\s*("(?:[^"\\]|\\.)*"|[^:;"<>@,()]+?)\s*:([^;]*);\s*,?')


_addr_memo: dict[bytes, bytes] = {}


def _addresses(value: bytes | None) -> bytes:
    """An ENVELOPE address list; remembered per header value, since the same From and To
    values come back across a mailbox (a cold 10k ENVELOPE fetch renders 60k of them)."""
    if value is None:
        return b"NIL"
    got = _addr_memo.get(value)
    if got is None:
        if len(_addr_memo) >= 8192:
            _addr_memo.clear()
        got = _addr_memo[value] = _render_addresses(value)
    return got


def _render_addresses(value: bytes) -> bytes:
    text = value.decode("utf-8", "surrogateescape")
    if ":" in text and ";" in text:
        # RFC 3501 7.4.2: a group is (NIL NIL "name" NIL) members... (NIL NIL NIL NIL)
        out, pos = [], 0
        for m in _group_re.finditer(text):
            if text[pos : m.start()].strip(" ,"):
                out.append(_address_items(text[pos : m.start()]))
            name = m.group(1)
            if name.startswith('"'):
                name = re.sub(r"\\(.)", r"\1", name[1:-1])
            out.append(b"(NIL NIL %s NIL)" % quote(name) + _address_items(m.group(2)) + b"(NIL NIL NIL NIL)")
            pos = m.end()
        if pos:
            if text[pos:].strip(" ,"):
                out.append(_address_items(text[pos:]))
            return b"(" + b"".join(out) + b")"
    items = _address_items(text)
    return b"(" + items + b")" if items else b"NIL"


def _address_items(text: str) -> bytes:
    items = []
    pairs = _fast_addresses(text)
    if pairs is None:
        pairs = email.utils.getaddresses([text])
    for name, addr in pairs:
        if not addr and not name:
            continue
        if "(" in name:  # comments are not part of the display name (Dovecot agrees)
            stripped = re.sub(r"\s*\([^()]*\)", "", name).strip()
            name = stripped or name.strip("() ")
        local, at, host = addr.rpartition("@")
        if not at:
            local, host = addr or "MISSING_MAILBOX", "MISSING_DOMAIN"
        items.append(b"(%s NIL %s %s)" % (quote(name or None), quote(local), quote(host)))
    return b"".join(items)


def envelope(header: bytes) -> bytes:
    h: dict[str, bytes] = {}
    for n, v in headers(header):
        h.setdefault(n, v)  # the first of each, as get() finds it
    get = h.get
    frm = get("from")
    sender = get("sender") or frm
    reply_to = get("reply-to") or frm
    parts = [
        quote(get("date")),
        quote(get("subject")),
        _addresses(frm),
        _addresses(sender),
        _addresses(reply_to),
        _addresses(get("to")),
        _addresses(get("cc")),
        _addresses(get("bcc")),
        quote(get("in-reply-to")),
        quote(get("message-id")),
    ]
    return b"(" + b" ".join(parts) + b")"


# --- MIME tree -------------------------------------------------------------------------------

_TOKEN = rb'[^\s()<>@,;:\\"/\[\]?=]+'
_ctype_re = re.compile(rb"\s*(" + _TOKEN + rb")\s*/\s*(" + _TOKEN + rb")\s*")
_param_re = re.compile(rb'\s*;\s*(' + _TOKEN + rb')\s*=\s*("(?:[^"\\]|\\.)*"|' + _TOKEN + rb")", re.S)


def _params(rest: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    for m in _param_re.finditer(rest):
        v = m.group(2)
        if v.startswith(b'"'):
            v = re.sub(rb"\\(.)", rb"\1", v[1:-1])
        out.append((m.group(1), v))
        if len(out) >= 50:
            break
    return out


def _ptype(hdrs, default=(b"text", b"plain")) -> tuple[bytes, bytes, list]:
    v = get(hdrs, "content-type")
    if v is None:
        return default[0], default[1], []
    m = _ctype_re.match(v)
    if not m:
        return b"text", b"plain", []
    return m.group(1).lower(), m.group(2).lower(), _params(v[m.end() :])


class Part:
    __slots__ = ("header", "body", "hdrs", "type", "subtype", "params", "children", "message")

    def __init__(self, header: bytes, body: bytes, default=(b"text", b"plain"), depth: int = 0, budget=None):
        self.header, self.body = header, body
        self.hdrs = headers(header)
        self.type, self.subtype, self.params = _ptype(self.hdrs, default)
        self.children: list[Part] = []
        self.message: Part | None = None
        budget = budget if budget is not None else [MAX_PARTS]
        budget[0] -= 1
        if depth >= MAX_DEPTH or budget[0] <= 0:
            if self.type == b"multipart" or (self.type, self.subtype) == (b"message", b"rfc822"):
                self.type, self.subtype, self.params = b"application", b"octet-stream", []
            return
        if self.type == b"multipart":
            boundary = dict((k.lower(), v) for k, v in self.params).get(b"boundary")
            sub_default = (b"message", b"rfc822") if self.subtype == b"digest" else (b"text", b"plain")
            if boundary:
                for chunk in _split_multipart(body, boundary):
                    h, b = split(chunk)
                    if h == chunk and not chunk.endswith(b"\r\n\r\n"):
                        h, b = b"", chunk  # a part with no header at all
                    self.children.append(Part(h, b, sub_default, depth + 1, budget))
                    if budget[0] <= 0:
                        break
            if not self.children:
                self.children.append(Part(b"", b"", (b"text", b"plain"), depth + 1, budget))
        elif (self.type, self.subtype) == (b"message", b"rfc822"):
            h, b = split(body)
            self.message = Part(h, b, (b"text", b"plain"), depth + 1, budget)


def _split_multipart(body: bytes, boundary: bytes) -> list[bytes]:
    delim = b"--" + boundary
    out: list[bytes] = []
    start = None
    pos = 0
    while True:
        i = body.find(delim, pos)
        if i < 0:
            break
        if i != 0 and body[i - 2 : i] != b"\r\n":
            pos = i + 1
            continue
        after = body[i + len(delim) : i + len(delim) + 2]
        if start is not None:
            end = i - 2 if i >= 2 else i
            out.append(body[start:end])
        if after == b"--":
            return out
        eol = body.find(b"\r\n", i)
        if eol < 0:
            return out
        start = eol + 2
        pos = start
    if start is not None:
        out.append(body[start:])
    return out


def _plist(params) -> bytes:
    if not params:
        return b"NIL"
    return b"(" + b" ".join(quote(k.upper() if k.lower() == b"charset" and False else k) + b" " + quote(v) for k, v in params) + b")"


def _disposition(p: Part) -> bytes:
    v = get(p.hdrs, "content-disposition")
    if not v:
        return b"NIL"
    m = re.match(rb"\s*(" + _TOKEN + rb")", v)
    if not m:
        return b"NIL"
    return b"(" + quote(m.group(1)) + b" " + _plist(_params(v[m.end() :])) + b")"


def _lang(p: Part) -> bytes:
    v = get(p.hdrs, "content-language")
    return quote(v) if v else b"NIL"


def _lines(body: bytes) -> int:
    """Text lines: CRLFs in the body, as Dovecot counts them."""
    return body.count(b"\r\n")


def structure(p: Part, extended: bool) -> bytes:
    if p.type == b"multipart":
        kids = b"".join(structure(c, extended) for c in p.children)
        out = kids + b" " + quote(p.subtype)
        if extended:
            out += b" %s %s %s %s" % (_plist(p.params), _disposition(p), _lang(p), quote(get(p.hdrs, "content-location")))
        return b"(" + out + b")"
    params = p.params
    if p.type == b"text" and not any(k.lower() == b"charset" for k, _ in params):
        params = [(b"charset", b"us-ascii"), *params]
    enc = get(p.hdrs, "content-transfer-encoding")
    fields = [
        quote(p.type),
        quote(p.subtype),
        _plist(params),
        quote(get(p.hdrs, "content-id")),
        quote(get(p.hdrs, "content-description")),
        quote(enc.lower() if enc else b"7bit"),
        b"%d" % len(p.body),
    ]
    if p.message is not None:
        m = p.message
        fields += [envelope(m.header), structure(m, extended), b"%d" % _lines(p.body)]
    elif p.type == b"text":
        fields.append(b"%d" % _lines(p.body))
    if extended:
        fields += [quote(get(p.hdrs, "content-md5")), _disposition(p), _lang(p), quote(get(p.hdrs, "content-location"))]
    return b"(" + b" ".join(fields) + b")"


def parse(data: bytes) -> Part:
    h, b = split(data)
    return Part(h, b)


def bodystructure(data: bytes, extended: bool = True) -> bytes:
    return structure(parse(data), extended)


def find_part(root: Part, numbers: list[int]) -> Part | None:
    """Part for section numbers like [1, 2] (RFC 3501 6.4.5); None when it does not exist."""
    p = root
    for n in numbers:
        if p.message is not None and p.type == b"message":
            p = p.message
        if p.type == b"multipart":
            if n < 1 or n > len(p.children):
                return None
            p = p.children[n - 1]
        elif n == 1:
            continue  # a single-part message: part 1 is its body
        else:
            return None
    return p
