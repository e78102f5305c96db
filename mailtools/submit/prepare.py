"""What a message gets on its way into the queue, from the CLI and from the MSA alike.

RFC 6409 8 (MSA fix-ups): add Date, Message-ID and From when missing; RFC 5322 3.6.3: Bcc is
removed from the stored copy; RFC 5322 2.1.1: a line over 998 octets is refused, not cut.
`-t` reads recipients from To/Cc/Bcc. All byte-level (no `email` package: it costs start-up time
on the sendmail path and re-serialises what it parses); the message keeps its own line ending.
"""

from __future__ import annotations

import time

from mailtools.core.message import get_header, iter_fields, line_ending, rfc5322_date, split_header

MAX_LINE = 998  # RFC 5322 2.1.1, without the CRLF


def longest_line(data: bytes) -> int:
    """Length of the longest line without its line end (CR before LF not counted)."""
    if len(data) <= MAX_LINE:
        return 0
    longest = 0
    start = 0
    n = len(data)
    while start < n:
        nl = data.find(b"\n", start)
        end = n if nl < 0 else nl
        length = end - start - (1 if end > start and data[end - 1:end] == b"\r" else 0)
        if length > longest:
            longest = length
        if nl < 0:
            break
        start = nl + 1
    return longest


# --- RFC 5322 address lists (To, Cc, Bcc for -t; From for sender checks) --------------------
def _strip_comments(value: str) -> str:
    out, depth, quoted, escaped = [], 0, False, False
    for c in value:
        if escaped:
            if depth == 0:
                out.append(c)
            escaped = False
            continue
        if c == "\\":
            escaped = True
            if depth == 0:
                out.append(c)
            continue
        if c == '"' and depth == 0:
            quoted = not quoted
        elif not quoted and c == "(":
            depth += 1
            continue
        elif not quoted and c == ")" and depth:
            depth -= 1
            continue
        if depth == 0:
            out.append(c)
    return "".join(out)


def parse_address_list(value: str) -> list[str]:
    """'"Doe, J" <j@x.test>, a@b.test (c), team: c@d.test, e@f.test;' -> the addr-specs.
    Group names and display names are dropped; an empty group gives nothing."""
    value = _strip_comments(value)
    pieces, cur, quoted, angle, escaped = [], [], False, False, False
    for c in value:
        if escaped:
            cur.append(c)
            escaped = False
            continue
        if c == "\\" and quoted:
            escaped = True
            cur.append(c)
            continue
        if c == '"':
            quoted = not quoted
        elif not quoted and c == "<":
            angle = True
        elif not quoted and c == ">":
            angle = False
        elif not quoted and not angle and c in ",;":
            pieces.append("".join(cur))
            cur = []
            continue
        elif not quoted and not angle and c == ":":
            cur = []  # "group-name:" starts a group: drop the name
            continue
        cur.append(c)
    pieces.append("".join(cur))
    out = []
    for piece in pieces:
        piece = piece.strip()
        if not piece:
            continue
        lt = _unquoted_find(piece, "<")
        if lt >= 0:
            gt = piece.find(">", lt)
            addr = piece[lt + 1 : gt if gt > 0 else len(piece)].strip()
            if ":" in addr and addr.startswith("@"):  # obsolete route
                addr = addr.split(":", 1)[1]
        else:
            addr = piece
        addr = "".join(addr.split()) if not addr.startswith('"') else addr.strip()
        if addr:
            out.append(addr)
    return out


def _unquoted_find(text: str, ch: str) -> int:
    quoted = False
    for i, c in enumerate(text):
        if c == '"':
            quoted = not quoted
        elif c == ch and not quoted:
            return i
    return -1


def header_recipients(header: bytes) -> list[str]:
    """To, Cc and Bcc addresses, in that order (for `sendmail -t`)."""
    out: list[str] = []
    for name in ("To", "Cc", "Bcc"):
        for value in get_header(header, name):
            out.extend(parse_address_list(value))
    return out


def remove_fields(header: bytes, names: tuple[str, ...]) -> bytes:
    """The header without the named fields (and their folded continuation lines)."""
    want = {n.lower().encode() for n in names}
    lines = header.splitlines(keepends=True)
    out, dropping = [], False
    for line in lines:
        # A line starting with white space continues the field above, even one that holds
        # nothing else (obs-FWS): taken for a field of its own, it ended a dropped Bcc early
        # and the rest of the Bcc list stayed in the message under the field before it.
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                out.append(line)
            continue
        colon = line.find(b":")
        dropping = colon > 0 and line[:colon].rstrip(b" \t").lower() in want
        if not dropping:
            out.append(line)
    return b"".join(out)


# --- fix-ups --------------------------------------------------------------------------------
def message_id(hostname: str) -> str:
    from mailtools.core.queue import random5  # (os.urandom, drawn in blocks: see there)

    return f"<{time.time_ns():x}.{random5().hex()}@{hostname}>"


def _needs_quotes(name: str) -> bool:
    return any(c in name for c in '()<>[]:;@\\,."')


def from_value(address: str, full_name: str | None) -> str:
    if not full_name:
        return address
    name = full_name.replace("\r", " ").replace("\n", " ")
    if not name.isascii():  # RFC 2047 encoded-word, base64, one word is enough for a name
        import base64

        name = "=?utf-8?b?" + base64.b64encode(name.encode()).decode() + "?="
    elif _needs_quotes(name):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{address}>"


def fixup(data: bytes, *, from_address: str, hostname: str, full_name: str | None = None,
          trace: list[tuple[str, str]] | None = None, when: float | None = None) -> bytes:
    """The message as it goes into the queue: trace fields on top, Bcc removed, Date,
    Message-ID and From added at the end of the header when missing (RFC 6409 8.2, 8.3, 8.1).
    The body and every other header byte are kept as they came."""
    header, body = split_header(data)
    eol = line_ending(data)
    if header == data and b":" not in header.split(b"\n", 1)[0]:
        # no header at all (the first line is not a field): the whole input is body
        header, body = b"", data
    # the empty line that ends the header
    if header.endswith(b"\r\n\r\n") or header == b"\r\n":
        fields, blank = header[:-2], b"\r\n"
    elif header.endswith(b"\n\n") or header == b"\n":
        fields, blank = header[:-1], b"\n"
    else:
        fields, blank = header, eol  # header ran to the end of the data (no body)
        if fields and not fields.endswith(b"\n"):
            fields += eol
    fields = remove_fields(fields, ("Bcc",))
    present = {name.lower() for name, _ in iter_fields(fields)}  # one pass over the header
    add = []
    if "date" not in present:
        add.append(("Date", rfc5322_date(when)))
    if "message-id" not in present:
        add.append(("Message-ID", message_id(hostname)))
    if "from" not in present:
        add.append(("From", from_value(from_address, full_name)))
    # trace values may be folded ("\r\n\t"): fold with the message's own line ending
    sep = eol.decode()
    top = b"".join(f"{n}: {v.replace(chr(13) + chr(10), chr(10)).replace(chr(10), sep)}".encode(
        "utf-8", "surrogateescape") + eol for n, v in (trace or []))
    tail = b"".join(f"{n}: {v}".encode("utf-8", "surrogateescape") + eol for n, v in add)
    if not body and blank and not header:
        blank = eol
    return top + fields + tail + blank + body
