"""One Received field -> one hop (RFC 5321 4.4, RFC 5322 3.6.7), as real MTAs write them.

The grammar (`"Received:" *received-token ";" date-time`) is the skeleton; what MTAs put in it
is not: HELO names and TCP-info in comments (Postfix, Sendmail, Exim `helo=`, qmail/Yahoo
`(HELO x)`), IPs as literals or bare words, multi-word protocols (`with Microsoft SMTP Server`),
TLS details in many notations (see tls.py), extra keywords (`via`, Exim's `tls`).

How: comments are cut out first (nested ones flattened, linear time), so a "from", "by",
"with" or ";" inside a comment never counts; the date is what follows the last ";" left; the
rest splits into words and is walked clause by clause. Everything heavy runs in C (re, split):
this parser must beat a bare email.parser pass over the same mbox. It never raises.
"""

from __future__ import annotations

import re

from mailtools.trace import tls
from mailtools.trace.dates import DATE_HINT, parse_date

KEYWORDS = frozenset(("from", "by", "via", "with", "id", "for"))
MAX_FIELD = 16384  # longer fields are cut here: no real Received field is this long

_FLAT = re.compile(r"\([^()\\]*(?:\\.[^()\\]*)*\)")  # a comment without nesting ("unrolled")
_NEST2 = re.compile(r"\([^()\\]*(?:\([^()\\]*\)[^()\\]*)*\)")  # nested once at most
_PARENS = re.compile(r"[()\\]")
# Inside a comment, nested parentheses and ";" are swapped for look-alikes while the field is
# split, then swapped back in the comment's text.
_HIDE = str.maketrans("();", "\uff08\uff09\uff1b")
_UNHIDE = str.maketrans("\uff08\uff09\uff1b", "();")
_COMMENT = "\x00"  # stands for the next comment in the word list

_HELO = re.compile(r"\b(?:helo|ehlo|lhlo)(?:\s*=\s*|\s+)(\[[^\]]*\]|[^\s()\[\],;]+)", re.I)
_ENVELOPE_FROM = re.compile(r"\benvelope-(?:from|sender)\s*=?\s*<([^>]*)>", re.I)
_IP_CANDIDATE = re.compile(r"[0-9A-Fa-f:.]+")
_HEX = re.compile(r"[0-9A-Fa-f]+")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]\d|\d)"
_IPV4 = re.compile(rf"({_OCTET}(?:\.{_OCTET}){{3}})(?::\d+)?")
# An IP in TCP-info: a literal ("[192.0.2.1]", "[IPv6:2001:db8::1]", "[fe80::1%5]"), or a bare
# address, maybe after "user@" (qmail) and with a port (Exim: "[192.0.2.1]:54321").
_IP_LITERAL = re.compile(r"\[(?:IPv6:)?([0-9A-Fa-f:.]+)(?:%[^\]]*)?\]", re.I)
_IP_IN_TEXT = re.compile(
    r"""\[(?:IPv6:)?([0-9A-Fa-f:.]+)(?:%[^\]]*)?\]
      | (?<![\w.:-])(?:[\w.+-]+@)?(\d{1,3}(?:\.\d{1,3}){3})(?::\d+)?(?![\w.-])
      | (?<![\w.:-])(?:[\w.+-]+@)?([0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:\.\d{1,3}){0,3})(?:%\w+)?(?![\w:-])""",
    re.VERBOSE | re.IGNORECASE,
)


def _comment_end(value: str, start: int) -> int:
    """End of the (nested) comment opening at `start`; the end of the text if never closed."""
    depth = 0
    pos = start
    search = _PARENS.search
    while True:
        m = search(value, pos)
        if m is None:
            return len(value)
        ch = m.group()
        pos = m.end()
        if ch == "\\":  # quoted-pair (RFC 5322 3.2.1): the next character is literal
            pos += 1
        elif ch == "(":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return pos


