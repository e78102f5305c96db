"""Differential IMAP tests: the same raw conversation against a private Dovecot imap (the
reference, namespace separator '/') and `mailtools imap-serve`, over the same messages and
folders, comparing what a client acts on: the tagged OK / NO / BAD (or a continuation, or a hang
up) for each command, and the untagged data a command is for (LIST names, STATUS counts, SEARCH
numbers, FETCH numbers, UIDs, sizes and bytes, EXISTS).

The cases read mail with BODY.PEEK and never STORE, EXPUNGE or APPEND for real, so every case
starts from the same mailbox state; folders a case creates it also deletes.
"""

from __future__ import annotations

import base64
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import support_reference as ref  # noqa: E402

_why = ref.unavailable_dovecot()
pytestmark = pytest.mark.skipif(_why is not None, reason=_why or "")

MESSAGES = [
    b"From: Bob <bob@example.test>\nTo: alice@example.test\nSubject: one\n"
    b"Date: Mon, 2 Nov 2026 10:00:01 +0000\nMessage-ID: <1@example.test>\n\nfirst body\nline two\n",
    b"From: Bob <bob@example.test>\nTo: alice@example.test\nSubject: two\n"
    b"Date: Tue, 3 Nov 2026 10:00:02 +0000\nMessage-ID: <2@example.test>\n\n.leading dot\nsecond\n",
    b"From: Carol <carol@example.test>\nTo: alice@example.test\nSubject: three\nX-Long: " + b"x" * 200
    + b"\nDate: Wed, 4 Nov 2026 10:00:03 +0000\nMessage-ID: <3@example.test>\n\n"
    + b"".join(b"body line %d\n" % i for i in range(40)),
    b"From: =?UTF-8?Q?J=C3=B6rg?= <joerg@example.test>\nTo: alice@example.test, \"Team\": a@example.test,"
    b" b@example.test;\nCc: undisclosed-recipients:;\nSubject: =?UTF-8?B?ZsO8bmY=?=\n"
    b"Date: Thu, 5 Nov 2026 10:00:04 +0100\nMessage-ID: <4@example.test>\nIn-Reply-To: <3@example.test>\n"
    b"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"outer\"\n\npreamble\n--outer\n"
    b"Content-Type: multipart/alternative; boundary=inner\n\n--inner\nContent-Type: text/plain; charset=utf-8\n"
    b"Content-Transfer-Encoding: quoted-printable\n\nf=C3=BCnf\n--inner\nContent-Type: text/html; charset=utf-8\n\n"
    b"<p>f\xc3\xbcnf</p>\n--inner--\n--outer\nContent-Type: application/octet-stream; name=\"a.bin\"\n"
    b"Content-Disposition: attachment; filename=\"a.bin\"\nContent-Transfer-Encoding: base64\n\n"
    b"AAECAwQFBgcICQ==\n--outer\nContent-Type: message/rfc822\n\nFrom: inner@example.test\nSubject: inner\n\n"
    b"inner body\n--outer--\nepilogue\n",
]
SEEN = {0}  # message 1 is \Seen (delivered into cur/ with :2,S)
FOLDERS = ["Archive", "Archive/2024", "Sent"]

LOGIN = (f'l LOGIN {ref.USER} "{ref.PASSWORD}"\r\n'.encode(), "l", None)
EXAMINE = (b"s EXAMINE INBOX\r\n", "s", None)


def cmd(tag: str, text: str, data: str | None = None) -> tuple:
    """A step: send 'tag text', read up to the tagged reply; compare `data` untagged responses."""
    return (f"{tag} {text}\r\n".encode(), tag, data)


