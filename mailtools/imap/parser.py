"""Sans-I/O IMAP command reader and grammar (RFC 3501 section 9, RFC 7888 literals).

Two layers, both free of sockets:

* :class:`CommandReader` takes the bytes a client sends and cuts them into whole commands.
  It pauses on every ``{n}`` literal (asking the session to send ``+``) and takes ``{n+}``
  literals without asking (LITERAL+).  Every limit is checked *before* the ``+`` is sent, so a
  literal that is too big is refused without the client ever sending it, and literal data is
  never read as a command.
* :class:`Cursor` walks one whole command (literals inline) with the grammar's small pieces:
  atoms, astrings, quoted strings, literals, parenthesised lists, sequence sets.  Each command
  handler pulls what it needs; any mismatch raises :class:`ParseError` (-> tagged BAD).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class ParseError(Exception):
    """The command does not follow the grammar: answered with a tagged BAD."""


@dataclass(frozen=True)
class Limits:
    max_line: int = 65536  # one line, without literals (Dovecot's default is 64 KiB too)
    max_literal: int = 64 * 1024 * 1024  # one literal (APPEND of a big message)
    max_literals: int = 1000  # literals in one command
    max_command: int = 80 * 1024 * 1024  # whole command, literals included
    max_depth: int = 16  # parenthesis nesting (SEARCH, FETCH lists)


# Events returned by CommandReader.feed()
@dataclass
class Command:
    data: bytes  # the whole command, literals inline, final CRLF removed


@dataclass
class Continue:
    """Send '+ ...' : the client waits for it before sending a synchronising literal."""


@dataclass
class Refused:
    tag: str
    text: str  # e.g. "[TOOBIG] Literal too big"
    fatal: bool = False  # the stream is out of step: say BYE and close


_LITERAL_END = re.compile(rb"\{(\d{1,20})(\+?)\}\r?\n\Z")
# RFC 3501 7.1.3: a line whose tag is not a whole tag (e.g. 'a{b NOOP') gets an untagged BAD
_TAG = re.compile(rb"^([^\s(){%*\"\\+\]\x00-\x1f\x7f]+)(?=[ \r\n]|\Z)")


def tag_of(line: bytes) -> str:
    m = _TAG.match(line)
    return m.group(1).decode("ascii", "replace") if m else "*"


class CommandReader:
    """Cut a byte stream into commands; see the module docstring."""

    def __init__(self, limits: Limits | None = None):
        self.limits = limits or Limits()
        self.buf = bytearray()
        self.parts: list[bytes] = []
        self.size = 0
        self.nliterals = 0
        self.literal_left = 0
        self.discarding = False  # after an overlong line: drop bytes up to the next LF
        self.raw_lines = False  # AUTHENTICATE / IDLE: one plain line, no literal processing

    def reset(self) -> None:
        """Forget everything buffered (STARTTLS: anything pipelined before TLS is discarded)."""
        self.buf.clear()
        self.parts.clear()
        self.size = self.nliterals = self.literal_left = 0
        self.discarding = False

    def _first_line(self) -> bytes:
        return self.parts[0] if self.parts else bytes(self.buf[:200])

    def feed(self, data: bytes) -> list:
        """Add data and return every event it completes (for tests and simple callers)."""
        self.buf += data
        return list(self.events())

    def push(self, data: bytes) -> None:
        self.buf += data

    def events(self):
        """Yield events one at a time, lazily: a caller that switches raw_lines (IDLE,
        AUTHENTICATE) or stops (STARTTLS, a pending login) between two events has the rest of
        the buffer read the new way, or kept for later."""
        lim = self.limits
        while True:
            if self.literal_left:
                if not self.buf:
                    break
                take = bytes(self.buf[: self.literal_left])
                del self.buf[: len(take)]
                self.parts.append(take)
                self.literal_left -= len(take)
                continue
            nl = self.buf.find(b"\n")
            if self.discarding:
                if nl < 0:
                    self.buf.clear()
                    break
                del self.buf[: nl + 1]
                self.discarding = False
                continue
            if nl < 0:
                if len(self.buf) > lim.max_line:
                    # RFC 7162 section 4 suggests servers bound line length; say why.
                    ev = Refused(tag_of(self._first_line()), "Line too long")
                    self.parts.clear()
                    self.size = self.nliterals = 0
                    self.buf.clear()
                    self.discarding = True
                    yield ev  # (state is updated before each yield: a caller may stop here)
                break
            line = bytes(self.buf[: nl + 1])
            del self.buf[: nl + 1]
            if len(line) > lim.max_line:
                ev = Refused(tag_of(self._first_line() if self.parts else line), "Line too long")
                self.parts.clear()
                self.size = self.nliterals = 0
                yield ev
                continue
            self.size += len(line)
            m = None if self.raw_lines else _LITERAL_END.search(line)
            if m:
                n = int(m.group(1))
                sync = not m.group(2)
                tag = tag_of(self.parts[0] if self.parts else line)
                self.nliterals += 1
                problem = None
                if n > lim.max_literal:
                    problem = "[TOOBIG] Literal too big"
                elif self.size + n > lim.max_command:
                    problem = "[TOOBIG] Command too big"
                elif self.nliterals > lim.max_literals:
                    problem = "Too many literals"
                if problem:
                    self.parts.clear()
                    self.size = self.nliterals = 0
                    # RFC 7888 section 4: a refused non-synchronising literal is on its way
                    # anyway; the stream can no longer be trusted, so the connection ends.
                    if not sync:
                        self.buf.clear()
                    yield Refused(tag, problem, fatal=not sync)
                    if not sync:
                        return
                    continue
                self.parts.append(line[: m.start()] + b"{%d}\r\n" % n)
                self.literal_left = n
                if sync:
                    yield Continue()
                continue
            body = line[:-2] if line.endswith(b"\r\n") else line[:-1]
            self.parts.append(body)
            ev = Command(b"".join(self.parts))
            self.parts.clear()
            self.size = self.nliterals = 0
            yield ev


# --- grammar -------------------------------------------------------------------------------

_ATOM_SPECIALS = set(b'(){ %*"\\]') | set(range(0, 32)) | {127}
_ATOM_CHARS = bytes(c for c in range(256) if c not in _ATOM_SPECIALS and c < 128)
_ASTRING_CHARS = _ATOM_CHARS + b"]"
_LIST_CHARS = _ASTRING_CHARS + b"%*"
_atom_re = re.compile(b"[" + re.escape(_ATOM_CHARS) + b"]+")
_astring_re = re.compile(b"[" + re.escape(_ASTRING_CHARS) + b"]+")
_list_re = re.compile(b"[" + re.escape(_LIST_CHARS) + b"]+")
_literal_re = re.compile(rb"\{(\d{1,20})\+?\}\r\n")
_number_re = re.compile(rb"\d{1,10}")
# RFC 3501 9: seq-number = nz-number / "*" (a 0 is a syntax error, BAD)
_seq_re = re.compile(rb"(?:[1-9]\d*|\*)(?::(?:[1-9]\d*|\*))?(?:,(?:[1-9]\d*|\*)(?::(?:[1-9]\d*|\*))?)*|\$")


class Cursor:
    """A position in one command; methods consume grammar pieces or raise ParseError."""

    def __init__(self, data: bytes, limits: Limits | None = None):
        self.data = data
        self.pos = 0
        self.max_depth = (limits or Limits()).max_depth

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def peek(self, n: int = 1) -> bytes:
        return self.data[self.pos : self.pos + n]

    def take(self, s: bytes) -> bool:
        """Consume s (case-insensitively) if it is next."""
        if self.data[self.pos : self.pos + len(s)].upper() == s.upper():
            self.pos += len(s)
            return True
        return False

    def expect(self, s: bytes) -> None:
        if not self.take(s):
            raise ParseError(f"expected {s.decode()!r}")

    def sp(self) -> None:
        self.expect(b" ")

    def eol(self) -> None:
        if not self.at_end():
            raise ParseError("unexpected characters at end of command")

    def _re(self, rx: re.Pattern, what: str) -> bytes:
        m = rx.match(self.data, self.pos)
        if not m:
            raise ParseError(f"expected {what}")
        self.pos = m.end()
        return m.group(0)

    def atom(self) -> str:
        return self._re(_atom_re, "atom").decode("ascii")

    def number(self) -> int:
        return int(self._re(_number_re, "number"))

    def nz_number(self) -> int:
        n = self.number()
        if n == 0:
            raise ParseError("expected a non-zero number")
        return n

    def quoted(self) -> bytes:
        self.expect(b'"')
        out = bytearray()
        d = self.data
        while True:
            if self.pos >= len(d):
                raise ParseError("unterminated quoted string")
            c = d[self.pos]
            self.pos += 1
            if c == 0x22:
                return bytes(out)
            if c == 0x5C:
                if self.pos >= len(d) or d[self.pos] not in b'"\\':
                    raise ParseError("bad escape in quoted string")
                c = d[self.pos]
                self.pos += 1
            elif c in (0x0A, 0x0D, 0):
                raise ParseError("bad character in quoted string")
            out.append(c)

    def literal(self) -> bytes:
        m = _literal_re.match(self.data, self.pos)
        if not m:
            raise ParseError("expected literal")
        n = int(m.group(1))
        start = m.end()
        if start + n > len(self.data):
            raise ParseError("short literal")
        self.pos = start + n
        return self.data[start : start + n]

    def string(self) -> bytes:
        c = self.peek()
        if c == b'"':
            return self.quoted()
        if c == b"{":
            return self.literal()
        raise ParseError("expected string")

    def astring(self) -> bytes:
        c = self.peek()
        if c in (b'"', b"{"):
            return self.string()
        return self._re(_astring_re, "astring")

    def nstring_or_astring(self) -> bytes | None:
        if self.take(b"NIL"):
            return None
        return self.astring()

    def list_mailbox(self) -> bytes:
        c = self.peek()
        if c in (b'"', b"{"):
            return self.string()
        return self._re(_list_re, "list-mailbox")

    def mailbox(self) -> str:
        """A mailbox name (modified UTF-7 on the wire; 'INBOX' in any case is INBOX)."""
        raw = self.astring()
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ParseError("mailbox name is not valid UTF-8") from None
        return "INBOX" if name.upper() == "INBOX" else name

    def seqset(self) -> str:
        return self._re(_seq_re, "sequence set").decode("ascii")

    def paren_list(self, item, depth: int = 0) -> list:
        """'(' item *(SP item) ')' ; item is a callable taking this cursor."""
        if depth > self.max_depth:
            raise ParseError("nesting too deep")
        self.expect(b"(")
        out = []
        if self.take(b")"):
            return out
        while True:
            out.append(item(self))
            if self.take(b")"):
                return out
            self.sp()

    def flag(self) -> str:
        if self.take(b"\\"):
            if self.take(b"*"):
                return "\\*"
            return "\\" + self.atom()
        return self.atom()

    def flag_list(self) -> list[str]:
        return self.paren_list(lambda c: c.flag())


def parse_seqset(s: str, largest: int) -> list[tuple[int, int]]:
    """'1:3,7,9:*' -> [(1,3),(7,7),(9,largest)] with ranges ordered (RFC 3501 section 9)."""
    out = []
    for part in s.split(","):
        a, _, b = part.partition(":")
        lo = largest if a == "*" else int(a)
        hi = lo if not b else (largest if b == "*" else int(b))
        if lo > hi:
            lo, hi = hi, lo
        out.append((lo, hi))
    return out


def in_ranges(n: int, ranges: list[tuple[int, int]]) -> bool:
    for lo, hi in ranges:
        if lo <= n <= hi:
            return True
    return False


# --- output helpers --------------------------------------------------------------------------

_SAFE_QUOTED = re.compile(rb'^[\x20\x21\x23-\x5b\x5d-\x7e]*\Z')


def quote(value: bytes | str | None) -> bytes:
    """nstring: NIL, a quoted string, or a literal when it cannot be quoted."""
    if value is None:
        return b"NIL"
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    if _SAFE_QUOTED.match(value) and len(value) < 1024:
        return b'"' + value + b'"'
    if value.isascii() and b"\r" not in value and b"\n" not in value and b"\0" not in value and len(value) < 1024:
        return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(value) + value


def astring_out(value: str) -> bytes:
    b = value.encode("utf-8")
    if b and _astring_re.fullmatch(b) and b.upper() != b"NIL":
        return b
    return quote(b)


# --- modified UTF-7 (RFC 3501 section 5.1.3): one implementation, in core.maildir ----------

from mailtools.core.maildir import decode_mutf7 as mutf7_decode  # noqa: E402,F401
from mailtools.core.maildir import encode_mutf7 as mutf7_encode  # noqa: E402,F401