def _flatten(value: str) -> str:
    """Make every comment flat and every ";" inside one invisible to the splitter (linear)."""
    out = []
    pos = 0
    while True:
        m = _PARENS.search(value, pos)
        if m is None:
            out.append(value[pos:])
            break
        if m.group() != "(":  # a stray ")" or a quoted-pair outside comments: plain text
            end = m.end() + (1 if m.group() == "\\" else 0)
            out.append(value[pos:m.start()])
            out.append(value[m.start():end].translate(_HIDE))
            pos = end
            continue
        end = _comment_end(value, m.start())
        inner = value[m.start() + 1:end - 1] if value[end - 1:end] == ")" else value[m.start() + 1:end]
        out.append(value[pos:m.start()])
        out.append("(" + inner.translate(_HIDE) + ")")
        pos = end
    return "".join(out)


def normalise_ip(text: str) -> str | None:
    """An IP address from TCP-info: "IPv6:" prefix, "user@", zone id and port removed."""
    m = _IPV4.fullmatch(text)  # fast path: a plain dotted quad (octets checked by the regex)
    if m:
        return m.group(1)
    text = text.strip()
    if text[:1] == "[":
        text = text[1:].split("]", 1)[0]
    if " " in text or "\t" in text or "\n" in text:
        text = "".join(text.split())
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    if "@" in text:
        text = text.rpartition("@")[2]
    if "%" in text:
        text = text.split("%", 1)[0]
    m = _IPV4.fullmatch(text)
    if m:
        return m.group(1)
    if ":" not in text or not _IP_CANDIDATE.fullmatch(text):
        return None
    return text.lower() if is_ipv6(text) else None  # as written (mixed notation kept)


def is_ipv6(text: str) -> bool:
    """RFC 4291 2.2 text forms (with "::" and a trailing dotted quad); faster than ipaddress."""
    if text.count("::") > 1:
        return False
    groups = 8
    if "." in text:  # x:x:x:x:x:x:d.d.d.d
        head, _, quad = text.rpartition(":")
        m = _IPV4.fullmatch(quad)
        if not m or m.group(0) != quad:
            return False
        # "...::d.d.d.d" leaves head ending in ":" (keep the "::"); else drop nothing
        text, groups = (head + ":" if head.endswith(":") else head), 6
    if "::" in text:
        left, _, right = text.partition("::")
        parts = (left.split(":") if left else []) + (right.split(":") if right else [])
        if len(parts) > groups - 1:
            return False
    else:
        parts = text.split(":")
        if len(parts) != groups:
            return False
    return all(0 < len(p) <= 4 and _HEX.fullmatch(p) for p in parts)


def _ip_in(text: str) -> str | None:
    if "\n" in text:  # undo folds inside a literal: "[192.0.2\n .1]"
        text = re.sub(r"\[[^\]]*\]", lambda m: "".join(m.group().split()), text)
    if "[" in text:  # the usual "(name [192.0.2.1])": one cheap search first
        m = _IP_LITERAL.search(text)
        if m:
            ip = normalise_ip(m.group(1))
            if ip:
                return ip
    for m in _IP_IN_TEXT.finditer(text):
        ip = normalise_ip(m.group(1) or m.group(2) or m.group(3))
        if ip:
            return ip
    return None


def _host(text: str | None) -> str | None:
    if not text:
        return None
    if text[:1] == "[":
        return text
    return text.rstrip(".") or None


def _split(value: str):
    """(words before the date with comments as placeholders, those comments, the date text,
    the text before the date with comments as placeholders)."""
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    comments: list[str] = []
    ph = value
    if "(" in value or ")" in value:
        if "\\" not in value:  # the usual case: comments nested at most once (Postfix)
            comments = [c[1:-1] for c in _NEST2.findall(value)]
            ph = _NEST2.sub(" \x00 ", value)
        if "\\" in value or "(" in ph or ")" in ph:  # deeper, quoted-pairs, unbalanced
            value = _flatten(value)
            comments = [c[1:-1].translate(_UNHIDE) for c in _FLAT.findall(value)]
            ph = _FLAT.sub(" \x00 ", value)
    semi = ph.rfind(";")  # the date follows the last ";" outside comments (RFC 5322 3.6.7)
    if semi >= 0:
        date_text, ph = ph[semi + 1:], ph[:semi]
    else:
        # no ";": some MTAs still end with a date; take it when it is recognisable
        m = DATE_HINT.search(ph)
        date_text, ph = (ph[m.start():], ph[:m.start()]) if m else (None, ph)
    if comments:
        comments = comments[:ph.count("\x00")]
    if date_text and "\x00" in date_text:
        date_text = date_text.replace("\x00", " ")
    return ph.split(), comments, date_text, ph