CASES: dict[str, list] = {
    # --- any state
    "capability": [cmd("a", "CAPABILITY")],
    "noop-before-login": [cmd("a", "NOOP")],
    "logout": [cmd("a", "LOGOUT"), ("CLOSED", None, None)],
    "unknown-command": [cmd("a", "FROB"), cmd("b", "NOOP")],
    "unknown-command-after-login": [LOGIN, cmd("a", "FROB x y"), cmd("b", "NOOP")],
    "tag-only": [(b"a\r\n", "a", None), cmd("b", "NOOP")],
    "empty-line": [(b"\r\n", "*", None), cmd("b", "NOOP")],
    "bad-tag-chars": [(b"a{b NOOP\r\n", "*", None), cmd("c", "NOOP")],
    "lowercase-commands": [(f'a login {ref.USER} "{ref.PASSWORD}"\r\n'.encode(), "a", None),
                           cmd("b", "select inbox", "EXISTS"), cmd("c", "fetch 1:* (uid rfc822.size)", "FETCH"),
                           cmd("d", "uid search all", "SEARCH"), cmd("e", "logout"), ("CLOSED", None, None)],
    "pipelined": [(b"a NOOP\r\nb CAPABILITY\r\nc NOOP\r\n", "a", None), (None, "b", None), (None, "c", None)],
    "bare-lf": [(b"a NOOP\n", "a", None), (b"b CAPABILITY\n", "b", None)],
    "nul-in-command": [(b"a NO\x00OP\r\n", "a", None), cmd("b", "NOOP")],
    "starttls-without-tls": [cmd("a", "STARTTLS"), cmd("b", "NOOP")],
    # --- not authenticated
    "select-before-login": [cmd("a", "SELECT INBOX"), cmd("b", "NOOP")],
    "list-before-login": [cmd("a", 'LIST "" *')],
    "fetch-before-login": [cmd("a", "FETCH 1 FLAGS")],
    "login-wrong-password": [cmd("a", f'LOGIN {ref.USER} "wrong"'), LOGIN],
    "login-unknown-user": [cmd("a", 'LOGIN nobody@example.test "x"')],
    "login-no-arguments": [cmd("a", "LOGIN"), cmd("b", f"LOGIN {ref.USER}")],
    "login-twice": [LOGIN, cmd("a", f'LOGIN {ref.USER} "{ref.PASSWORD}"')],
    "login-literal": [(f"a LOGIN {{{len(ref.USER)}}}\r\n".encode(), "+", None),
                      (f'{ref.USER} "{ref.PASSWORD}"\r\n'.encode(), "a", None)],
    "authenticate-plain-sasl-ir": [cmd("a", "AUTHENTICATE PLAIN " + base64.b64encode(
        f"\0{ref.USER}\0{ref.PASSWORD}".encode()).decode()), cmd("b", "SELECT INBOX", "EXISTS")],
    "authenticate-unknown-mechanism": [cmd("a", "AUTHENTICATE X-UNKNOWN")],
    # --- authenticated, nothing selected
    "fetch-before-select": [LOGIN, cmd("a", "FETCH 1 FLAGS"), cmd("b", "NOOP")],
    "search-before-select": [LOGIN, cmd("a", "SEARCH ALL")],
    "store-before-select": [LOGIN, cmd("a", "STORE 1 +FLAGS (\\Seen)")],
    "close-before-select": [LOGIN, cmd("a", "CLOSE")],
    "expunge-before-select": [LOGIN, cmd("a", "EXPUNGE")],
    "uid-fetch-before-select": [LOGIN, cmd("a", "UID FETCH 1:* FLAGS")],
    "select-no-argument": [LOGIN, cmd("a", "SELECT")],
    "select-unterminated-quote": [LOGIN, cmd("a", 'SELECT "INBOX')],
    "select-lowercase-inbox": [LOGIN, cmd("a", "SELECT inbox", "EXISTS")],
    "select-nonexistent": [LOGIN, cmd("a", "SELECT Nonexistent"), cmd("b", "FETCH 1 FLAGS")],
    "select-broken-utf8": [LOGIN, (b'a SELECT "\xff\xfe"\r\n', "a", None), cmd("b", "NOOP")],
    "select-folder": [LOGIN, cmd("a", "SELECT Archive/2024", "EXISTS")],
    "examine-then-store": [LOGIN, EXAMINE, cmd("a", "STORE 1 +FLAGS (\\Flagged)"), cmd("b", "EXPUNGE")],
    # --- LIST patterns
    "list-delimiter": [LOGIN, cmd("a", 'LIST "" ""', "LIST")],
    "list-star": [LOGIN, cmd("a", 'LIST "" *', "LIST")],
    "list-percent": [LOGIN, cmd("a", 'LIST "" %', "LIST")],
    "list-percent-child": [LOGIN, cmd("a", 'LIST "" Archive/%', "LIST")],
    "list-reference": [LOGIN, cmd("a", "LIST Archive/ *", "LIST")],
    "list-inbox-any-case": [LOGIN, cmd("a", 'LIST "" inbox', "LIST")],
    "list-prefix-star": [LOGIN, cmd("a", 'LIST "" Arch*', "LIST")],
    "list-no-match": [LOGIN, cmd("a", 'LIST "" Nothing*', "LIST")],
    "list-missing-pattern": [LOGIN, cmd("a", 'LIST ""')],
    "lsub": [LOGIN, cmd("a", 'LSUB "" *')],
    "create-delete": [LOGIN, cmd("a", "CREATE Scratch"), cmd("b", 'LIST "" Scratch', "LIST"),
                      cmd("c", "DELETE Scratch"), cmd("d", 'LIST "" Scratch', "LIST")],
    "create-existing": [LOGIN, cmd("a", "CREATE Archive"), cmd("b", "CREATE INBOX")],
    "delete-inbox": [LOGIN, cmd("a", "DELETE INBOX")],
    "delete-nonexistent": [LOGIN, cmd("a", "DELETE Nonexistent")],
    "rename-nonexistent": [LOGIN, cmd("a", "RENAME Nonexistent Other")],
    # --- STATUS
    "status-counts": [LOGIN, cmd("a", "STATUS INBOX (MESSAGES UNSEEN)", "STATUS")],
    "status-all-items": [LOGIN, cmd("a", "STATUS INBOX (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)")],
    "status-folder": [LOGIN, cmd("a", "STATUS Archive (MESSAGES UNSEEN)", "STATUS")],
    "status-nonexistent": [LOGIN, cmd("a", "STATUS Nonexistent (MESSAGES)")],
    "status-unknown-item": [LOGIN, cmd("a", "STATUS INBOX (MESSAGES FROB)")],
    "status-no-items": [LOGIN, cmd("a", "STATUS INBOX")],
    "status-empty-items": [LOGIN, cmd("a", "STATUS INBOX ()")],
    # --- SEARCH
    "search-all": [LOGIN, EXAMINE, cmd("a", "SEARCH ALL", "SEARCH")],
    "search-unseen-seen": [LOGIN, EXAMINE, cmd("a", "SEARCH UNSEEN", "SEARCH"), cmd("b", "SEARCH SEEN", "SEARCH")],
    "search-subject": [LOGIN, EXAMINE, cmd("a", "SEARCH SUBJECT two", "SEARCH"),
                       cmd("b", 'SEARCH SUBJECT "T"', "SEARCH")],
    "search-from": [LOGIN, EXAMINE, cmd("a", "SEARCH FROM carol", "SEARCH")],
    "search-or-not": [LOGIN, EXAMINE, cmd("a", "SEARCH OR SUBJECT one SUBJECT three", "SEARCH"),
                      cmd("b", "SEARCH NOT SUBJECT one", "SEARCH"), cmd("c", "SEARCH NOT ALL", "SEARCH")],
    "search-sequence-sets": [LOGIN, EXAMINE, cmd("a", "SEARCH 2:*", "SEARCH"), cmd("b", "SEARCH *", "SEARCH"),
                             cmd("c", "SEARCH 1,3", "SEARCH")],
    "search-uid-star": [LOGIN, EXAMINE, cmd("a", "UID SEARCH UID 2:*", "SEARCH"),
                        cmd("b", "UID SEARCH UID 99:*", "SEARCH")],
    "search-size-date": [LOGIN, EXAMINE, cmd("a", "SEARCH LARGER 300", "SEARCH"),
                         cmd("b", "SEARCH SENTBEFORE 3-Nov-2026", "SEARCH"), cmd("c", "SEARCH BEFORE 1-Jan-2000", "SEARCH")],
    "search-header": [LOGIN, EXAMINE, cmd("a", "SEARCH HEADER X-Long xxx", "SEARCH"),
                      cmd("b", 'SEARCH HEADER Message-ID "<2@"', "SEARCH")],
    "search-body-text": [LOGIN, EXAMINE, cmd("a", "SEARCH BODY second", "SEARCH"),
                         cmd("b", "SEARCH TEXT carol", "SEARCH")],
    "search-charset": [LOGIN, EXAMINE, cmd("a", "SEARCH CHARSET UTF-8 SUBJECT one", "SEARCH"),
                       cmd("b", "SEARCH CHARSET X-UNKNOWN ALL")],
    "search-unknown-key": [LOGIN, EXAMINE, cmd("a", "SEARCH FROB")],
    "search-no-criteria": [LOGIN, EXAMINE, cmd("a", "SEARCH")],
    "search-bad-date": [LOGIN, EXAMINE, cmd("a", "SEARCH BEFORE notadate")],
    "search-zero": [LOGIN, EXAMINE, cmd("a", "SEARCH 0")],
    "search-past-end": [LOGIN, EXAMINE, cmd("a", "SEARCH 5", "SEARCH")],
    "search-unbalanced-paren": [LOGIN, EXAMINE, cmd("a", "SEARCH (SUBJECT one")],
    # --- FETCH
    "fetch-all-sizes": [LOGIN, EXAMINE, cmd("a", "FETCH 1:* (UID RFC822.SIZE)", "FETCH")],
    "fetch-star": [LOGIN, EXAMINE, cmd("a", "FETCH * UID", "FETCH")],
    "fetch-reversed-range": [LOGIN, EXAMINE, cmd("a", "FETCH 3:1 UID", "FETCH")],
    "fetch-nonexistent": [LOGIN, EXAMINE, cmd("a", "FETCH 99 FLAGS", "FETCH"), cmd("b", "NOOP")],
    "fetch-range-past-end": [LOGIN, EXAMINE, cmd("a", "FETCH 2:99 UID", "FETCH")],
    "fetch-zero": [LOGIN, EXAMINE, cmd("a", "FETCH 0 FLAGS")],
    "fetch-no-items": [LOGIN, EXAMINE, cmd("a", "FETCH 1")],
    "fetch-unknown-item": [LOGIN, EXAMINE, cmd("a", "FETCH 1 (FROB)")],
    "fetch-unbalanced-paren": [LOGIN, EXAMINE, cmd("a", "FETCH 1 (FLAGS")],
    "fetch-header-fields": [LOGIN, EXAMINE, cmd("a", "FETCH 1:* BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)]", "FETCH")],
    "fetch-body-peek": [LOGIN, EXAMINE, cmd("a", "FETCH 2 BODY.PEEK[]", "FETCH"), cmd("b", "FETCH 3 BODY.PEEK[TEXT]<0.20>", "FETCH")],
    "fetch-flags": [LOGIN, EXAMINE, cmd("a", "FETCH 1:* FLAGS", "FLAGS")],
    "uid-fetch-star": [LOGIN, EXAMINE, cmd("a", "UID FETCH 1:* UID", "FETCH"), cmd("b", "UID FETCH 99:* UID", "FETCH"),
                       cmd("c", "UID FETCH * UID", "FETCH")],
    "uid-fetch-nonexistent": [LOGIN, EXAMINE, cmd("a", "UID FETCH 99 UID", "FETCH")],
    "uid-fetch-zero": [LOGIN, EXAMINE, cmd("a", "UID FETCH 0 UID")],
    # --- mailbox-state commands
    "close-after-examine": [LOGIN, EXAMINE, cmd("a", "CLOSE"), cmd("b", "FETCH 1 FLAGS")],
    "unselect": [LOGIN, EXAMINE, cmd("a", "UNSELECT"), cmd("b", "UNSELECT")],
    "check": [LOGIN, EXAMINE, cmd("a", "CHECK")],
    "idle-done": [LOGIN, EXAMINE, (b"a IDLE\r\n", "+", None), (b"DONE\r\n", "a", None)],
    "copy-nonexistent-target": [LOGIN, EXAMINE, cmd("a", "COPY 1 Nonexistent")],
    # --- literals
    "append-nonexistent-mailbox": [LOGIN, (b"a APPEND Nonexistent {5}\r\n", "a+", None)],
    "append-nonexistent-literal-plus": [LOGIN, (b"a APPEND Nonexistent {5+}\r\nhello\r\n", "a", None),
                                        cmd("b", "NOOP")],
    "append-huge-literal": [LOGIN, (b"a APPEND INBOX {4000000000}\r\n", "a+", None)],
    "append-huge-literal-plus": [LOGIN, (b"a APPEND INBOX {4000000000+}\r\n", "a", None)],
    "literal-in-select": [LOGIN, (b"a SELECT {5}\r\n", "+", None), (b"INBOX\r\n", "a", "EXISTS")],
    "fetch-structure": [LOGIN, EXAMINE, cmd("a", "FETCH 1:* (BODYSTRUCTURE ENVELOPE INTERNALDATE)"),
                        cmd("b", "FETCH 1 (FAST)"), cmd("c", "FETCH 1 ALL"), cmd("d", "FETCH 1 FULL")],
    "fetch-envelope": [LOGIN, EXAMINE, cmd("a", "FETCH 1:* ENVELOPE", "LINES")],
    "fetch-bodystructure": [LOGIN, EXAMINE, cmd("a", "FETCH 1:* BODYSTRUCTURE", "LINES"),
                            cmd("b", "FETCH 1:* BODY", "LINES")],
    "fetch-mime-parts": [LOGIN, EXAMINE, cmd("a", "FETCH 4 (BODY.PEEK[1.1] BODY.PEEK[1.2.MIME] BODY.PEEK[2])", "LINES"),
                         cmd("b", "FETCH 4 (BODY.PEEK[3.HEADER] BODY.PEEK[3.TEXT] BODY.PEEK[9])", "LINES")],
    "search-encoded-words": [LOGIN, EXAMINE, cmd("a", "SEARCH CHARSET UTF-8 FROM {5+}\r\nJörg", "SEARCH"),
                             cmd("b", "SEARCH CHARSET UTF-8 SUBJECT {5+}\r\nfünf", "SEARCH")],
    "fetch-lowercase-items": [LOGIN, EXAMINE, cmd("a", "fetch 1:* (uid rfc822.size)", "FETCH")],
    "status-lowercase-items": [LOGIN, cmd("a", "status inbox (messages unseen)", "STATUS")],
    "status-no-parens": [LOGIN, cmd("a", "STATUS INBOX MESSAGES")],
    "list-subscribed": [LOGIN, cmd("a", 'LIST (SUBSCRIBED) "" *')],
    "list-return-children": [LOGIN, cmd("a", 'LIST "" % RETURN (CHILDREN)', "LIST")],
    "list-pattern-list": [LOGIN, cmd("a", 'LIST "" (INBOX Sent)', "LIST")],
    "list-mutf7-name": [LOGIN, cmd("a", 'CREATE "Entw&APw-rfe"'), cmd("b", 'LIST "" Entw*', "LIST"),
                        cmd("c", 'DELETE "Entw&APw-rfe"')],
    "create-trailing-delimiter": [LOGIN, cmd("a", "CREATE Scratch2/"), cmd("b", 'LIST "" Scratch2', "LIST"),
                                  cmd("c", "DELETE Scratch2")],
    "create-dotdot": [LOGIN, cmd("a", "CREATE ../escape"), cmd("b", 'LIST "" *escape*', "LIST")],
    "namespace": [LOGIN, cmd("a", "NAMESPACE")],
    "id-nil": [cmd("a", "ID NIL")],
    "enable-unknown": [LOGIN, cmd("a", "ENABLE X-FROB")],
    "idle-before-select": [LOGIN, (b"a IDLE\r\n", "+", None), (b"DONE\r\n", "a", None)],
    "idle-wrong-end": [LOGIN, EXAMINE, (b"a IDLE\r\n", "+", None), (b"STOP\r\n", "a", None), cmd("b", "NOOP")],
    "uid-copy-nonexistent-uid": [LOGIN, EXAMINE, cmd("a", "UID COPY 99 Archive")],
    "uid-store-nonexistent-uid": [LOGIN, cmd("s", "SELECT INBOX"), cmd("a", "UID STORE 99 +FLAGS (\\Flagged)"),
                                  cmd("b", "EXPUNGE")],
    "search-literal": [LOGIN, EXAMINE, (b"a SEARCH SUBJECT {3}\r\n", "+", None), (b"two\r\n", "a", "SEARCH")],
    "search-deleted-answered": [LOGIN, EXAMINE, cmd("a", "SEARCH DELETED", "SEARCH"),
                                cmd("b", "SEARCH UNANSWERED UNDRAFT", "SEARCH"), cmd("c", "SEARCH NEW", "SEARCH")],
    "fetch-uid-star-empty-range": [LOGIN, EXAMINE, cmd("a", "UID FETCH 4:* UID", "FETCH")],
    "append-bad-flags": [LOGIN, (b"a APPEND INBOX (\\Frob {5+}\r\nhello\r\n", "a", None), cmd("b", "NOOP")],
    "status-uidnext": [LOGIN, EXAMINE, cmd("a", "STATUS INBOX (MESSAGES UIDNEXT)", "STATUS"),
                       cmd("b", "STATUS Archive (MESSAGES UIDNEXT UNSEEN)", "STATUS")],
    "search-misc": [LOGIN, EXAMINE, cmd("a", "SEARCH UID 1:*", "SEARCH"), cmd("b", "SEARCH SINCE 1-Jan-2000", "SEARCH"),
                    cmd("c", "SEARCH OR SUBJECT one"), cmd("d", "SEARCH NOT"), cmd("e", "SEARCH LARGER x"),
                    cmd("f", "SEARCH SMALLER 400 NOT SEEN", "SEARCH"), cmd("g", "SEARCH ALL ALL 1:2", "SEARCH")],
    "fetch-header-variants": [LOGIN, EXAMINE, cmd("a", "FETCH 1:* (RFC822.HEADER)", "LINES"),
                              cmd("b", "FETCH 2 (BODY.PEEK[HEADER] BODY.PEEK[TEXT]<2.5>)", "LINES"),
                              cmd("c", "FETCH 1 BODY.PEEK[HEADER.FIELDS.NOT (X-Long Date)]", "LINES")],
    "append-fetch-expunge": [LOGIN, cmd("a", "CREATE Scratch3"),
                             (b"b APPEND Scratch3 (\\Seen \\Flagged) {28+}\r\nSubject: appended\r\n\r\nhello\r\n\r\n", "b", None),
                             (b"c APPEND Scratch3 {28+}\r\nSubject: appended\r\n\r\nagain\r\n\r\n", "c", None),
                             cmd("d", "STATUS Scratch3 (MESSAGES UNSEEN UIDNEXT)", "STATUS"),
                             cmd("e", "SELECT Scratch3", "EXISTS"), cmd("f", "FETCH 1:* (FLAGS BODY.PEEK[] RFC822.SIZE)", "FLAGS"),
                             cmd("g", "STORE 1 +FLAGS.SILENT (\\Deleted)"), cmd("h", "EXPUNGE"),
                             cmd("i", "FETCH 1:* (FLAGS UID)", "FLAGS"), cmd("j", "CLOSE"), cmd("k", "DELETE Scratch3")],
    "copy-move-into-folder": [LOGIN, cmd("a", "CREATE Scratch4"), cmd("s", "SELECT INBOX"),
                              cmd("b", "COPY 1:2 Scratch4"), cmd("c", "UID COPY 3 Scratch4"),
                              cmd("d", "STATUS Scratch4 (MESSAGES UNSEEN)", "STATUS"),
                              cmd("e", "SELECT Scratch4", "EXISTS"), cmd("f", "MOVE 1 INBOX"),
                              cmd("g", "FETCH 1:* (FLAGS RFC822.SIZE)", "FLAGS"),
                              cmd("h", "CLOSE"), cmd("i", "DELETE Scratch4")],
    "store-flags-in-folder": [LOGIN, cmd("a", "CREATE Scratch5"), cmd("s", "SELECT INBOX"), cmd("b", "COPY 2 Scratch5"),
                              cmd("e", "SELECT Scratch5"), cmd("f", "STORE 1 FLAGS (\\Answered $Label1)", "FLAGS"),
                              cmd("g", "STORE 1 -FLAGS (\\Answered)", "FLAGS"), cmd("h", "STORE 1 +FLAGS (\\Frob)"),
                              cmd("i", "UID STORE 1:* +FLAGS (\\Seen)", "FLAGS"), cmd("j", "SEARCH KEYWORD $Label1", "SEARCH"),
                              cmd("k", "CLOSE"), cmd("l", "DELETE Scratch5")],
    "overlong-command": [LOGIN, cmd("a", "SEARCH SUBJECT " + "x" * 100000), cmd("b", "NOOP")],
}

