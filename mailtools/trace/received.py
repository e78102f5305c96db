"""One Received field -> one hop (RFC 5321 4.4, RFC 5322 3.6.7), as real MTAs write them.

The grammar (`"Received:" *received-token ";" date-time`) is the skeleton; what MTAs put in it
is not: HELO names and TCP-info in comments (Postfix, Sendmail, Exim `helo=`, qmail/Yahoo
`(HELO x)`), IPs as literals or bare words, multi-word protocols (`with Microsoft SMTP Server`),
TLS details in five different notations, extra keywords (`via`, Exim's `tls`). The parser is a
scanner (comments nested, quoted strings, literals) then a walk over the clauses, so a "from",
"by", "with" or ";" inside a comment never counts. It never raises and is linear in the input.
"""

from __future__ import annotations

import ipaddress
import re

from mailtools.trace.dates import DATE_HINT, parse_date

KEYWORDS = frozenset(("from", "by", "via", "with", "id", "for"))
_SINGLE = frozenset(("from", "by", "id", "for"))  # clauses that take one token
MAX_FIELD = 16384  # longer fields are cut here: no real Received field is this long

_TOKEN = re.compile(
    r"""(?P<ws>[ \t\n]+)
      | (?P<semi>;)
      | (?P<lit>\[[^\];()<>]*\]?)
      | (?P<angle><[^>;]*>?)
      | (?P<qs>"(?:[^"\\\n]|\\.)*"?)
      | (?P<word>[^ \t\n;()\[\]<>"]+)
      | (?P<open>\()
      | (?P<other>.)""",
    re.VERBOSE | re.DOTALL,
)
_PARENS = re.compile(r"[()\\]")
_WS = re.compile(r"\s+")

# TLS as MTAs state it (the version is normalised to OpenSSL's spelling: TLSv1, TLSv1.2, ...)
_TLS_POSTFIX = re.compile(r"\busing\s+((?:TLS|SSL)v?[\d._]*)\s+with\s+cipher\s+([\w.+/-]+)", re.I)
_TLS_KV_VERSION = re.compile(r"\bversion=([\w./]+)", re.I)
_TLS_KV_CIPHER = re.compile(r"\bcipher=([\w.+/-]+)", re.I)
_TLS_EXIM_OLD = re.compile(r"^\s*((?:TLS|SSL)v?[\d._]+):([\w.+-]+)(?::\d+)?\s*$", re.I)
_TLS_BARE_VERSION = re.compile(r"^\s*((?:TLS|SSL)v?[\d._]*)\s*$", re.I)
_TLS_QPSMTPD = re.compile(r"^\s*([\w.+-]+)\s+encrypted\s*$", re.I)
_TLS_VERSION_NUM = re.compile(r"^(TLS|SSL)v?(\d)(?:[._](\d))?$", re.I)
# Protocol names that mean the hop was encrypted (RFC 3848, RFC 6531 registry; SMTPS/HTTPS as
# Gmail and Exchange write them).
TLS_PROTOCOLS = frozenset((
    "esmtps", "esmtpsa", "utf8smtps", "utf8smtpsa", "lmtps", "lmtpsa", "utf8lmtps",
    "utf8lmtpsa", "smtps", "https",
))

_HELO = re.compile(r"\b(?:helo|ehlo)(?:\s*=\s*|\s+)(\[[^\]]*\]|[^\s()\[\],;]+)", re.I)
_ENVELOPE_FROM = re.compile(r"\benvelope-(?:from|sender)\s*=?\s*<([^>]*)>", re.I)
_IP_CANDIDATE = re.compile(r"[0-9A-Fa-f:.%]*[:.][0-9A-Fa-f:.%]*")
_COMMENT_SPLIT = re.compile(r"[\s()\[\]<>,;=]+")
_IPV4_PORT = re.compile(r"^(\d{1,3}(?:\.\d{1,3}){3}):\d+$")