def parse_received(value: str) -> dict:
    """The hop described by one Received field value (the time as epoch seconds or None)."""
    words, comments, date_text, text = _split(value[:MAX_FIELD])
    values: dict[str, list] = {}  # clause -> its words
    notes: dict[str | None, list] = {None: []}  # clause -> its comments (None: before any)
    cur = None
    cur_words = None
    cur_notes = notes[None]
    ci = 0
    for w in words:
        if w == _COMMENT:
            cur_notes.append(comments[ci])
            ci += 1
            continue
        if len(w) <= 4:  # only a short word can be a keyword: skip lower() for host names
            low = w.lower()
            if (low in KEYWORDS and low not in values) or (low == "tls" and cur == "with" and "tls" not in values):
                cur = low  # "tls": Exim 4.9x "with esmtps (TLS1.3) tls CIPHER"
                cur_words = values[cur] = []
                cur_notes = notes[cur] = []
                continue
        if cur_words is not None:
            cur_words.append(w)

    lead = notes[None]
    hop = {
        "from_host": None, "from_ip": None, "from_rdns": None, "by_host": None, "with": None,
        "tls": None, "id": None, "for": None, "via": None, "envelope_from": None,
        "comment": " ".join(" ".join(c.split()) for c in lead) if lead else None,
        "epoch": parse_date(date_text),
        "date_text": date_text,
    }
    v = values.get("with")
    if v:
        hop["with"] = " ".join(v)
    v = values.get("via")
    if v:
        hop["via"] = " ".join(v)
    v = values.get("from")
    if v is not None:
        _from_clause(hop, _single(v, text) if v else None, notes["from"])
    v = values.get("by")
    if v:
        hop["by_host"] = _host(_single(v, text))
    v = values.get("id")
    if v:
        hop["id"] = _single(v, text)
    v = values.get("for")
    if v:
        hop["for"] = _single(v, text).strip("<>") or None
    said = "\n".join(comments) if comments else ""
    if "envelope-" in said:
        m = _ENVELOPE_FROM.search(said)
        hop["envelope_from"] = m.group(1) if m else None
    tls_word = values["tls"][0] if values.get("tls") else None
    hop["tls"] = tls.detect(said, hop["with"], notes.get("with", ()), tls_word)
    return hop


def _single(vals: list, text: str) -> str:
    """The one token of a from/by/id/for clause. A fold inside a token ("mx.exa\\n mple.net")
    is undone: no second bare word may follow there, so a piece after such a fold is joined."""
    first = vals[0]
    if len(vals) == 1:
        return first
    for w in vals[1:]:
        if w.lower() in KEYWORDS or w[0] in "<(\x00" or not (
                f"{first}\n {w}" in text or f"{first}\n\t{w}" in text):
            break
        first += w
    return first


def _from_clause(hop: dict, value: str | None, comments: list[str]) -> None:
    helo = None
    ip = rdns = None
    for c in comments:
        if helo is None and ("lo" in c or "LO" in c):
            m = _HELO.search(c)
            helo = m.group(1) if m else None
        if ip is None:
            ip = _ip_in(c)
            if ip:
                # "(name [ip])" (Postfix, Sendmail, Gmail): the name is the reverse DNS
                first = c.split(None, 1)[0] if c.strip() else ""
                if (first and first[0] not in "[(" and "=" not in first and "@" not in first
                        and first.lower() not in ("unknown", "helo", "ehlo", "lhlo")
                        and ((not first[0].isdigit() and ":" not in first) or normalise_ip(first) is None)):
                    rdns = _host(first)
    if ip is None and value and (value[0] == "[" or ":" in value or value[0].isdigit()):
        ip = normalise_ip(value)
    if helo:
        # Exim, qmail, Yahoo, qpsmtpd: the word after "from" is the verified name (or the IP,
        # or "unknown"); the HELO name is in the comment.
        hop["from_host"] = _host(helo)
        if value and value[0] != "[" and value.lower() != "unknown" and not normalise_ip(value):
            rdns = rdns or _host(value)
    else:
        hop["from_host"] = _host(value)
    hop["from_ip"] = ip
    hop["from_rdns"] = rdns