# Allowed differences: case -> {answer index: (reason, reference status, mailtools status)};
# index 0 is the greeting. Each is a choice an RFC leaves to the server.
ALLOWED: dict[str, dict[int, tuple]] = {
    # RFC 3501 9: a quoted string is 7-bit (QUOTED-CHAR from CHAR, %x01-7F), so 0xFF in one is
    # a syntax error (BAD); Dovecot parses it and refuses the name (NO).
    "select-broken-utf8": {2: ("RFC 3501 9", "NO", "BAD")},
    # RFC 3501 6.4.6 / 6.4.3: STORE and EXPUNGE on a mailbox opened with EXAMINE cannot change
    # it; mailtools says so (NO [READ-ONLY], RFC 3501 7.1), Dovecot says OK and ignores them.
    "examine-then-store": {3: ("RFC 3501 6.4.6, 7.1", "OK", "NO"), 4: ("RFC 3501 6.4.3, 7.1", "OK", "NO")},
    # RFC 3501 7.5: the server may refuse a command instead of sending the continuation. Dovecot
    # checks the mailbox before the literal (NO [TRYCREATE] at once), mailtools after it (the
    # LITERAL+ case shows that both then answer NO).
    "append-nonexistent-mailbox": {2: ("RFC 3501 7.5, 6.3.11", "NO", "+")},
    # RFC 3501 7.5 / RFC 7889: a literal over the size limit may be refused before it is sent;
    # mailtools does (BAD [TOOBIG]), Dovecot sends '+' and would read 4 GB before refusing.
    "append-huge-literal": {2: ("RFC 3501 7.5, RFC 7889", "+", "BAD")},
    # RFC 7888 4: a server that will not take a non-synchronizing literal must read and drop it
    # or close the connection. mailtools closes at once (* BYE [TOOBIG]); Dovecot starts to read
    # the 4 GB (no answer within the short timeout below).
    "append-huge-literal-plus": {2: ("RFC 7888 4", "timeout", "closed")},
}
SHORT_TIMEOUT = {"append-huge-literal-plus": 2.0}  # cases where silence is the answer

