"""The header section of a message, and the messages of an mbox, on bytes and without
email.parser: trace-headers only needs a handful of fields from the top-level header block.

Field values keep their folds as "\\n" + WSP (CRs removed), so the Received parser can tell a
fold from a space (and undo a fold made in the middle of a token).
"""

from __future__ import annotations

import re

# The fields a trace report uses. Anything else (X-Received, Received-SPF, ARC-Message-Signature,
# ...) is dropped by name. RFC 5322 2.2: a field starts at the beginning of a line with its
# name; obs-optional (4.5) allows white space before the colon; continuation lines start with WSP.
WANTED = (
    "received", "message-id", "from", "date", "return-path", "subject",
    "authentication-results", "arc-authentication-results", "arc-seal",
)
_WANTED_SET = frozenset(WANTED)
_FIELD_START = re.compile(r"\n(?![ \t])")
# ftext: printable US-ASCII except ":" (RFC 5322 2.2), then the colon.
_FIRST_FIELD = re.compile(rb"[!-9;-~]+[ \t]*:")


class NotAMessage(ValueError):
    """The input does not start with a header section."""


def header_end(buf, start: int = 0, end: int | None = None) -> int:
    """Offset where the header section starting at `start` ends (the blank line), or `end`."""
    if end is None:
        end = len(buf)
    lf = buf.find(b"\n\n", start, end)  # plain finds (memchr speed), not a regex scan
    crlf = buf.find(b"\n\r\n", start, lf if lf >= 0 else end)
    if crlf >= 0:
        return crlf + 1
    return lf + 1 if lf >= 0 else end


def check_header(header: bytes) -> None:
    """Raise NotAMessage unless `header` starts with a header field (after an mbox From_ line)."""
    if header.startswith(b"From "):
        nl = header.find(b"\n")
        header = header[nl + 1:] if nl >= 0 else b""
    if not header.strip():
        raise NotAMessage("no header fields")
    if not _FIRST_FIELD.match(header):
        raise NotAMessage("does not start with a header field")


def fields(header: bytes) -> list[tuple[str, str]]:
    """(lower-case name, value) for the wanted fields, in order, folds kept as "\\n" + WSP.

    Bytes are decoded as UTF-8 (RFC 6532); a header section that is not UTF-8 is read as
    Latin-1 (old 8-bit headers: "Jürgen" stays readable), never an error.
    """
    try:
        text = header.decode("utf-8")
    except UnicodeDecodeError:
        text = header.decode("latin-1")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", " ")
    out = []
    for field in _FIELD_START.split(text):  # a field ends where a line does not start with WSP
        name, colon, value = field.partition(":")
        if colon:
            name = name.rstrip(" \t").lower()
            if name in _WANTED_SET:
                out.append((name, value))
    return out


def is_mbox(buf) -> bool:
    return buf[:5] == b"From "


def split_mbox(buf):
    """Yield (start, end) of each message of an mbox held in `buf` (bytes or mmap).

    A message starts at a "From " line at the start of the buffer or after a blank line
    (mboxo/mboxrd writers escape body lines that would otherwise look like one).
    """
    size = len(buf)
    start = 0
    pos = 0
    while True:
        nxt = buf.find(b"\nFrom ", pos)
        if nxt < 0:
            break
        pos = nxt + 1
        # the line before must be empty: "\n\nFrom " or "\n\r\nFrom "
        if nxt >= 1 and (buf[nxt - 1:nxt] == b"\n" or buf[max(nxt - 2, 0):nxt] == b"\n\r"):
            if nxt + 1 > start:
                yield start, nxt + 1
            start = nxt + 1
    if start < size:
        yield start, size
