"""Every POP3 reply the server sends, named, with the RFC that asks for it.

Response codes in brackets are RFC 2449 (IN-USE, LOGIN-DELAY) and RFC 3206 (SYS/TEMP,
SYS/PERM, AUTH); clients such as fetchmail act on them (IN-USE: try later, AUTH: ask for a new
password). Texts follow Dovecot's where a client might have been written against them.
Replies that take an argument are format strings; `line()` turns either kind into wire bytes.
"""

from __future__ import annotations


def line(text: str) -> bytes:
    """One reply line on the wire: ASCII text (UTF-8 for user data) plus CRLF."""
    return text.encode("utf-8", "replace") + b"\r\n"


# RFC 1939 4: the greeting.
GREETING = "+OK {host} mailtools POP3 ready."

# RFC 2449 5: CAPA.
OK_CAPA = "+OK Capability list follows"

# RFC 1939 7 (USER / PASS), RFC 5034 4 (AUTH).
OK_USER = "+OK"
OK_LOGGED_IN = "+OK Logged in."
ERR_NO_USER = "-ERR No username given."
ERR_PASS_WITHOUT_USER = "-ERR USER first."
ERR_AUTH_FAILED = "-ERR [AUTH] Authentication failed."  # RFC 3206 4
ERR_PLAINTEXT = "-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections."
ERR_TOO_MANY_FAILURES = "-ERR [AUTH] Too many authentication failures."
ERR_MECHANISM = "-ERR Unsupported authentication mechanism."
ERR_AUTH_ABORTED = "-ERR Authentication aborted by client."  # RFC 5034 4: "*"
ERR_AUTH_MALFORMED = "-ERR Malformed SASL PLAIN response (RFC 4616)."
ERR_AUTHZID = "-ERR [AUTH] Authorization identity must be empty or the same as the login."
OK_AUTH_MECHS = "+OK Supported mechanisms follow"
SASL_CONTINUE = "+ "  # RFC 5034 4: an empty challenge

# RFC 2449 8.1.2 / RFC 3206: the maildrop could not be opened.
ERR_IN_USE = "-ERR [IN-USE] Mailbox is locked by another POP3 session."
ERR_SYS_TEMP = "-ERR [SYS/TEMP] {detail}"
ERR_SYS_PERM = "-ERR [SYS/PERM] {detail}"

# RFC 2595 4: STLS.
OK_STLS = "+OK Begin TLS negotiation now."
ERR_TLS_ACTIVE = "-ERR TLS is already active."
ERR_TLS_UNAVAILABLE = "-ERR TLS support isn't enabled."

# RFC 1939 5: TRANSACTION state.
OK_STAT = "+OK {count} {size}"
OK_SCAN = "+OK {num} {size}"
OK_LIST = "+OK {count} messages ({size} octets)"
OK_UIDL_ONE = "+OK {num} {uidl}"
OK_UIDL = "+OK"
OK_RETR = "+OK {size} octets"
OK_TOP = "+OK"
OK_DELE = "+OK Marked to be deleted."
OK_RSET = "+OK maildrop has {count} messages ({size} octets)"
OK_NOOP = "+OK"
ERR_NO_SUCH_MESSAGE = "-ERR There's no message {arg}."
ERR_DELETED = "-ERR Message {num} is deleted."
ERR_INVALID_NUMBER = "-ERR Invalid message number: {arg}"
ERR_INVALID_LINES = "-ERR Invalid number of lines: {arg}"
ERR_MESSAGE_GONE = "-ERR [SYS/TEMP] Message {num} was removed by another session."

# RFC 1939 6: UPDATE state.
OK_BYE = "+OK Logging out."
OK_BYE_DELETED = "+OK Logging out, {count} messages deleted."
ERR_UPDATE_FAILED = "-ERR [SYS/TEMP] Some deleted messages were not removed: {detail}"

# Protocol errors and limits.
ERR_UNKNOWN = "-ERR Unknown command: {cmd}"
ERR_WRONG_STATE = "-ERR Command not valid in this state: {cmd}"
ERR_ARGS = "-ERR Invalid arguments."
ERR_LINE_TOO_LONG = "-ERR Line too long."
ERR_BAD_ENCODING = "-ERR Command line is not valid UTF-8."
ERR_TOO_MANY_BAD = "-ERR Too many invalid commands."
ERR_TIMEOUT = "-ERR Disconnected for inactivity."  # RFC 1939 3: autologout timer
ERR_SHUTDOWN = "-ERR [SYS/TEMP] Server shutting down."
ERR_TOO_MANY_CONNECTIONS = "-ERR [SYS/TEMP] Too many connections, try again later."
