"""The POP3 protocol as a sans-I/O state machine (RFC 1939, 2449, 2595, 3206, 5034).

A `Session` takes the bytes a client sent (`receive`) and hands back, one command at a time
(`next_events`), what the transport must do: bytes to write, or an action it has to carry out
and report back (`Login` -> `login_result`, `StartTLS` -> `tls_started`, `Delay`, `Close`).
The session never touches a socket; it reads messages through the `Maildrop` the backend
returned at login, so transcript tests can run it in memory.

States (RFC 1939 3): AUTHORIZATION -> TRANSACTION -> UPDATE (after QUIT). Which command is
allowed where is the `COMMANDS` table at the bottom, next to the handlers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from mailtools.pop3 import replies as R
from mailtools.pop3.replies import line

AUTHORIZATION = "AUTHORIZATION"
TRANSACTION = "TRANSACTION"
UPDATE = "UPDATE"

MAX_LINE = 4096  # RFC 2449 4 allows 255 octets for a command; SASL responses may be longer
MAX_BAD_COMMANDS = 20  # as Dovecot
MAX_AUTH_FAILURES = 3
MAX_NUMBER_DIGITS = 9  # message numbers and TOP line counts


# --- What the backend raises at login (the transport passes it to login_result) ---------


class AuthFailed(Exception):
    """Wrong user name or password."""


class InUse(Exception):
    """Another POP3 session holds the maildrop lock (RFC 2449 8.1.2 IN-USE)."""


class MaildropError(Exception):
    """The maildrop could not be opened or read; the text is shown to the client."""


class MessageGone(Exception):
    """The message file vanished (expunged through IMAP while this session held it)."""


class Maildrop(Protocol):
    """What the session needs from an open, locked maildrop (see maildrop.py)."""

    def __len__(self) -> int: ...
    def size(self, index: int) -> int: ...  # CRLF octets
    def uidl(self, index: int) -> str: ...
    def read(self, index: int) -> bytes: ...  # the message with CRLF line ends
    def commit(self, deleted: Sequence[int], retrieved: Sequence[int]) -> None: ...
    def close(self) -> None: ...


class Backend(Protocol):
    def login(self, user: str, password: str) -> Maildrop: ...


# --- Events for the transport --------------------------------------------------------------


@dataclass(frozen=True)
class Login:
    """Run `backend.login(user, password)` (off the event loop), then call `login_result`."""

    user: str
    password: str


@dataclass(frozen=True)
class StartTLS:
    """Start the TLS handshake on the connection, then call `tls_started`."""


@dataclass(frozen=True)
class Delay:
    """Wait this many seconds before carrying on with the next events (failed logins)."""

    seconds: float


@dataclass(frozen=True)
class Close:
    """Close the connection once everything before it is written."""


Event = "bytes | Login | StartTLS | Delay | Close"
CLOSE = Close()


class _Error(Exception):
    """A command failed: carries its reply; one place (`_dispatch`) turns it into bytes."""

    def __init__(self, reply: str, *, bad: bool = False, **fmt):
        super().__init__(reply)
        self.reply = reply.format(**fmt) if fmt else reply
        self.bad = bad  # counts towards MAX_BAD_COMMANDS


_DOT_LINE = re.compile(rb"\n\.").search


def multiline(first: bytes, data: bytes) -> bytes:
    """A reply line plus a CRLF message as a dot-stuffed multi-line body (RFC 1939 3)."""
    if _DOT_LINE(data):  # a compiled search is twice as fast as `b"\n." in data` here
        data = data.replace(b"\n.", b"\n..")
    if data.startswith(b"."):
        data = b"." + data
    end = b".\r\n" if not data or data.endswith(b"\r\n") else b"\r\n.\r\n"
    return b"".join((first, data, end))


def dot_stuff(data: bytes) -> bytes:
    """A CRLF message as a multi-line response body, terminator included."""
    return multiline(b"", data)


def top_of(data: bytes, lines: int) -> bytes:
    """The header, the blank line and the first `lines` body lines (RFC 1939 7 TOP)."""
    if data.startswith(b"\r\n"):
        end = 0
    else:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return data
        end += 2
    body = end + 2
    pos = body
    for _ in range(lines):
        nl = data.find(b"\r\n", pos)
        if nl < 0:
            return data
        pos = nl + 2
    return data[:pos]


def _number(arg: str, reply: str = R.ERR_INVALID_NUMBER) -> int:
    if not arg.isdigit() or not arg.isascii() or len(arg) > MAX_NUMBER_DIGITS:
        raise _Error(reply, bad=True, arg=arg[:20])
    return int(arg)


class Session:
    """One POP3 conversation. See the module docstring for the event protocol."""

    def __init__(
        self,
        backend: Backend,
        *,
        hostname: str = "localhost",
        tls_active: bool = False,
        tls_available: bool = False,
        plaintext_ok: bool = False,
        fail_delay: float = 2.0,
        implementation: str = "mailtools",
    ):
        self.backend = backend
        self.hostname = hostname
        self.tls_active = tls_active
        self.tls_available = tls_available and not tls_active
        self.plaintext_ok = plaintext_ok
        self.fail_delay = fail_delay
        self.implementation = implementation
        self.state = AUTHORIZATION
        self.user: str | None = None  # from USER, waiting for PASS
        self.login_name: str | None = None  # being checked, then logged in
        self.counts = {"retr": 0, "retr_bytes": 0, "top": 0, "top_bytes": 0}  # for the log
        self.maildrop: Maildrop | None = None
        self.maildrop_size = 0  # messages at login
        self.deleted: set[int] = set()
        self.retrieved: set[int] = set()
        self._multi: dict = {}  # LIST/UIDL bodies and the total size, until DELE or RSET
        self.bad_commands = 0
        self.auth_failures = 0
        self.closed = False
        self._buf = bytearray()
        self._discarding = False  # inside an overlong line: drop up to its LF
        self._sasl: Callable[[str], list] | None = None  # waiting for a SASL response line

    # --- driving the session -----------------------------------------------------------

    def greeting(self) -> list:
        return [line(R.GREETING.format(host=self.hostname))]

    def receive(self, data: bytes) -> None:
        if not self.closed:
            self._buf += data

    def pending(self) -> int:
        """Octets received and not yet handled (the transport stops reading past a limit)."""
        return len(self._buf)

    def internal_error(self) -> list:
        """A bug in a handler: tell the client, release the maildrop, delete nothing."""
        return [line(R.ERR_SYS_TEMP.format(detail="Internal error, try again later.")), *self._close()]

    def next_events(self) -> list | None:
        """Handle the next complete line in the buffer; None when there is none."""
        if self.closed:
            return None
        buf = self._buf
        nl = buf.find(b"\n")
        if self._discarding:
            if nl < 0:
                buf.clear()
                return None
            del buf[: nl + 1]
            self._discarding = False
            self._sasl = None
            return self._bad(R.ERR_LINE_TOO_LONG)
        if nl < 0:
            if len(buf) > MAX_LINE:
                buf.clear()
                self._discarding = True
                return None
            return None
        if nl > MAX_LINE:
            del buf[: nl + 1]
            self._sasl = None
            return self._bad(R.ERR_LINE_TOO_LONG)
        raw = bytes(buf[:nl])
        del buf[: nl + 1]
        sasl, self._sasl = self._sasl, None  # a SASL exchange takes exactly one line
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return self._bad(R.ERR_BAD_ENCODING)
        if "\0" in text or "\r" in text:
            return self._bad(R.ERR_ARGS)
        if sasl is not None:
            return self._dispatch(sasl, text)
        return self._command(text)

    def login_result(self, result: "Maildrop | BaseException") -> list:
        """What `backend.login` returned (a maildrop) or raised."""
        if isinstance(result, BaseException):
            self.login_name = None
        if isinstance(result, AuthFailed):
            self.auth_failures += 1
            self.user = None
            if self.auth_failures >= MAX_AUTH_FAILURES:
                return [Delay(self.fail_delay), line(R.ERR_TOO_MANY_FAILURES), *self._close()]
            return [Delay(self.fail_delay), line(R.ERR_AUTH_FAILED)]
        if isinstance(result, InUse):
            self.user = None
            return [line(R.ERR_IN_USE)]
        if isinstance(result, BaseException):
            self.user = None
            detail = str(result) if isinstance(result, MaildropError) else "Cannot open the mailbox."
            return [line(R.ERR_SYS_TEMP.format(detail=detail))]
        self.maildrop = result
        self.maildrop_size = len(result)
        self.state = TRANSACTION
        self.user = None
        return [line(R.OK_LOGGED_IN)]

    def tls_started(self) -> None:
        """RFC 2595 4: after the handshake the client starts over (a fresh CAPA, USER)."""
        self.tls_active = True
        self.tls_available = False
        self.user = None
        self._buf.clear()

    def timeout(self) -> list:
        return [line(R.ERR_TIMEOUT), *self._close()]

    def shutdown(self) -> list:
        return [line(R.ERR_SHUTDOWN), *self._close()]

    def connection_lost(self) -> None:
        """The client went away: release the maildrop, delete nothing (RFC 1939 6)."""
        self._close()

    # --- dispatch --------------------------------------------------------------------------

    def _close(self) -> list:
        if self.maildrop is not None:
            md, self.maildrop = self.maildrop, None
            md.close()
        self.closed = True
        self._buf.clear()
        return [CLOSE]

    def _bad(self, reply: str) -> list:
        self.bad_commands += 1
        if self.bad_commands >= MAX_BAD_COMMANDS:
            return [line(reply), line(R.ERR_TOO_MANY_BAD), *self._close()]
        return [line(reply)]

    def _command(self, text: str) -> list:
        verb, _, arg = text.partition(" ")
        name = verb.upper()
        entry = COMMANDS.get(name)
        if entry is None:
            return self._bad(R.ERR_UNKNOWN.format(cmd=verb[:20]))
        handler, states = entry
        if self.state not in states:
            return self._bad(R.ERR_WRONG_STATE.format(cmd=name))
        return self._dispatch(handler, arg)

    def _dispatch(self, handler: Callable, arg: str) -> list:
        try:
            return handler(self, arg)
        except _Error as exc:
            if exc.bad:
                return self._bad(exc.reply)
            return [line(exc.reply)]

    def _message(self, arg: str) -> int:
        """A message number argument -> 0-based index of a message not marked deleted."""
        num = _number(arg)
        assert self.maildrop is not None
        if not 1 <= num <= len(self.maildrop):
            raise _Error(R.ERR_NO_SUCH_MESSAGE, arg=num)
        if num - 1 in self.deleted:
            raise _Error(R.ERR_DELETED, num=num)
        return num - 1

    def _read(self, index: int) -> bytes:
        assert self.maildrop is not None
        try:
            return self.maildrop.read(index)
        except MessageGone:
            raise _Error(R.ERR_MESSAGE_GONE, num=index + 1) from None
        except OSError as exc:
            raise _Error(R.ERR_SYS_TEMP, detail=f"Cannot read message {index + 1}: {exc.strerror}") from None

    def _totals(self) -> tuple[int, int]:
        """(messages, octets) not marked deleted; the octets are summed once per change."""
        md = self.maildrop
        assert md is not None
        size = self._multi.get("SIZE")
        if size is None:
            size = sum(md.size(i) for i in range(len(md)) if i not in self.deleted)
            self._multi["SIZE"] = size
        return len(md) - len(self.deleted), size

    # --- AUTHORIZATION -----------------------------------------------------------------

    def capabilities(self) -> list[str]:
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self.state == AUTHORIZATION:
            if self.tls_active or self.plaintext_ok:
                caps += ["USER", "SASL PLAIN"]
            if self.tls_available:
                caps.append("STLS")
        caps.append(f"IMPLEMENTATION {self.implementation}")
        return caps

    def cmd_capa(self, arg: str) -> list:
        if arg:
            raise _Error(R.ERR_ARGS, bad=True)
        body = "".join(c + "\r\n" for c in self.capabilities()).encode()
        return [line(R.OK_CAPA) + body + b".\r\n"]

    def _check_plaintext(self) -> None:
        # RFC 2595 2.1 / DESIGN.md: no passwords in the clear off loopback unless configured.
        if not (self.tls_active or self.plaintext_ok):
            raise _Error(R.ERR_PLAINTEXT)

    def cmd_user(self, arg: str) -> list:
        self._check_plaintext()
        if not arg or " " in arg:
            self.user = None
            raise _Error(R.ERR_NO_USER if not arg else R.ERR_ARGS, bad=True)
        self.user = arg
        return [line(R.OK_USER)]

    def cmd_pass(self, arg: str) -> list:
        self._check_plaintext()
        if self.user is None:
            raise _Error(R.ERR_PASS_WITHOUT_USER, bad=True)
        # RFC 1939 7: the password is the rest of the line (it may contain spaces).
        user, self.user = self.user, None
        self.login_name = user
        return [Login(user, arg)]

    def cmd_auth(self, arg: str) -> list:
        if not arg:
            # The form without arguments lists mechanisms (an old extension clients probe).
            mechs = "PLAIN\r\n" if (self.tls_active or self.plaintext_ok) else ""
            return [line(R.OK_AUTH_MECHS) + mechs.encode() + b".\r\n"]
        mech, _, initial = arg.partition(" ")
        if mech.upper() != "PLAIN":
            raise _Error(R.ERR_MECHANISM, bad=True)
        self._check_plaintext()
        if initial:  # RFC 5034 4: initial response; "=" is an empty one
            return self._sasl_plain("" if initial == "=" else initial)
        self._sasl = Session._sasl_plain
        return [line(R.SASL_CONTINUE)]

    def _sasl_plain(self, response: str) -> list:
        if response == "*":
            raise _Error(R.ERR_AUTH_ABORTED)
        from mailtools.core.auth import decode_sasl_plain

        try:
            authzid, authcid, password = decode_sasl_plain(response)
        except ValueError:
            raise _Error(R.ERR_AUTH_MALFORMED, bad=True) from None
        if authzid and authzid != authcid:
            raise _Error(R.ERR_AUTHZID)
        self.login_name = authcid
        return [Login(authcid, password)]

    def cmd_stls(self, arg: str) -> list:
        if arg:
            raise _Error(R.ERR_ARGS, bad=True)
        if self.tls_active:
            raise _Error(R.ERR_TLS_ACTIVE)
        if not self.tls_available:
            raise _Error(R.ERR_TLS_UNAVAILABLE)
        # RFC 2595 4: anything the client pipelined after STLS is discarded.
        self._buf.clear()
        return [line(R.OK_STLS), StartTLS()]

    def cmd_quit(self, arg: str) -> list:
        if self.state == AUTHORIZATION:
            return [line(R.OK_BYE), *self._close()]
        # RFC 1939 6: UPDATE state, deletions happen only here.
        self.state = UPDATE
        assert self.maildrop is not None
        try:
            self.maildrop.commit(sorted(self.deleted), sorted(self.retrieved - self.deleted))
        except OSError as exc:
            reply = line(R.ERR_UPDATE_FAILED.format(detail=exc.strerror or str(exc)))
        else:
            n = len(self.deleted)
            reply = line(R.OK_BYE_DELETED.format(count=n) if n else R.OK_BYE)
        return [reply, *self._close()]

    # --- TRANSACTION -------------------------------------------------------------------

    def cmd_stat(self, arg: str) -> list:
        if arg:
            raise _Error(R.ERR_ARGS, bad=True)
        count, size = self._totals()
        return [line(R.OK_STAT.format(count=count, size=size))]

    def cmd_list(self, arg: str) -> list:
        md = self.maildrop
        assert md is not None
        if arg:
            i = self._message(arg)
            return [line(R.OK_SCAN.format(num=i + 1, size=md.size(i)))]
        count, size = self._totals()
        body = self._multi.get("LIST")
        if body is None:
            deleted = self.deleted
            body = "".join(f"{i + 1} {md.size(i)}\r\n" for i in range(len(md)) if i not in deleted).encode()
            self._multi["LIST"] = body
        return [line(R.OK_LIST.format(count=count, size=size)) + body + b".\r\n"]

    def cmd_uidl(self, arg: str) -> list:
        md = self.maildrop
        assert md is not None
        if arg:
            i = self._message(arg)
            return [line(R.OK_UIDL_ONE.format(num=i + 1, uidl=md.uidl(i)))]
        body = self._multi.get("UIDL")
        if body is None:
            deleted = self.deleted
            body = "".join(f"{i + 1} {md.uidl(i)}\r\n" for i in range(len(md)) if i not in deleted).encode()
            self._multi["UIDL"] = body
        return [line(R.OK_UIDL) + body + b".\r\n"]

    def cmd_retr(self, arg: str) -> list:
        i = self._message(arg)
        data = self._read(i)
        self.retrieved.add(i)
        self.counts["retr"] += 1
        self.counts["retr_bytes"] += len(data)
        return [multiline(line(R.OK_RETR.format(size=len(data))), data)]

    def cmd_top(self, arg: str) -> list:
        parts = arg.split(" ")
        if len(parts) != 2:
            raise _Error(R.ERR_ARGS, bad=True)
        i = self._message(parts[0])
        n = _number(parts[1], R.ERR_INVALID_LINES)
        data = top_of(self._read(i), n)
        self.counts["top"] += 1
        self.counts["top_bytes"] += len(data)
        return [multiline(line(R.OK_TOP), data)]

    def cmd_dele(self, arg: str) -> list:
        i = self._message(arg)
        self.deleted.add(i)
        self._multi.clear()
        return [line(R.OK_DELE)]

    def cmd_rset(self, arg: str) -> list:
        if arg:
            raise _Error(R.ERR_ARGS, bad=True)
        self.deleted.clear()
        self._multi.clear()
        count, size = self._totals()
        return [line(R.OK_RSET.format(count=count, size=size))]

    def cmd_noop(self, arg: str) -> list:
        if arg:
            raise _Error(R.ERR_ARGS, bad=True)
        return [line(R.OK_NOOP)]


_BOTH = (AUTHORIZATION, TRANSACTION)
_AUTH = (AUTHORIZATION,)
_TRANS = (TRANSACTION,)

# RFC 1939 / 2449 / 2595 / 5034: command -> (handler, states it is valid in).
COMMANDS: dict[str, tuple[Callable[[Session, str], list], tuple[str, ...]]] = {
    "CAPA": (Session.cmd_capa, _BOTH),
    "USER": (Session.cmd_user, _AUTH),
    "PASS": (Session.cmd_pass, _AUTH),
    "AUTH": (Session.cmd_auth, _AUTH),
    "STLS": (Session.cmd_stls, _AUTH),
    "QUIT": (Session.cmd_quit, _BOTH),
    "STAT": (Session.cmd_stat, _TRANS),
    "LIST": (Session.cmd_list, _TRANS),
    "UIDL": (Session.cmd_uidl, _TRANS),
    "RETR": (Session.cmd_retr, _TRANS),
    "TOP": (Session.cmd_top, _TRANS),
    "DELE": (Session.cmd_dele, _TRANS),
    "RSET": (Session.cmd_rset, _TRANS),
    "NOOP": (Session.cmd_noop, _TRANS),
}