def _scan(value: str):
    """Tokens of a field value: (kind, text, start, end, fold_before)."""
    toks = []
    pos, n = 0, len(value)
    fold = False
    match = _TOKEN.match
    while pos < n:
        m = match(value, pos)
        kind = m.lastgroup
        if kind == "ws":
            fold = m.group()  # the whitespace itself; a "\n" in it marks a fold
            pos = m.end()
            continue
        if kind == "open":
            end = _comment_end(value, pos)
            toks.append(("c", value[pos + 1:end - 1 if value[end - 1:end] == ")" else end], pos, end, fold))
            pos = end
        else:
            toks.append((kind, m.group(), pos, m.end(), fold))
            pos = m.end()
        fold = False
    return toks


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


def _is_mid_token_fold(ws) -> bool:
    return isinstance(ws, str) and "\n" in ws and len(ws.replace("\n", "")) == 1


def normalise_ip(text: str) -> str | None:
    """An IP address from a word of TCP-info: IPv6: prefix, user@, zone id, port removed."""
    text = text.strip()
    if text[:1] == "[":
        text = text[1:].split("]", 1)[0]
    text = "".join(text.split())
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    if "@" in text:
        text = text.rpartition("@")[2]
    if "%" in text:
        text = text.split("%", 1)[0]
    if not text or not _IP_CANDIDATE.fullmatch(text):
        return None
    m = _IPV4_PORT.match(text)
    if m:
        text = m.group(1)
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _ip_in_comment(text: str) -> str | None:
    if "\n" in text:  # undo folds inside a literal: "[192.0.2\n .1]"
        text = re.sub(r"\[[^\]]*\]", lambda m: "".join(m.group().split()), text)
    for word in _COMMENT_SPLIT.split(text):
        if word and (":" in word or "." in word) and word[-1:] != ".":
            ip = normalise_ip(word)
            if ip:
                return ip
    return None


def tls_version(text: str | None) -> str | None:
    if not text:
        return None
    m = _TLS_VERSION_NUM.match(text)
    if not m:
        return text
    proto, major, minor = m.group(1).upper(), m.group(2), m.group(3)
    if proto == "SSL":
        return f"SSLv{major}"
    if major == "1" and minor in (None, "0"):
        return "TLSv1"
    return f"TLSv{major}.{minor or 0}"


def _tls_from_comment(text: str):
    """(version, cipher) stated in one comment, or None."""
    m = _TLS_POSTFIX.search(text)
    if m:
        return tls_version(m.group(1)), m.group(2)
    c = _TLS_KV_CIPHER.search(text)
    v = _TLS_KV_VERSION.search(text)
    if c or (v and v.group(1)[:3].upper() in ("TLS", "SSL")):
        return tls_version(v.group(1).rstrip(",")) if v else None, c.group(1) if c else None
    m = _TLS_EXIM_OLD.match(text)
    if m:
        return tls_version(m.group(1)), m.group(2)
    m = _TLS_BARE_VERSION.match(text)
    if m:
        return tls_version(m.group(1)) if len(m.group(1)) > 3 else None, None
    m = _TLS_QPSMTPD.match(text)
    if m:
        return None, m.group(1)
    if "transport security" in text.lower():  # Gmail: "(Google Transport Security)"
        return None, None
    return None


def _host(text: str | None) -> str | None:
    if not text:
        return None
    text = "".join(text.split())
    if text[:1] == "[":
        return text
    return text.rstrip(".") or None


class _Clause:
    __slots__ = ("values", "comments")

    def __init__(self):
        self.values = []  # (kind, text, fold_before)
        self.comments = []


