"""Dates in Received fields: RFC 5322 3.3 plus the obsolete forms of 4.3, without email.utils.

`parse_date(text)` returns seconds since the epoch (int, UTC) or None for an impossible or
missing date; it never raises. Comments ("(PST)", "(UTC)") are ignored.
"""

from __future__ import annotations

import calendar
import re
import time

_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}

# RFC 5322 4.3 obs-zone: UT/GMT are +0000, the US zones have their offsets; military zones and
# unknown alphabetic zones carry no real information and "SHOULD be considered equivalent to
# -0000", i.e. UTC.  (A missing zone is treated the same way.)
_ZONES = {
    "ut": 0, "utc": 0, "gmt": 0, "z": 0,
    "edt": -4 * 3600, "est": -5 * 3600, "cdt": -5 * 3600, "cst": -6 * 3600,
    "mdt": -6 * 3600, "mst": -7 * 3600, "pdt": -7 * 3600, "pst": -8 * 3600,
}

# [day-of-week ","] day month year hour ":" minute [":" second] [zone]   (RFC 5322 3.3, 4.3)
_RFC_DATE = re.compile(
    r"(?:[A-Za-z]{2,9}\.?\s*,?\s*)?"
    r"(\d{1,2})[\s-]*([A-Za-z]{3,9})\.?[\s,-]*(\d{2,4})\s*,?\s+"
    r"(\d{1,2})\s*:\s*(\d{1,2})(?:\s*:\s*(\d{1,2})(?:\.\d+)?)?"
    r"\s*([+-]\d{2}:?\d{2}|[A-Za-z]{1,5}(?![A-Za-z]))?"
)
# asctime / ctime form some old MTAs write: "Thu Nov 28 10:00:00 2026 [zone]"
_ASCTIME = re.compile(
    r"(?:[A-Za-z]{3,9},?\s+)?([A-Za-z]{3,9})\s+(\d{1,2})\s+"
    r"(\d{1,2}):(\d{1,2})(?::(\d{1,2}))?\s+(?:([A-Za-z]{1,5}|[+-]\d{4})\s+)?(\d{4})"
)
_COMMENT_PARTS = re.compile(r"[()\\]")
_FLAT_COMMENT = re.compile(r"\([^()\\]*\)")
# Where a date starts when a Received field has no ";" before it.
DATE_HINT = re.compile(
    r"(?:\b[A-Za-z]{3},?\s+)?\b\d{1,2}\s+[A-Za-z]{3}\s+\d{2,4}\s+\d{1,2}:\d{2}"
)


def strip_comments(text: str) -> str:
    """Drop (possibly nested) comments; linear in the length, whatever the nesting."""
    if "(" not in text:
        return text
    text = _FLAT_COMMENT.sub(" ", text)  # the common case: no nesting, no quoted-pair
    if "(" not in text and ")" not in text:
        return text
    out, depth, pos = [], 0, 0
    for m in _COMMENT_PARTS.finditer(text):
        ch = m.group()
        if ch == "\\":
            continue
        if ch == "(":
            if depth == 0:
                out.append(text[pos:m.start()])
            depth += 1
        elif depth:
            depth -= 1
            if depth == 0:
                pos = m.end()
                out.append(" ")
    if depth == 0:
        out.append(text[pos:])
    return "".join(out)


def _zone_offset(zone: str | None) -> int | None:
    if not zone:
        return 0
    if zone[0] in "+-":
        digits = zone[1:].replace(":", "")
        hh, mm = int(digits[:2]), int(digits[2:])
        if hh > 23 or mm > 59:
            return None
        off = hh * 3600 + mm * 60
        return -off if zone[0] == "-" else off  # "-0000" is 0 too: UTC (RFC 5322 3.3)
    return _ZONES.get(zone.lower(), 0)


def _year(text: str) -> int:
    y = int(text)
    if len(text) == 2:  # RFC 5322 4.3: 00-49 -> 20xx, 50-99 -> 19xx
        return y + (2000 if y < 50 else 1900)
    if len(text) == 3:  # three digits: add 1900
        return y + 1900
    return y


_DAYS: dict = {}  # (year, month name, day) -> the day's epoch, or None when there is no such day


def _day(y: int, mon: str, d: int) -> int | None:
    key = (y, mon, d)
    day = _DAYS.get(key, False)
    if day is False:
        month = _MONTHS.get(mon[:3].lower())
        if month is None or not (1900 <= y <= 9999 and 1 <= d <= calendar.monthrange(y, month)[1]):
            day = None
        else:
            day = calendar.timegm((y, month, d, 0, 0, 0, 0, 0, 0))
        if len(_DAYS) > 4096:
            _DAYS.clear()
        _DAYS[key] = day
    return day


def _epoch(y, mon, d, hh, mi, ss, zone) -> int | None:
    day = _day(y, mon, d)
    off = _zone_offset(zone) if zone else 0
    if day is None or off is None or hh > 23 or mi > 59 or ss > 60:
        return None
    ss = min(ss, 59)  # a leap second is the same instant for our purposes
    return day + hh * 3600 + mi * 60 + ss - off


def _parse_once(text: str) -> int | None:
    m = _RFC_DATE.match(text) or _RFC_DATE.search(text)
    if m:
        d, mon, y, hh, mi, ss, zone = m.groups()
        return _epoch(_year(y), mon, int(d), int(hh), int(mi), int(ss or 0), zone)
    m = _ASCTIME.search(text)
    if m:
        mon, d, hh, mi, ss, zone, y = m.groups()
        return _epoch(int(y), mon, int(d), int(hh), int(mi), int(ss or 0), zone)
    return None


def parse_date(text: str | None) -> int | None:
    """Seconds since the epoch (UTC) for a Received/Date date, or None when impossible/missing."""
    if not text:
        return None
    text = text[:400]  # a date is short; never let a long tail cost time
    try:
        text = text.strip()
        m = _RFC_DATE.match(text)  # the usual case; a trailing "(UTC)" does not matter
        if m:
            d, mon, y, hh, mi, ss, zone = m.groups()
            when = _epoch(_year(y), mon, int(d), int(hh), int(mi), int(ss or 0), zone)
            if when is not None:
                return when
        plain = strip_comments(text).strip()
        when = _parse_once(plain)
        if when is None and "\n" in plain:
            # folded in the middle of a token ("No\n v"): join the pieces and try again
            when = _parse_once(re.sub(r"\r?\n[ \t]", "", plain))
        return when
    except (ValueError, OverflowError):
        return None


def iso(epoch: int | None) -> str | None:
    """UTC ISO-8601 with a "Z" (the JSON contract), or None."""
    if epoch is None:
        return None
    day, secs = divmod(epoch, 86400)
    prefix = _ISO_DAYS.get(day)
    if prefix is None:
        prefix = time.strftime("%Y-%m-%dT", time.gmtime(day * 86400))
        if len(_ISO_DAYS) > 4096:
            _ISO_DAYS.clear()
        _ISO_DAYS[day] = prefix
    return f"{prefix}{secs // 3600:02d}:{secs % 3600 // 60:02d}:{secs % 60:02d}Z"


_ISO_DAYS: dict = {}
