"""Byte-level header helpers: read and prepend header fields without re-serialising anything.

A message is kept as the bytes it came as: `split_header(data)` cuts it at the empty line that
ends the header (RFC 5322 2.1) so that `header + body == data`; `prepend_headers` adds fields
in front using the message's own line ending (CRLF or LF); `get_header` reads (unfolded) values.
No `email` package: it costs ~30 ms of start-up on the per-message delivery path and would
re-serialise what it parses.
"""

from __future__ import annotations

import time

_last_date: tuple = (None, "")  # (epoch second, its rfc5322_date): servers stamp many a second


def rfc5322_date(when: float | None = None) -> str:
    """'Sat, 28 Nov 2026 15:47:00 +0000': local time and its numeric zone (RFC 5322 3.3), for
    Date and Received. (Python sets only LC_CTYPE, so %a and %b are the English names the RFC
    wants.)"""
    global _last_date
    if when is not None:
        return time.strftime("%a, %d %b %Y %H:%M:%S %z", time.localtime(when))
    now = int(time.time())
    last = _last_date
    if last[0] != now:
        last = _last_date = (now, time.strftime("%a, %d %b %Y %H:%M:%S %z", time.localtime(now)))
    return last[1]


def header_end(data: bytes) -> int:
    """Offset just after the empty line that ends the header (len(data) when there is none)."""
    if data[:1] == b"\n":
        return 1
    if data[:2] == b"\r\n":
        return 2
    lf = data.find(b"\n\n")
    crlf = data.find(b"\n\r\n")
    if lf < 0 and crlf < 0:
        return len(data)
    if crlf < 0 or (0 <= lf < crlf):
        return lf + 2
    return crlf + 3


def split_header(data: bytes) -> tuple[bytes, bytes]:
    """(header, body) with header + body == data; the header keeps its terminating empty line."""
    i = header_end(data)
    return data[:i], data[i:]


def line_ending(data: bytes) -> bytes:
    """The message's own line ending: CRLF when its first line ends in CRLF, else LF."""
    i = data.find(b"\n")
    if i > 0 and data[i - 1 : i] == b"\r":
        return b"\r\n"
    return b"\n"


def _check_field(name: str, value: str) -> None:
    # RFC 5322 2.2: a field name is printable US-ASCII except ':' (and no space).
    if not name or any(not (33 <= ord(c) <= 126) or c == ":" for c in name):
        raise ValueError(f"bad header field name: {name!r}")
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"CR, LF or NUL in the value of {name}")


def format_headers(fields, eol: bytes = b"\n") -> bytes:
    out = []
    for name, value in fields:
        _check_field(name, value)
        out.append(f"{name}: {value}".encode("utf-8", "surrogateescape") + eol)
    return b"".join(out)


def prepend_headers(data: bytes, fields) -> bytes:
    """Return data with `Name: value` lines in front, in the given order, ending in the
    message's own line ending. Every byte of data is kept. Raises ValueError for a field name
    that is not printable ASCII without ':' or a value holding CR, LF or NUL."""
    return format_headers(fields, line_ending(data)) + data


def iter_fields(header: bytes):
    """(name, raw value) per field, value unfolded (CR LF before whitespace removed, RFC 5322
    2.2.3) and stripped; stops at the empty line. Lines that are not fields are skipped."""
    name = None
    value: list[bytes] = []
    for line in header.split(b"\n"):
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            if name is not None:
                value.append(line)
            continue
        if name is not None:
            yield name, _decode(b"".join(value).strip(b" \t"))
        colon = line.find(b":")
        if colon <= 0:
            name = None
            continue
        name = _decode(line[:colon].rstrip(b" \t"))  # RFC 5322 4.5.8: obsolete WSP before ':'
        if not name or any(c <= " " or c == "\x7f" for c in name):
            name = None  # not a field (e.g. an mbox "From " line)
            continue
        value = [line[colon + 1 :]]
    if name is not None:
        yield name, _decode(b"".join(value).strip(b" \t"))


def _decode(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def get_header(header: bytes, name: str) -> list[str]:
    """Every value of the field called name (case-insensitive), unfolded, in message order."""
    want = name.lower()
    return [v for n, v in iter_fields(header) if n.lower() == want]