def parse_received(value: str) -> dict:
    """The hop described by one Received field value (timestamps as epoch seconds or None)."""
    value = value[:MAX_FIELD]
    toks = _scan(value)
    semi = None
    for i in range(len(toks) - 1, -1, -1):
        if toks[i][0] == "semi":
            semi = i
            break
    if semi is not None:
        date_text = value[toks[semi][3]:]
        toks = toks[:semi]
    else:
        # no ";": some MTAs still end with a date; take it when it is recognisable
        m = DATE_HINT.search(value)
        date_text = value[m.start():] if m else None
        if m:
            toks = [t for t in toks if t[3] <= m.start()]

    clauses: dict[str, _Clause] = {}
    lead_comments = []
    cur = None
    tls_cipher_word = None
    for kind, text, _s, _e, fold in toks:
        if kind == "word":
            low = text.lower()
            if low in KEYWORDS and low not in clauses:
                cur = low
                clauses[cur] = _Clause()
                continue
            if low == "tls" and cur == "with":  # Exim 4.9x: "with esmtps (TLS1.3) tls CIPHER"
                cur = "tls"
                clauses.setdefault("tls", _Clause())
                continue
        if cur is None:
            if kind == "c":
                lead_comments.append(text)
            continue
        cl = clauses[cur]
        if kind == "c":
            cl.comments.append(text)
        else:
            cl.values.append((kind, text, fold))

    hop = {
        "from_host": None, "from_ip": None, "from_rdns": None, "by_host": None, "with": None,
        "tls": None, "id": None, "for": None, "via": None, "envelope_from": None,
        "comment": " ".join(_WS.sub(" ", c).strip() for c in lead_comments) or None,
        "epoch": parse_date(date_text),
        "date_text": _WS.sub(" ", date_text).strip() if date_text else None,
    }
    single = {}
    for name in _SINGLE:
        cl = clauses.get(name)
        if cl and cl.values:
            kind, text, _ = cl.values[0]
            # a fold inside a token ("mx.exa\n mple.net") is undone: RFC 5322 never allows a
            # second bare word here, so the piece after the fold belongs to the first.
            for k2, t2, f2 in cl.values[1:]:
                if k2 in ("word", "lit") and _is_mid_token_fold(f2) and t2.lower() not in KEYWORDS:
                    text += t2
                else:
                    break
            single[name] = (kind, text)
    for name in ("with", "via"):
        cl = clauses.get(name)
        if cl and cl.values:
            hop[name] = " ".join(t for _k, t, _f in cl.values if _k == "word") or None

    _from_clause(hop, single.get("from"), clauses.get("from"))
    if "by" in single:
        hop["by_host"] = _host(single["by"][1])
    if "id" in single:
        hop["id"] = "".join(single["id"][1].split())
    if "for" in single:
        hop["for"] = "".join(single["for"][1].split()).strip("<>") or None

    comments = [c for cl in clauses.values() for c in cl.comments]
    for c in comments + lead_comments:
        m = _ENVELOPE_FROM.search(c)
        if m:
            hop["envelope_from"] = m.group(1)
            break
    hop["tls"] = _tls(hop["with"], clauses, comments)
    return hop


def _from_clause(hop: dict, value, clause) -> None:
    if clause is None:
        return
    comments = clause.comments
    kind, text = value if value else (None, None)
    helo = None
    for c in comments:
        m = _HELO.search(c)
        if m:
            helo = m.group(1)
            break
    ip = None
    rdns = None
    for c in comments:
        ip = _ip_in_comment(c)
        if ip:
            # "(name [ip])" (Postfix, Sendmail, Gmail): the name is the reverse DNS
            first = c.strip().split(None, 1)[0] if c.strip() else ""
            if first and first[0] not in "[(" and not normalise_ip(first) and "=" not in first \
                    and first.lower() not in ("unknown", "helo", "ehlo") and "@" not in first:
                rdns = _host(first)
            break
    if ip is None and text:
        ip = normalise_ip(text) if kind == "lit" or _IP_CANDIDATE.fullmatch(text) else None
    if helo:
        # Exim, qmail, Yahoo, qpsmtpd: the word after "from" is the verified name (or the IP,
        # or "unknown"); the HELO name is in the comment.
        hop["from_host"] = _host(helo)
        if text and kind == "word" and text.lower() != "unknown" and not normalise_ip(text):
            rdns = rdns or _host(text)
    else:
        hop["from_host"] = _host(text)
    hop["from_ip"] = ip
    hop["from_rdns"] = rdns


def _tls(with_value: str | None, clauses, comments):
    version = cipher = None
    found = False
    for c in comments:
        got = _tls_from_comment(c)
        if got:
            found = True
            version = version or got[0]
            cipher = cipher or got[1]
    tls_cl = clauses.get("tls")
    if tls_cl and tls_cl.values:
        found = True
        cipher = cipher or tls_cl.values[0][1]
    if not found and with_value:
        last = with_value.split()[-1].lower()
        found = last in TLS_PROTOCOLS
    return {"version": version, "cipher": cipher} if found else None
