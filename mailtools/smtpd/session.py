"""A sans-I/O SMTP server session (RFC 5321) with ESMTP extensions, for submit and relay.

The session takes bytes (`feed`) and hands back events (`events`): bytes to send, "start TLS
now", "wait N seconds", "run this blocking call and give me its result", "close". It never
touches a socket, a thread or the clock, so transcript tests drive it in memory and the asyncio
server (`mailtools.smtpd.server`) only moves bytes and runs the blocking calls in a thread.

Policy lives in a handler object (see `Handler`): the session asks it about the connection,
EHLO capabilities, AUTH, MAIL FROM, RCPT TO and the message; the handler answers with a Reply
from `mailtools.smtpd.replies` (None means "accept with the default reply").

Why not aiosmtpd: its session interleaves parsing with awaits on a transport (STYLE.md), and a
small table-driven session under an asyncio.Protocol costs less per message, which matters for
the inbound throughput goal (relay --listen vs Postfix). The security properties aiosmtpd 1.4.6
added are enforced here and tested: `<CRLF>.<CRLF>` alone ends DATA; input pipelined before
STARTTLS is discarded.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any, Callable

from mailtools.smtpd import replies as R
from mailtools.smtpd.replies import Reply


# --- events the session hands to its driver -------------------------------------------------
class Send:
    """Write these bytes to the peer."""

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data

    def __repr__(self) -> str:
        return f"Send({self.data!r})"


class StartTLS:
    """Upgrade the transport to TLS now (the 220 was sent just before); then call tls_started()."""

    __slots__ = ()


class Sleep:
    """Wait this long before going on (failed-AUTH delay); the session is paused meanwhile."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float):
        self.seconds = seconds


