"""TLS details in Received fields, in the notations MTAs use:

Postfix   (using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) ...)
Sendmail  (version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384 bits=256 verify=NOT)
Gmail     (version=TLS1_3 cipher=TLS_AES_128_GCM_SHA256 bits=128/128)
Exchange  with Microsoft SMTP Server (version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_...)  or  (TLS)
Exim 4.9x with esmtps (TLS1.3) tls TLS_AES_256_GCM_SHA384;  older: (TLSv1.2:ECDHE-RSA-AES256-GCM-SHA384:256)
qpsmtpd   with (DHE-RSA-AES256-SHA encrypted) ESMTPS
and protocol names that imply TLS (RFC 3848 ESMTPS/ESMTPSA, RFC 6531 UTF8SMTPS, LMTPS, HTTPS).
Versions are normalised to OpenSSL's spelling (TLSv1, TLSv1.1, TLSv1.2, TLSv1.3, SSLv3).
"""

from __future__ import annotations

import re

_POSTFIX = re.compile(r"\busing\s+((?:TLS|SSL)v?[\d._]*)\s+with\s+cipher\s+([\w.+/-]+)", re.I)
_KV_VERSION = re.compile(r"\bversion=((?:TLS|SSL)[\w./]*)", re.I)
_KV_CIPHER = re.compile(r"\bcipher=([\w.+/-]+)", re.I)
_EXIM_OLD = re.compile(r"\s*((?:TLS|SSL)v?[\d._]+):([\w.+-]+)(?::\d+)?\s*", re.I)
_BARE_VERSION = re.compile(r"\s*((?:TLS|SSL)v?[\d._]*)\s*", re.I)
_QPSMTPD = re.compile(r"\s*([\w.+-]+)\s+encrypted\s*", re.I)
_VERSION_NUM = re.compile(r"(TLS|SSL)v?(\d)(?:[._](\d))?", re.I)
PROTOCOLS = frozenset((
    "esmtps", "esmtpsa", "utf8smtps", "utf8smtpsa", "lmtps", "lmtpsa", "utf8lmtps",
    "utf8lmtpsa", "smtps", "https",
))


def version(text: str | None) -> str | None:
    if not text:
        return None
    m = _VERSION_NUM.fullmatch(text)
    if not m:
        return text
    proto, major, minor = m.group(1).upper(), m.group(2), m.group(3)
    if proto == "SSL":
        return f"SSLv{major}"
    if major == "1" and minor in (None, "0"):
        return "TLSv1"
    return f"TLSv{major}.{minor or 0}"


def _with_comment(text: str):
    m = _EXIM_OLD.fullmatch(text)
    if m:
        return version(m.group(1)), m.group(2)
    m = _BARE_VERSION.fullmatch(text)
    if m:  # "(TLS1.3)" (Exim) or just "(TLS)" (Exchange 2010)
        return (version(m.group(1)) if len(m.group(1)) > 3 else None), None
    m = _QPSMTPD.fullmatch(text)
    if m:
        return None, m.group(1)
    return None


def detect(text: str, protocol: str | None, with_comments: list[str], tls_word: str | None):
    """{"version", "cipher"} when the hop was encrypted, else None.

    `text` is what the comments before the date say, `protocol` the `with` value,
    `with_comments` the comments of the with clause, `tls_word` Exim's `tls CIPHER` value.
    """
    ver = cipher = None
    found = False
    if not text:  # nothing said in comments: only the protocol name can tell
        if tls_word:
            return {"version": None, "cipher": tls_word}
        if protocol and protocol.rsplit(None, 1)[-1].lower() in PROTOCOLS:
            return {"version": None, "cipher": None}
        return None
    low = text.lower()
    if "tls" in low or "ssl" in low or "cipher" in low or "encrypted" in low or "transport security" in low:
        m = _POSTFIX.search(text) if "using" in low else None
        if m:
            found, ver, cipher = True, version(m.group(1)), m.group(2)
        else:
            c = _KV_CIPHER.search(text) if "cipher=" in low else None
            v = _KV_VERSION.search(text) if "version=" in low else None
            if c or v:
                found = True
                ver = version(v.group(1).rstrip(",")) if v else None
                cipher = c.group(1) if c else None
        for comment in with_comments:
            got = _with_comment(comment)
            if got:
                found = True
                ver, cipher = ver or got[0], cipher or got[1]
        if not found and "transport security" in low:  # Gmail
            found = True
    if tls_word:
        found, cipher = True, cipher or tls_word
    if not found and protocol:
        found = protocol.rsplit(None, 1)[-1].lower() in PROTOCOLS
    return {"version": ver, "cipher": cipher} if found else None