# RFC 6154 is silent on creating the special-use folders: mailtools creates Drafts, Junk, Sent
# and Trash for every user (as Dovecot does with `auto = create`, off in this reference), so its
# LIST may name those in addition to what the reference lists, never fewer or others.
SPECIAL_USE = {"Drafts", "Junk", "Sent", "Trash"}

_LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")


def _line(conn: ref.Conn) -> bytes:
    """One response line with any literals it carries inlined."""
    out = b""
    while True:
        line = conn.line()
        if not line:
            return out
        out += line
        m = _LITERAL.search(line)
        if not m:
            return out
        out += conn.read_exact(int(m.group(1)))


def _answer(conn: ref.Conn, tag: str) -> tuple[str, list[bytes], bytes]:
    """(status, untagged lines, final line). status: OK | NO | BAD | + | BYE | closed."""
    untagged = []
    while True:
        line = _line(conn)
        if not line:
            return ("timeout" if conn.timed_out else "closed", untagged, b"")
        if line.startswith(b"+"):
            if "+" in tag:
                return ("+", untagged, line)
            untagged.append(line)
            continue
        if tag == "*" and line.startswith(b"* "):
            return (line.split()[1].decode("ascii", "replace").upper(), untagged, line)
        first, _, rest = line.partition(b" ")
        if first == tag.rstrip("+").encode():
            return (rest.split(b" ", 1)[0].rstrip(b"\r\n").decode("ascii", "replace").upper(), untagged, line)
        untagged.append(line)