class Call:
    """Run `fn()` (it may block: password hashing, fsync) off the event loop, then `resume(result)`."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], Any]):
        self.fn = fn


class Close:
    """Close the connection (after flushing what was sent)."""

    __slots__ = ()


# --- what the handler sees ------------------------------------------------------------------
@dataclass
class Limits:
    max_message_size: int = 50 * 1024 * 1024  # RFC 1870 SIZE
    max_recipients: int = 1000  # RFC 5321 4.5.3.1.8 (at least 100)
    max_command_line: int = 2048  # RFC 5321 4.5.3.1.4 is 512; extensions (AUTH, SIZE) need more
    max_data_line: int = 1000  # RFC 5321 4.5.3.1.6: 1000 octets with CRLF; 0 = no check
    max_errors: int = 20  # bad commands before 421
    max_auth_failures: int = 3  # then 421
    auth_fail_delay: float = 2.0  # seconds before each 535
    command_timeout: float = 300.0  # RFC 5321 4.5.3.2.7: at least 5 minutes
    data_timeout: float = 600.0  # RFC 5321 4.5.3.2.6: 10 minutes for the final dot


@dataclass
class ConnInfo:
    """What is known about one connection; handlers read it (and may keep state in .extra)."""

    peer: tuple = ("", 0)
    local: tuple = ("", 0)
    hostname: str = "localhost"  # ours: banner, Received
    helo: str | None = None
    esmtp: bool = False
    tls: dict | None = None  # {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384", "bits": 256}
    tls_available: bool = False  # STARTTLS can be offered
    auth_user: str | None = None
    loopback: bool = False
    session_id: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def peer_ip(self) -> str:
        return str(self.peer[0]) if self.peer else ""


@dataclass
class Transaction:
    """One mail transaction: MAIL FROM, RCPT TOs and their parameters (RFC 5321 3.3)."""

    sender: str = ""
    mail_params: dict = field(default_factory=dict)
    recipients: list = field(default_factory=list)
    rcpt_params: list = field(default_factory=list)
    body: str = "7BIT"
    smtputf8: bool = False
    size: int | None = None  # the SIZE parameter, when given


class Handler:
    """Policy hooks; subclass and override. Every hook is synchronous and quick, except
    `auth` and `data` which may block (password hashing, fsync): the server runs those in a
    thread. A hook returns a Reply to refuse (or to answer with its own text), None to accept.
    """

    #: offer AUTH PLAIN LOGIN (over TLS, or on loopback, or when allow_plaintext_auth)
    auth_mechanisms: tuple = ()
    allow_plaintext_auth: bool = False

    def connect(self, info: ConnInfo) -> Reply | None:
        """Return a Reply (e.g. 554 5.3.2) to refuse the connection, None for the banner."""
        return None

    def ehlo(self, info: ConnInfo, capabilities: list[str]) -> list[str]:
        return capabilities

    def auth(self, info: ConnInfo, authzid: str, user: str, password: str) -> bool | Reply:
        """May block. True: authenticated as `user`; False: 535; a Reply: sent as is (454)."""
        return False

    def mail_from(self, info: ConnInfo, tx: Transaction, address: str) -> Reply | None:
        return None

    def rcpt_to(self, info: ConnInfo, tx: Transaction, address: str) -> Reply | None:
        return None

    def data(self, info: ConnInfo, tx: Transaction, message: bytes) -> Reply:
        """May block. The message has CRLF line ends, dot-unstuffed. Return QUEUED (or an error)."""
        return R.QUEUED

    def disconnect(self, info: ConnInfo) -> None:
        return None


# --- the state table ------------------------------------------------------------------------
# States: CONNECTED (before EHLO), READY (after EHLO, no transaction), MAIL (sender given),
# RCPT (at least one recipient), DATA (reading the message), AUTH (waiting for a SASL response),
# BUSY (waiting for a Call/Sleep), CLOSED.
CONNECTED, READY, MAIL, RCPT, DATA, AUTH, BUSY, CLOSED = (
    "connected", "ready", "mail", "rcpt", "data", "auth", "busy", "closed")
_ANY = frozenset({CONNECTED, READY, MAIL, RCPT})
ALLOWED: dict[str, frozenset] = {
    "EHLO": _ANY, "HELO": _ANY, "NOOP": _ANY, "RSET": _ANY, "QUIT": _ANY, "HELP": _ANY, "VRFY": _ANY,
    "STARTTLS": frozenset({READY}),
    "AUTH": frozenset({READY}),
    "MAIL": frozenset({READY}),
    "RCPT": frozenset({MAIL, RCPT}),
    "DATA": frozenset({RCPT}),
}
# The reply for a command that is known but not allowed in the current state.
_OUT_OF_SEQUENCE = {
    ("MAIL", CONNECTED): R.NEED_HELO, ("STARTTLS", CONNECTED): R.NEED_HELO,
    ("AUTH", CONNECTED): R.NEED_HELO, ("RCPT", CONNECTED): R.NEED_MAIL,
    ("DATA", CONNECTED): R.NEED_MAIL,
    ("MAIL", MAIL): R.NESTED_MAIL, ("MAIL", RCPT): R.NESTED_MAIL,
    ("RCPT", READY): R.NEED_MAIL, ("DATA", READY): R.NEED_MAIL,
    ("DATA", MAIL): R.NO_VALID_RECIPIENTS,
    ("AUTH", MAIL): R.AUTH_DURING_MAIL, ("AUTH", RCPT): R.AUTH_DURING_MAIL,
}
_NOT_IMPLEMENTED = frozenset({"EXPN", "TURN", "ETRN", "BDAT", "SEND", "SOML", "SAML", "ATRN"})


def _b64(text: str) -> bytes:
    return base64.b64encode(text.encode()).rstrip(b"\n")


class Session:
    """One SMTP server conversation. Drive it with: start(); then feed(bytes) and consume
    events() until it returns nothing new; on Call run fn and resume(result); on Sleep wait and
    resume(None); on StartTLS upgrade and tls_started(info)."""

    greeting = "ESMTP mailtools"

    def __init__(self, handler: Handler, info: ConnInfo, limits: Limits | None = None):
        self.handler = handler
        self.info = info
        self.limits = limits or Limits()
        self.state = CONNECTED
        self.tx: Transaction | None = None
        self._buf = bytearray()
        self._out: list = []
        self._errors = 0
        self._auth_failures = 0
        self._skipping = False  # discarding the rest of an over-long command line
        self._resume: Callable[[Any], None] | None = None
        self._after_busy = READY
        # DATA reading state
        self._data = bytearray()
        self._data_scan = 0
        self._data_overflow = False
        self._auth_step: Callable[[bytes], None] | None = None

    # --- driver API ------------------------------------------------------------------------
    def start(self) -> list:
        """The greeting (or the handler's refusal), as events."""
        refusal = self.handler.connect(self.info)
        if refusal is not None:
            self._reply(refusal)
            if refusal.is_error:
                self._close()
            return self._take()
        self._reply(Reply(220, "", f"{self.info.hostname} {self.greeting}"))
        return self._take()

    @property
    def timeout(self) -> float:
        """How long the driver may wait for input in the current state (RFC 5321 4.5.3.2)."""
        return self.limits.data_timeout if self.state == DATA else self.limits.command_timeout

    @property
    def closed(self) -> bool:
        return self.state == CLOSED

    def feed(self, data: bytes) -> list:
        """Add received bytes; returns the events they cause."""
        if self.state == CLOSED:
            return []
        self._buf += data
        self._process()
        return self._take()

    def resume(self, result: Any) -> list:
        """The result of the last Call (or None after a Sleep); returns the events that follow."""
        fn, self._resume = self._resume, None
        if fn is not None:
            fn(result)
        self._process()
        return self._take()

    def tls_started(self, tls: dict | None) -> list:
        """The transport is now TLS (RFC 3207 4.2: forget everything, EHLO again)."""
        self.info.tls = tls or {}
        self.info.helo = None
        self.info.esmtp = False
        self.info.auth_user = None
        self.tx = None
        self.state = CONNECTED
        self._buf.clear()
        self._process()
        return self._take()

    def timed_out(self) -> list:
        self._reply(R.TIMEOUT)
        self._close()
        return self._take()

    def shutdown(self) -> list:
        self._reply(R.SHUTTING_DOWN)
        self._close()
        return self._take()

    # --- internals -------------------------------------------------------------------------
    def _take(self) -> list:
        out, self._out = self._out, []
        if len(out) < 2:
            return out
        # merge adjacent Sends (pipelined replies go out in one write, RFC 2920 3.2)
        merged: list = []
        for ev in out:
            if isinstance(ev, Send) and merged and isinstance(merged[-1], Send):
                merged[-1] = Send(merged[-1].data + ev.data)
            else:
                merged.append(ev)
        return merged

    def _reply(self, reply: Reply) -> None:
        self._out.append(Send(reply.to_bytes()))

    def _close(self) -> None:
        self.state = CLOSED
        self._buf.clear()
        self._out.append(Close())

    def _call(self, fn: Callable[[], Any], then: Callable[[Any], None]) -> None:
        self._after_busy = self.state
        self.state = BUSY
        self._resume = then
        self._out.append(Call(fn))

    def _sleep(self, seconds: float, then: Callable[[Any], None]) -> None:
        self._after_busy = self.state
        self.state = BUSY
        self._resume = then
        self._out.append(Sleep(seconds))

    def _error(self, reply: Reply) -> None:
        self._reply(reply)
        self._errors += 1
        if self._errors >= self.limits.max_errors:
            self._reply(R.TOO_MANY_ERRORS)
            self._close()

    def _process(self) -> None:
        while self.state not in (BUSY, CLOSED):
            if self.state == DATA:
                if not self._read_data():
                    return
                continue
            line = self._next_line()
            if line is None:
                return
            if self.state == AUTH:
                step, self._auth_step = self._auth_step, None
                self.state = READY
                step(line)
            else:
                self._command(line)

    def _next_line(self) -> bytes | None:
        """One command line without its line end; CRLF or bare LF ends it (RFC 5321 2.3.8
        allows us to be liberal here, not in DATA). Over-long lines are answered with 500 5.5.2
        and skipped up to their end."""
        limit = self.limits.max_command_line
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > limit:  # RFC 5321 4.5.3.1.4
                    self._buf.clear()
                    if not self._skipping:
                        self._skipping = True
                        self._error(R.LINE_TOO_LONG)
                return None
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            if self._skipping:  # the tail of an over-long line
                self._skipping = False
                continue
            if nl > limit:
                self._error(R.LINE_TOO_LONG)
                if self.state == CLOSED:
                    return None
                continue
            return line[:-1] if line.endswith(b"\r") else line

    def _command(self, line: bytes) -> None:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self._error(R.SYNTAX)
            return
        verb, _, arg = text.partition(" ")
        verb = verb.upper()
        allowed = ALLOWED.get(verb)
        if allowed is None:
            self._error(R.NOT_IMPLEMENTED if verb in _NOT_IMPLEMENTED else R.UNRECOGNIZED)
            return
        if self.state not in allowed:
            self._error(_OUT_OF_SEQUENCE.get((verb, self.state), R.BAD_SEQUENCE))
            return
        getattr(self, "_cmd_" + verb.lower())(arg.strip())

    # --- commands --------------------------------------------------------------------------
    def _capabilities(self) -> list[str]:
        caps = [f"SIZE {self.limits.max_message_size}", "8BITMIME", "SMTPUTF8", "PIPELINING",
                "ENHANCEDSTATUSCODES"]
        if self.info.tls_available and self.info.tls is None:
            caps.append("STARTTLS")
        if self._auth_offered():
            caps.append("AUTH " + " ".join(self.handler.auth_mechanisms))
        return self.handler.ehlo(self.info, caps)

    def _auth_offered(self) -> bool:
        # DESIGN.md: AUTH only over TLS unless the listener is on loopback or the config allows it.
        return bool(self.handler.auth_mechanisms) and (
            self.info.tls is not None or self.info.loopback or self.handler.allow_plaintext_auth)

    def _cmd_ehlo(self, arg: str, esmtp: bool = True) -> None:
        if not arg:
            self._error(R.SYNTAX.with_text("EHLO/HELO needs a domain or address literal"))
            return
        self.info.helo, self.info.esmtp = arg.split()[0], esmtp
        self.tx = None  # RFC 5321 4.1.4: EHLO resets the transaction
        self.state = READY
        if esmtp:
            self._reply(R.ehlo_reply(self.info.hostname, "Hello " + self.info.helo,
                                     self._capabilities()))
        else:
            self._reply(R.HELO_OK.with_text(self.info.hostname))

    def _cmd_helo(self, arg: str) -> None:
        self._cmd_ehlo(arg, esmtp=False)

    def _cmd_noop(self, arg: str) -> None:
        self._reply(R.NOOP_OK)

    def _cmd_help(self, arg: str) -> None:
        self._reply(R.HELP)

    def _cmd_vrfy(self, arg: str) -> None:
        self._reply(R.VRFY_CANNOT if arg else R.SYNTAX)

    def _cmd_rset(self, arg: str) -> None:
        if arg:  # RFC 5321 4.1.1.5: rset = "RSET" CRLF (as Postfix: 501 5.5.4)
            self._error(R.SYNTAX.with_text("Syntax: RSET"))
            return
        self.tx = None
        if self.state != CONNECTED:
            self.state = READY
        self._reply(R.RESET_OK)

    def _cmd_quit(self, arg: str) -> None:
        self._reply(R.BYE)
        self._close()

    def _cmd_starttls(self, arg: str) -> None:
        if self.info.tls is not None:
            self._error(R.ALREADY_TLS)
            return
        if not self.info.tls_available:
            self._error(R.NOT_IMPLEMENTED)
            return
        if arg:
            self._error(R.SYNTAX)
            return
        self._reply(R.READY_FOR_TLS)
        # RFC 3207 6 / CVE-2011-0411: anything the client pipelined after STARTTLS in the
        # clear is thrown away, never executed inside the TLS session.
        self._buf.clear()
        self.state = BUSY
        self._out.append(StartTLS())

    # AUTH (RFC 4954) -----------------------------------------------------------------------
    def _cmd_auth(self, arg: str) -> None:
        if self.info.auth_user is not None:
            self._error(R.ALREADY_AUTHENTICATED)
            return
        parts = arg.split()
        if not parts or len(parts) > 2:
            self._error(R.SYNTAX)
            return
        mech = parts[0].upper()
        if not self.handler.auth_mechanisms or mech not in self.handler.auth_mechanisms:
            self._error(R.UNKNOWN_MECHANISM)
            return
        if not self._auth_offered():
            self._error(R.ENCRYPTION_REQUIRED)  # RFC 4954 4: 538 5.7.11
            return
        initial = parts[1] if len(parts) > 1 else None
        if mech == "PLAIN":
            if initial is None:
                self._challenge(b"", self._auth_plain)
            else:
                self._auth_plain(initial.encode())
        elif mech == "LOGIN":
            if initial is None:
                self._challenge(_b64("Username:"), self._auth_login_user)
            else:
                self._auth_login_user(initial.encode())

    def _challenge(self, data: bytes, step: Callable[[bytes], None]) -> None:
        self._out.append(Send(b"334 " + data + b"\r\n"))
        self.state = AUTH
        self._auth_step = step

    def _decode(self, line: bytes) -> str | None:
        if line.strip() == b"*":
            self._error(R.AUTH_CANCELLED)
            return None
        if line.strip() == b"=":  # RFC 4954 4: an empty initial response
            return ""
        try:
            return base64.b64decode(line.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            self._error(R.AUTH_BAD_BASE64)
            return None

    def _auth_plain(self, line: bytes) -> None:
        text = self._decode(line)
        if text is None:
            return
        parts = text.split("\0")
        if len(parts) != 3 or not parts[1]:
            self._error(R.AUTH_BAD_BASE64.with_text("Invalid PLAIN response"))
            return
        self._verify(parts[0], parts[1], parts[2])

    def _auth_login_user(self, line: bytes) -> None:
        user = self._decode(line)
        if user is None:
            return
        self._challenge(_b64("Password:"), lambda l: self._auth_login_pass(user, l))

    def _auth_login_pass(self, user: str, line: bytes) -> None:
        password = self._decode(line)
        if password is None:
            return
        self._verify("", user, password)

    def _verify(self, authzid: str, user: str, password: str) -> None:
        handler, info = self.handler, self.info
        self._call(lambda: handler.auth(info, authzid, user, password),
                   lambda result: self._auth_done(user, authzid, result))

    def _auth_done(self, user: str, authzid: str, result: Any) -> None:
        self.state = READY
        if isinstance(result, Reply):
            self._reply(result)
            return
        if result is True and (not authzid or authzid == user):
            self.info.auth_user = user
            self._reply(R.AUTH_OK)
            return
        # RFC 4954 6 / DESIGN.md: failed logins are delayed (the handler logs them).
        self._auth_failures += 1
        self._sleep(self.limits.auth_fail_delay, lambda _: self._auth_failed())

    def _auth_failed(self) -> None:
        self.state = READY
        self._reply(R.AUTH_FAILED)
        if self._auth_failures >= self.limits.max_auth_failures:
            self._reply(R.TOO_MANY_AUTH_FAILURES)
            self._close()

    # MAIL / RCPT ---------------------------------------------------------------------------
    @staticmethod
    def _path(arg: str, keyword: str) -> tuple[str, list[str]] | None:
        """'FROM:<a@b> SIZE=1' -> ('a@b', ['SIZE=1']); None when malformed (RFC 5321 4.1.2)."""
        if arg[: len(keyword)].upper() != keyword:
            return None
        rest = arg[len(keyword):].lstrip(" ")
        if not rest.startswith("<"):
            return None
        if '"' not in rest:  # the common case: no quoted local part, the first '>' ends it
            i = rest.find(">")
            if i < 0:
                return None
        else:
            i = Session._quoted_end(rest)
            if i is None:
                return None
        address = rest[1:i]
        if ":" in address and address.startswith("@"):  # source route (RFC 5321 C): ignore it
            address = address.split(":", 1)[1]
        params = rest[i + 1:].split()
        if rest[i + 1:i + 2] not in ("", " "):
            return None
        return address, params

    @staticmethod
    def _quoted_end(rest: str) -> int | None:
        """Index of the '>' that closes '<...>' when the path holds a quoted string."""
        i, quoted = 1, False
        while i < len(rest):
            c = rest[i]
            if c == "\\" and quoted:
                i += 2
                continue
            if c == '"':
                quoted = not quoted
            elif c == ">" and not quoted:
                return i
            i += 1
        return None

    def _cmd_mail(self, arg: str) -> None:
        parsed = self._path(arg, "FROM:")
        if parsed is None:
            # RFC 3463 3.2: a path that is there but malformed is X.1.7 (as Postfix answers);
            # a missing FROM: or path is a command syntax error, X.5.4.
            bad_path = arg[:5].upper() == "FROM:" and arg[5:].strip()
            self._error(R.BAD_SENDER_SYNTAX if bad_path else
                        R.SYNTAX.with_text("Syntax: MAIL FROM:<address> [parameters]"))
            return
        address, params = parsed
        tx = Transaction(sender=address)
        for p in params:
            key, _, value = p.partition("=")
            key = key.upper()
            tx.mail_params[key] = value
            if key == "SIZE":  # RFC 1870
                if not (value.isascii() and value.isdigit()):  # ('²' is a digit to isdigit(), not to int())
                    self._error(R.SYNTAX.with_text("Bad SIZE parameter"))
                    return
                tx.size = int(value)
                if tx.size > self.limits.max_message_size:
                    self._reply(R.MESSAGE_TOO_BIG)
                    return
            elif key == "BODY":  # RFC 6152
                if value.upper() not in ("7BIT", "8BITMIME"):
                    self._error(R.BAD_BODY_TYPE)
                    return
                tx.body = value.upper()
            elif key == "SMTPUTF8" and not value:  # RFC 6531 3.4
                tx.smtputf8 = True
            elif key == "AUTH":  # RFC 4954 5: accepted, not trusted
                pass
            else:
                self._error(R.UNKNOWN_PARAMETER)
                return
        if not address.isascii() and not tx.smtputf8:
            self._reply(R.NEEDS_SMTPUTF8)
            return
        if address and ("@" not in address or any(c in address for c in "\r\n\0 ")):
            self._reply(R.BAD_SENDER_SYNTAX)
            return
        refusal = self.handler.mail_from(self.info, tx, address)
        if refusal is not None and refusal.is_error:
            self._error(refusal)  # policy refusals count too (Postfix's smtpd_hard_error_limit)
            return
        self.tx = tx
        self.state = MAIL
        self._reply(refusal or R.SENDER_OK)

    def _cmd_rcpt(self, arg: str) -> None:
        parsed = self._path(arg, "TO:")
        if parsed is None or not parsed[0]:
            # RFC 3463 3.2: a malformed or empty path is X.1.3 (as Postfix answers); a missing
            # TO: or path is a command syntax error, X.5.4.
            bad_path = arg[:3].upper() == "TO:" and arg[3:].strip()
            self._error(R.BAD_ADDRESS_SYNTAX if bad_path else
                        R.SYNTAX.with_text("Syntax: RCPT TO:<address> [parameters]"))
            return
        address, params = parsed
        tx = self.tx
        assert tx is not None
        if params:
            self._error(R.UNKNOWN_PARAMETER)
            return
        if len(tx.recipients) >= self.limits.max_recipients:
            self._reply(R.TOO_MANY_RECIPIENTS)  # RFC 5321 4.5.3.1.10: 452, the client retries
            return
        if not address.isascii() and not tx.smtputf8:
            self._reply(R.NEEDS_SMTPUTF8)
            return
        if address.lower() != "postmaster" and (
                "@" not in address or any(c in address for c in "\r\n\0 ")):
            self._reply(R.BAD_ADDRESS_SYNTAX)
            return
        refusal = self.handler.rcpt_to(self.info, tx, address)
        if refusal is not None and refusal.is_error:
            self._error(refusal)  # e.g. guessing local users: ends after max_errors
            return
        tx.recipients.append(address)
        tx.rcpt_params.append(params)
        self.state = RCPT
        self._reply(refusal or R.RCPT_OK)

    # DATA ----------------------------------------------------------------------------------
    def _cmd_data(self, arg: str) -> None:
        if arg:
            self._error(R.SYNTAX)
            return
        self._reply(R.START_DATA)
        self.state = DATA
        # The CRLF that ended the DATA command counts as the one before a lone '.', so a
        # message of just ".\r\n" is empty; start the buffer with it.
        self._data = bytearray(b"\r\n")
        self._data_scan = 0
        self._data_overflow = False

    def _read_data(self) -> bool:
        """Move input into the message until <CRLF>.<CRLF>; True when the message ended.

        RFC 5321 4.1.1.4 / 2.3.8: only <CRLF>.<CRLF> ends the data. A bare LF, '<LF>.<LF>' or
        '<LF>.<CRLF>' is message content (the SMTP smuggling defence), never an end.
        """
        if not self._buf:
            return False
        self._data += self._buf
        self._buf.clear()
        end = self._data.find(b"\r\n.\r\n", self._data_scan)
        if end < 0:
            if self._data_overflow or len(self._data) > self.limits.max_message_size + 8:
                # RFC 1870 6.3: keep reading (and discarding) to the end, then 552. The last
                # 4 bytes stay, so an end marker split across reads is still found.
                self._data_overflow = True
                del self._data[:-4]
            self._data_scan = max(len(self._data) - 4, 0)
            return False
        self._buf[:0] = self._data[end + 5:]
        body = bytes(self._data[: end + 2])  # with the leading CRLF and the final CRLF
        self._data = bytearray()
        self.state = READY
        tx, self.tx = self.tx, None
        assert tx is not None
        if self._data_overflow or len(body) - 2 > self.limits.max_message_size:
            self._reply(R.MESSAGE_TOO_BIG)
            return True
        # RFC 5321 4.5.2: remove the first '.' of every line that starts with one.
        message = body.replace(b"\r\n.", b"\r\n")[2:]
        if self.limits.max_data_line and _longest_line(message) > self.limits.max_data_line:
            self._reply(R.DATA_LINE_TOO_LONG)
            return True
        handler, info = self.handler, self.info
        self._call(lambda: handler.data(info, tx, message), self._data_done)
        return True

    def _data_done(self, result: Any) -> None:
        self.state = READY
        self._reply(result if isinstance(result, Reply) else R.LOCAL_ERROR)


def _longest_line(message: bytes) -> int:
    """Length of the longest line, CRLF included (cheap: only splits when it could matter)."""
    if len(message) < 1000:
        return 0
    return max(map(len, message.split(b"\n"))) + 1


def run_blocking(session: Session, events: list, on_send: Callable[[bytes], None],
                 on_sleep: Callable[[float], None] | None = None,
                 on_starttls: Callable[[], dict | None] | None = None) -> bool:
    """Drive events synchronously (transcripts, `sendmail -bs`): Calls run inline, Sleeps via
    on_sleep (default: no wait), StartTLS via on_starttls (returns the TLS details; without it
    the session ends). Returns False once the session closed."""
    pending = list(events)
    while pending:
        ev = pending.pop(0)
        if isinstance(ev, Send):
            on_send(ev.data)
        elif isinstance(ev, Call):
            try:
                result = ev.fn()
            except Exception:  # noqa: BLE001 - a handler bug must not kill the session
                result = R.LOCAL_ERROR
            pending[:0] = session.resume(result)
        elif isinstance(ev, Sleep):
            if on_sleep is not None:
                on_sleep(ev.seconds)
            pending[:0] = session.resume(None)
        elif isinstance(ev, StartTLS):
            if on_starttls is None:
                return False
            pending[:0] = session.tls_started(on_starttls())
        elif isinstance(ev, Close):
            return False
    return not session.closed
