"""Every SMTP reply the server sends, by name, each with its enhanced status code (RFC 3463).

Policy code (submit, relay) returns these constants or builds a new Reply with `.with_text()`;
the session turns a Reply into bytes in one place (`Reply.to_bytes`). Nothing here does I/O.
"""

from __future__ import annotations


class Reply:
    """An SMTP reply: basic code (RFC 5321 4.2), enhanced code (RFC 3463, RFC 2034), text lines."""

    __slots__ = ("code", "status", "lines", "_bytes")

    def __init__(self, code: int, status: str, *lines: str):
        self.code = code
        self.status = status
        self.lines = lines or ("",)
        self._bytes: bytes | None = None

    def with_text(self, *lines: str) -> "Reply":
        """The same codes with other text (e.g. '250 2.0.0 Ok: queued as ID')."""
        return Reply(self.code, self.status, *lines)

    @property
    def is_error(self) -> bool:
        return self.code >= 400

    def to_bytes(self) -> bytes:
        """'250-2.0.0 a\\r\\n250 2.0.0 b\\r\\n'; the enhanced code on every line (RFC 2034 3)."""
        if self._bytes is None:
            prefix = f"{self.status} " if self.status else ""
            out = []
            last = len(self.lines) - 1
            for i, line in enumerate(self.lines):
                sep = " " if i == last else "-"
                # CR/LF in a text would let a caller inject a reply line: never allowed.
                text = line.replace("\r", " ").replace("\n", " ")
                out.append(f"{self.code}{sep}{prefix}{text}".rstrip() + "\r\n")
            self._bytes = "".join(out).encode("utf-8", "replace")
        return self._bytes

    def __str__(self) -> str:
        return self.to_bytes().decode("utf-8", "replace").rstrip("\r\n")

    def __repr__(self) -> str:
        return f"Reply({self.code}, {self.status!r}, {', '.join(map(repr, self.lines))})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reply) and (self.code, self.status, self.lines) == (
            other.code, other.status, other.lines)

    def __hash__(self) -> int:
        return hash((self.code, self.status, self.lines))


def ehlo_reply(hostname: str, greeting: str, capabilities: list[str]) -> Reply:
    """The multi-line EHLO reply (RFC 5321 4.1.1.1); no enhanced code on it (RFC 2034 3)."""
    return Reply(250, "", f"{hostname} {greeting}".strip(), *capabilities)


# --- 2xx / 3xx -----------------------------------------------------------------------------
OK = Reply(250, "2.0.0", "Ok")
SENDER_OK = Reply(250, "2.1.0", "Sender ok")
RCPT_OK = Reply(250, "2.1.5", "Recipient ok")
QUEUED = Reply(250, "2.0.0", "Ok: queued")  # with_text("Ok: queued as ID")
RESET_OK = Reply(250, "2.0.0", "Reset state")
NOOP_OK = Reply(250, "2.0.0", "Ok")
HELO_OK = Reply(250, "", "Hello")  # with_text(f"{hostname}")
VRFY_CANNOT = Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
HELP = Reply(214, "2.0.0", "See RFC 5321; commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY AUTH STARTTLS")
BYE = Reply(221, "2.0.0", "Bye")
READY_FOR_TLS = Reply(220, "2.0.0", "Ready to start TLS")  # RFC 3207 4
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")  # RFC 4954 6
START_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>")  # RFC 5321 4.2.2 (no enhanced code on 354)

# --- 4xx: try again later -----------------------------------------------------------------
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, closing connection")
TIMEOUT = Reply(421, "4.4.2", "Timeout exceeded, closing connection")  # RFC 5321 4.5.3.2
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
TOO_MANY_AUTH_FAILURES = Reply(421, "4.7.0", "Too many failed authentication attempts")
TEMP_AUTH_FAILURE = Reply(454, "4.7.0", "Temporary authentication failure")  # RFC 4954 6
TLS_UNAVAILABLE = Reply(454, "4.7.0", "TLS not available due to temporary reason")  # RFC 3207 4
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")  # RFC 5321 4.5.3.1.10
QUEUE_FAILED = Reply(451, "4.3.0", "Local error: could not write the message to the queue")
INSUFFICIENT_STORAGE = Reply(452, "4.3.1", "Insufficient system storage")
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing")

# --- 5xx: permanent ----------------------------------------------------------------------
UNRECOGNIZED = Reply(500, "5.5.2", "Command unrecognized")  # RFC 5321 4.2.4
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")  # RFC 5321 4.5.3.1.4
DATA_LINE_TOO_LONG = Reply(550, "5.6.0", "Message has a line longer than 998 octets (RFC 5322 2.1.1)")
SYNTAX = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
BAD_ADDRESS_SYNTAX = Reply(501, "5.1.3", "Bad address syntax")
BAD_SENDER_SYNTAX = Reply(501, "5.1.7", "Bad sender address syntax")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
NEED_HELO = Reply(503, "5.5.1", "Send EHLO/HELO first")
NEED_MAIL = Reply(503, "5.5.1", "Need MAIL command")
NEED_RCPT = Reply(503, "5.5.1", "Need RCPT command")
NESTED_MAIL = Reply(503, "5.5.1", "Sender already specified")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Already authenticated")
AUTH_DURING_MAIL = Reply(503, "5.5.1", "AUTH not allowed during a mail transaction")  # RFC 4954 4
ALREADY_TLS = Reply(503, "5.5.1", "TLS already active")
UNKNOWN_PARAMETER = Reply(555, "5.5.4", "Unsupported MAIL/RCPT parameter")  # RFC 5321 4.1.1.11
UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication mechanism")  # RFC 4954 4
AUTH_CANCELLED = Reply(501, "5.7.0", "Authentication cancelled")  # RFC 4954 4 (5.7.0 as Postfix)
AUTH_BAD_BASE64 = Reply(501, "5.5.2", "Cannot decode the response")  # RFC 4954 4
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")  # RFC 4954 6
ENCRYPTION_REQUIRED = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
MUST_STARTTLS = Reply(530, "5.7.0", "Must issue a STARTTLS command first")  # RFC 3207 4
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")  # RFC 4954 6
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed limit")  # RFC 1870 6
NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "No valid recipients")  # RFC 5321 3.3
SENDER_NOT_OWNED = Reply(553, "5.7.1", "Sender address rejected: not owned by the authenticated user")
RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")
NO_SUCH_USER = Reply(550, "5.1.1", "Recipient address rejected: user unknown")
NEEDS_SMTPUTF8 = Reply(553, "5.6.7", "Non-ASCII address requires the SMTPUTF8 parameter")  # RFC 6531 3.5
BAD_BODY_TYPE = Reply(501, "5.5.4", "Unsupported BODY type")  # RFC 6152
NO_SERVICE = Reply(554, "5.3.2", "No SMTP service here")
MESSAGE_REFUSED = Reply(554, "5.6.0", "Message refused")