def _data(kind: str | None, untagged: list[bytes]):
    """The untagged answer a command is for, in a comparable form."""
    if kind is None:
        return None
    if kind == "EXISTS":
        return [int(l.split()[1]) for l in untagged if l.rstrip().upper().endswith(b"EXISTS")]
    if kind == "LIST":
        out = []
        for l in untagged:
            m = re.match(rb'\* (?:LIST|LSUB) \(([^)]*)\) ("/"|NIL) (.*)\r\n', l, re.I | re.S)
            if m:
                out.append((m.group(2).decode(), m.group(3).strip(b'"').decode("utf-8", "replace")))
        return sorted(out)
    if kind == "STATUS":
        for l in untagged:
            m = re.match(rb"\* STATUS .*\((.*)\)", l, re.I)
            if m:
                words = m.group(1).decode().split()
                return dict(zip(words[::2], words[1::2]))
        return None
    if kind == "SEARCH":
        nums = []
        for l in untagged:
            if l.upper().startswith(b"* SEARCH"):
                nums += [int(x) for x in l[8:].split()]
        return sorted(nums)
    if kind == "LINES":  # whole FETCH lines, as bytes: ENVELOPE, BODYSTRUCTURE, sections
        return sorted(l for l in untagged if re.match(rb"\* \d+ FETCH ", l))
    if kind in ("FETCH", "FLAGS"):
        out = []
        for l in untagged:
            m = re.match(rb"\* (\d+) FETCH \((.*)\)\r\n$", l, re.S | re.I)
            if not m:
                continue
            items = m.group(2)
            row = [int(m.group(1))]
            for key in (rb"UID (\d+)", rb"RFC822\.SIZE (\d+)"):
                k = re.search(key, items, re.I)
                row.append(int(k.group(1)) if k else None)
            lit = re.search(rb"\{(\d+)\}\r\n", items)  # the first literal's bytes, exactly
            row.append(items[lit.end():lit.end() + int(lit.group(1))] if lit else None)
            if kind == "FLAGS":
                f = re.search(rb"FLAGS \(([^)]*)\)", items, re.I)
                row.append(sorted(set(f.group(1).split()) - {b"\\Recent"}) if f else None)
            out.append(tuple(row))
        return sorted(out, key=repr)
    raise ValueError(kind)


def converse(port: int, steps: list, timeout: float = 10.0) -> list[tuple]:
    """[(status, data, final line)] per answer; the greeting first."""
    conn = ref.Conn(port, timeout=timeout)
    try:
        greet = conn.line()
        out = [(greet.split(b" ")[1].decode() if greet else "closed", None, greet)]
        for data, tag, kind in steps:
            if data == "CLOSED":
                out.append(("closed" if conn.closed() else "open", None, b""))
                continue
            if data:
                conn.send(data)
            status, untagged, last = _answer(conn, tag)
            out.append((status, _data(kind, untagged), last))
        return out
    finally:
        conn.close()


def _table(a, b) -> str:
    return "\n".join(
        f"{'  ' if (x[0], x[1]) == (y[0], y[1]) else '!!'} #{i} dovecot: {x[2][:70]!r} {x[1]!r:.60}\n"
        f"       mailtools: {y[2][:70]!r} {y[1]!r:.60}" for i, (x, y) in enumerate(zip(a, b)))


def _fill(maildir: Path) -> None:
    from mailtools.core import maildir as md

    for i, data in enumerate(MESSAGES):
        md.deliver(maildir, data, flags="S" if i in SEEN else "")
    box = md.Maildir(maildir)
    for name in FOLDERS:
        box.create_folder(name)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    yield from ref.dovecot_and_mailtools(tmp_path_factory.mktemp("mt-imap"), "imap-serve", _fill)


@pytest.mark.parametrize("case", list(CASES))
def test_same_answers(servers, case):
    dv, mt = servers
    timeout = SHORT_TIMEOUT.get(case, 10.0)
    want = converse(dv.imap_port, CASES[case], timeout)
    got = converse(mt.port, CASES[case], timeout)
    assert len(want) == len(got)
    allowed = ALLOWED.get(case, {})
    for i, (w, g) in enumerate(zip(want, got)):
        if i in allowed:
            _, w_status, g_status = allowed[i]
            assert (w[0], g[0]) == (w_status, g_status), f"allowed difference changed at #{i}:\n{_table(want, got)}"
            continue
        assert w[0] == g[0], f"{case}: answer #{i} differs:\n{_table(want, got)}"
        if CASES[case][i - 1][2] == "LIST" and w[1] != g[1]:
            extra = set(g[1]) - set(w[1])
            assert set(w[1]) <= set(g[1]) and {name for _, name in extra} <= SPECIAL_USE, (
                f"{case}: LIST differs beyond the special-use folders:\n{_table(want, got)}")
            continue
        assert w[1] == g[1], f"{case}: the data of answer #{i} differs:\n{_table(want, got)}"
