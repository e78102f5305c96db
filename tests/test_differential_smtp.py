"""Differential SMTP tests: the same raw conversation, line by line, against a private Postfix
(smtpd + virtual(8) into a Maildir, the reference) and `mailtools relay --listen` (the inbound MX),
comparing what a client acts on: the reply code class (2/3/4/5), the enhanced status code class
(e.g. 5.5 vs 5.7, RFC 3463) and whether the server hung up.

Where the two differ and an RFC leaves the choice to the server, the case carries the allowed
difference in ALLOWED with the RFC section that permits it; everything else must match.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import support_reference as ref  # noqa: E402

_why = ref.unavailable_postfix()
pytestmark = pytest.mark.skipif(_why is not None, reason=_why or "")

EHLO = b"EHLO client.example.test\r\n"
FROM = b"MAIL FROM:<sender@example.test>\r\n"
TO = b"RCPT TO:<alice@example.test>\r\n"
MSG = b"Subject: differential\r\n\r\nhello\r\n.\r\n"

# Each case: steps of (bytes to send, number of replies to read). The banner is read first.
# A trailing ("CLOSED", 0) step asks whether the server has hung up.
CASES: dict[str, list] = {
    "unknown-command": [(EHLO, 1), (b"FROB x\r\n", 1), (b"NOOP\r\n", 1)],
    "empty-line": [(EHLO, 1), (b"\r\n", 1), (b"NOOP\r\n", 1)],
    "rcpt-before-mail": [(EHLO, 1), (TO, 1)],
    "data-before-mail": [(EHLO, 1), (b"DATA\r\n", 1)],
    "data-before-rcpt": [(EHLO, 1), (FROM, 1), (b"DATA\r\n", 1)],
    "data-after-refused-rcpt": [(EHLO, 1), (FROM, 1), (b"RCPT TO:<nobody@example.test>\r\n", 1),
                                (b"DATA\r\n", 1)],
    "nested-mail": [(EHLO, 1), (FROM, 1), (FROM, 1)],
    "mail-without-helo": [(FROM, 1)],
    "mail-from-no-brackets": [(EHLO, 1), (b"MAIL FROM:foo\r\n", 1)],
    "mail-from-unclosed-bracket": [(EHLO, 1), (b"MAIL FROM:<sender@example.test\r\n", 1)],
    "mail-from-empty": [(EHLO, 1), (b"MAIL FROM:\r\n", 1)],
    "mail-from-no-colon": [(EHLO, 1), (b"MAIL FROM <sender@example.test>\r\n", 1)],
    "mail-to-instead-of-from": [(EHLO, 1), (b"MAIL TO:<sender@example.test>\r\n", 1)],
    "mail-from-space-in-address": [(EHLO, 1), (b"MAIL FROM:<a b@example.test>\r\n", 1)],
    "mail-from-junk-after-bracket": [(EHLO, 1), (b"MAIL FROM:<sender@example.test>x\r\n", 1)],
    "rcpt-unclosed-bracket": [(EHLO, 1), (FROM, 1), (b"RCPT TO:<alice@example.test\r\n", 1)],
    "rcpt-to-empty": [(EHLO, 1), (FROM, 1), (b"RCPT TO:\r\n", 1)],
    "rcpt-from-instead-of-to": [(EHLO, 1), (FROM, 1), (b"RCPT FROM:<alice@example.test>\r\n", 1)],
    "rcpt-junk-after-bracket": [(EHLO, 1), (FROM, 1), (b"RCPT TO:<alice@example.test>x\r\n", 1)],
    "rcpt-bare-postmaster": [(EHLO, 1), (FROM, 1), (b"RCPT TO:<postmaster>\r\n", 1),
                             (b"RCPT TO:<Postmaster>\r\n", 1), (b"DATA\r\n", 1), (MSG, 1)],
    "rcpt-postmaster-at-domain": [(EHLO, 1), (FROM, 1), (b"RCPT TO:<postmaster@example.test>\r\n", 1)],
    "mail-from-null-sender": [(EHLO, 1), (b"MAIL FROM:<>\r\n", 1), (TO, 1), (b"DATA\r\n", 1), (MSG, 1)],
    "mail-no-from": [(EHLO, 1), (b"MAIL\r\n", 1)],
    "mail-from-garbage-after": [(EHLO, 1), (b"MAIL FROM:<sender@example.test> junk\r\n", 1)],
    "mail-from-unknown-param": [(EHLO, 1), (b"MAIL FROM:<sender@example.test> FOO=bar\r\n", 1)],
    "mail-from-size-too-big": [(EHLO, 1), (b"MAIL FROM:<sender@example.test> SIZE=99999999999\r\n", 1)],
    "mail-from-space-after-colon": [(EHLO, 1), (b"MAIL FROM: <sender@example.test>\r\n", 1)],
    "mail-from-source-route": [(EHLO, 1), (b"MAIL FROM:<@a.example.test:sender@example.test>\r\n", 1)],
    "mail-from-broken-utf8": [(EHLO, 1), (b"MAIL FROM:<s\xff\xfe@example.test>\r\n", 1), (b"NOOP\r\n", 1)],
    "rcpt-no-brackets": [(EHLO, 1), (FROM, 1), (b"RCPT TO:alice@example.test\r\n", 1)],
    "rcpt-empty": [(EHLO, 1), (FROM, 1), (b"RCPT TO:<>\r\n", 1)],
    "rcpt-no-to": [(EHLO, 1), (FROM, 1), (b"RCPT\r\n", 1)],
    "rcpt-unknown-user": [(EHLO, 1), (FROM, 1), (b"RCPT TO:<nobody@example.test>\r\n", 1)],
    "rcpt-relay-denied": [(EHLO, 1), (FROM, 1), (b"RCPT TO:<someone@remote.test>\r\n", 1)],
    "rcpt-case-insensitive-domain": [(EHLO, 1), (FROM, 1), (b"RCPT TO:<alice@EXAMPLE.TEST>\r\n", 1)],
    "rcpt-unknown-param": [(EHLO, 1), (FROM, 1), (b"RCPT TO:<alice@example.test> FOO=bar\r\n", 1)],
    "full-delivery": [(EHLO, 1), (FROM, 1), (TO, 1), (b"DATA\r\n", 1), (MSG, 1), (b"QUIT\r\n", 1),
                      ("CLOSED", 0)],
    "lowercase-commands": [(b"ehlo client.example.test\r\n", 1), (b"mail from:<sender@example.test>\r\n", 1),
                           (b"rcpt to:<alice@example.test>\r\n", 1), (b"data\r\n", 1), (MSG, 1),
                           (b"quit\r\n", 1)],
    "mixed-case-commands": [(b"eHlO client.example.test\r\n", 1), (b"MaIl FrOm:<sender@example.test>\r\n", 1),
                            (b"RsEt\r\n", 1), (b"NoOp\r\n", 1)],
    "pipelined-transaction": [(EHLO + FROM + TO + b"DATA\r\n", 4), (MSG + b"QUIT\r\n", 2), ("CLOSED", 0)],
    "pipelined-with-refused-rcpt": [(EHLO + FROM + b"RCPT TO:<nobody@example.test>\r\n" + TO + b"DATA\r\n", 5),
                                    (MSG, 1)],
    "quit-mid-transaction": [(EHLO, 1), (FROM, 1), (TO, 1), (b"QUIT\r\n", 1), ("CLOSED", 0)],
    "quit-during-mail": [(EHLO, 1), (FROM, 1), (b"QUIT\r\n", 1), ("CLOSED", 0)],
    "rset-clears-transaction": [(EHLO, 1), (FROM, 1), (TO, 1), (b"RSET\r\n", 1), (b"DATA\r\n", 1), (FROM, 1)],
    "rset-before-helo": [(b"RSET\r\n", 1)],
    "noop-with-argument": [(EHLO, 1), (b"NOOP hello there\r\n", 1)],
    "vrfy-user": [(EHLO, 1), (b"VRFY alice@example.test\r\n", 1)],
    "vrfy-no-argument": [(EHLO, 1), (b"VRFY\r\n", 1)],
    "expn": [(EHLO, 1), (b"EXPN staff\r\n", 1)],
    "help": [(EHLO, 1), (b"HELP\r\n", 1)],
    "helo-no-argument": [(b"HELO\r\n", 1)],
    "ehlo-no-argument": [(b"EHLO\r\n", 1)],
    "helo-then-mail": [(b"HELO client.example.test\r\n", 1), (FROM, 1), (TO, 1)],
    "ehlo-address-literal": [(b"EHLO [192.0.2.1]\r\n", 1), (FROM, 1)],
    "ehlo-twice-resets": [(EHLO, 1), (FROM, 1), (EHLO, 1), (TO, 1)],
    "data-with-argument": [(EHLO, 1), (FROM, 1), (TO, 1), (b"DATA now\r\n", 1)],
    "starttls-not-offered": [(EHLO, 1), (b"STARTTLS\r\n", 1), (b"NOOP\r\n", 1)],
    "auth-not-offered": [(EHLO, 1), (b"AUTH PLAIN AGFsaWNlAHB3\r\n", 1), (b"NOOP\r\n", 1)],
    "overlong-command": [(EHLO, 1), (b"NOOP " + b"x" * 5000 + b"\r\n", 1), (b"NOOP\r\n", 1)],
    "overlong-local-part": [(EHLO, 1), (FROM, 1), (b"RCPT TO:<" + b"a" * 300 + b"@example.test>\r\n", 1)],
    "bare-lf-commands": [(b"EHLO client.example.test\n", 1), (b"MAIL FROM:<sender@example.test>\n", 1),
                         (b"RCPT TO:<alice@example.test>\n", 1), (b"RSET\n", 1)],
    "nul-in-command": [(EHLO, 1), (b"NO\x00OP\r\n", 1), (b"NOOP\r\n", 1)],
    "nul-in-address": [(EHLO, 1), (b"MAIL FROM:<sen\x00der@example.test>\r\n", 1), (b"NOOP\r\n", 1)],
    "bare-lf-dot-in-data": [(EHLO, 1), (FROM, 1), (TO, 1), (b"DATA\r\n", 1),
                            (b"Subject: x\r\n\r\nhello\n.\nmore\r\n.\r\n", 1), (b"NOOP\r\n", 1)],
    "dot-stuffed-data": [(EHLO, 1), (FROM, 1), (TO, 1), (b"DATA\r\n", 1),
                         (b"Subject: x\r\n\r\n..leading dot\r\n.\r\n", 1)],
    "bdat": [(EHLO, 1), (FROM, 1), (TO, 1), (b"BDAT 5 LAST\r\nhello", 1), (b"NOOP\r\n", 1)],
    "turn": [(EHLO, 1), (b"TURN\r\n", 1)],
    "vrfy-unknown-user": [(EHLO, 1), (b"VRFY nobody@example.test\r\n", 1)],
    "noop-vrfy-rset-before-helo": [(b"NOOP\r\n", 1), (b"VRFY alice@example.test\r\n", 1), (b"RSET\r\n", 1)],
    "rset-with-argument": [(EHLO, 1), (b"RSET now\r\n", 1)],
    "quit-with-argument": [(EHLO, 1), (b"QUIT now\r\n", 1), ("CLOSED", 0)],
    "mail-smtputf8": [(EHLO, 1), ("MAIL FROM:<jörg@example.test> SMTPUTF8\r\n".encode(), 1), (TO, 1)],
    "mail-utf8-without-smtputf8": [(EHLO, 1), ("MAIL FROM:<jörg@example.test>\r\n".encode(), 1)],
    "mail-body-8bitmime": [(EHLO, 1), (b"MAIL FROM:<sender@example.test> BODY=8BITMIME\r\n", 1)],
    "mail-body-unknown": [(EHLO, 1), (b"MAIL FROM:<sender@example.test> BODY=FROB\r\n", 1)],
    "mail-size-not-a-number": [(EHLO, 1), (b"MAIL FROM:<sender@example.test> SIZE=abc\r\n", 1)],
    "mail-size-fits": [(EHLO, 1), (b"MAIL FROM:<sender@example.test> SIZE=1000\r\n", 1)],
    "ehlo-double-space": [(b"EHLO  client.example.test\r\n", 1), (FROM, 1)],
    "helo-after-transaction": [(EHLO, 1), (FROM, 1), (TO, 1), (b"HELO again.example.test\r\n", 1), (b"DATA\r\n", 1)],
    "long-data-line": [(EHLO, 1), (FROM, 1), (TO, 1), (b"DATA\r\n", 1),
                       (b"Subject: x\r\n\r\n" + b"y" * 1500 + b"\r\n.\r\n", 1)],
    "nul-in-data": [(EHLO, 1), (FROM, 1), (TO, 1), (b"DATA\r\n", 1), (b"Subject: x\r\n\r\na\x00b\r\n.\r\n", 1)],
    "data-after-data": [(EHLO, 1), (FROM, 1), (TO, 1), (b"DATA\r\n", 1), (MSG, 1), (b"DATA\r\n", 1)],
    "two-transactions": [(EHLO, 1), (FROM, 1), (TO, 1), (b"DATA\r\n", 1), (MSG, 1),
                         (FROM, 1), (TO, 1), (b"DATA\r\n", 1), (MSG, 1)],
}

# Allowed differences: case -> {reply index: (reason, reference shape, mailtools shape)}.
# The reply index counts the banner as 0. Each entry is a choice an RFC leaves to the server.
ALLOWED: dict[str, dict[int, tuple]] = {
    # RFC 5321 4.1.4: "a client MUST issue HELO or EHLO before starting a mail transaction";
    # Postfix lets it pass (smtpd_helo_required = no), mailtools enforces it with 503 5.5.1.
    "mail-without-helo": {1: ("RFC 5321 4.1.4", "2xx", "5xx 5.5")},
    # RFC 5321 4.1.2: Reverse-path / Forward-path are "<" ... ">"; Postfix accepts a bare
    # address (strict_rfc821_envelopes = no), mailtools refuses it as bad address syntax.
    "mail-from-no-brackets": {2: ("RFC 5321 4.1.2", "2xx", "5xx 5.1")},
    "rcpt-no-brackets": {3: ("RFC 5321 4.1.2", "2xx", "5xx 5.1")},
    # RFC 5321 4.1.1.8: HELP is optional (it is not in the 4.5.1 minimum set); Postfix does
    # not implement it (500 5.5.2), mailtools answers 214.
    "help": {2: ("RFC 5321 4.1.1.8, 4.5.1", "5xx 5.5", "2xx")},
    # RFC 5321 4.5.3.1.4 (512 octets per command line) and 4.2.2 ("500 ... command line too
    # long"): mailtools answers 500 5.5.2; Postfix reads up to line_length_limit, drops the rest
    # of the line and runs what it read.
    "overlong-command": {2: ("RFC 5321 4.5.3.1.4, 4.2.2", "2xx", "5xx 5.5")},
    # RFC 5321 2.3.8 / 4.1.1.4: only <CRLF>.<CRLF> ends the data (smuggling: DESIGN.md). Postfix
    # 3.7 (smtpd_forbid_bare_newline = no) ends the data at <LF>.<LF> and takes the rest as
    # commands; mailtools keeps reading the data and answers the NOOP after it.
    "bare-lf-dot-in-data": {6: ("RFC 5321 2.3.8, 4.1.1.4", "5xx 5.5", "2xx")},
    # RFC 3030: BDAT exists only where CHUNKING is advertised; mailtools does not offer it
    # (502 5.5.1), Postfix does. The 5 octets then run into the next line on mailtools.
    "bdat": {4: ("RFC 3030 2, RFC 5321 4.2.4", "2xx", "5xx 5.5"), 5: ("RFC 3030 2", "2xx", "5xx 5.5")},
    # RFC 5321 3.5.3 / 7.3: a server may answer every VRFY with 252 so that addresses cannot be
    # harvested; Postfix (disable_vrfy_command = no) tells unknown users apart with 550 5.1.1.
    "vrfy-unknown-user": {2: ("RFC 5321 3.5.3, 7.3", "5xx 5.1", "2xx")},
    # RFC 6531 3.4 / 3.5: a non-ASCII address needs the SMTPUTF8 parameter (553 5.6.7 without
    # it); Postfix takes it anyway.
    "mail-utf8-without-smtputf8": {2: ("RFC 6531 3.4, 3.5", "2xx", "5xx 5.6")},
}


def _reply(conn: ref.Conn) -> tuple:
    """(code, enhanced status or '', text of the last line); (0, '', '') when the server hung up."""
    lines = []
    while True:
        line = conn.line()
        if not line:
            return (0, "", "closed") if not lines else _parse(lines)
        lines.append(line)
        if line[3:4] != b"-":
            return _parse(lines)


def _parse(lines: list[bytes]) -> tuple:
    last = lines[-1].decode("utf-8", "replace").rstrip("\r\n")
    try:
        code = int(last[:3])
    except ValueError:
        return (-1, "", last)
    words = last[4:].split(" ", 1)
    status = words[0] if words and words[0][:1] in "245" and words[0].count(".") == 2 else ""
    return (code, status, last)


def shape(reply: tuple):
    """What a client acts on: the code class and, for a refusal, the enhanced status class."""
    code, status, _ = reply
    if code <= 0:
        return "closed" if code == 0 else "garbage"
    if code >= 400 and status:
        return f"{code // 100}xx {'.'.join(status.split('.')[:2])}"
    return f"{code // 100}xx"


def same(a: tuple, b: tuple) -> bool:
    """Equal shapes; the enhanced class only counts when both sent one (RFC 2034 3: before EHLO
    a server need not send enhanced codes, and Postfix does not)."""
    if shape(a) == shape(b):
        return True
    return bool(a[0] > 0 and b[0] > 0 and a[0] // 100 == b[0] // 100 and not (a[1] and b[1]))


def converse(port: int, steps: list) -> list[tuple]:
    conn = ref.Conn(port)
    try:
        out = [_reply(conn)]
        for data, n in steps:
            if data == "CLOSED":
                out.append((0, "", "closed") if conn.closed() else (-2, "", "still open"))
                continue
            conn.send(data)
            for _ in range(n):
                out.append(_reply(conn))
        return out
    finally:
        conn.close()


def mailtools_mx(tmp: Path) -> ref.Mailtools:
    """`mailtools relay --listen` for example.test with the users alice and postmaster."""
    mt = ref.Mailtools(tmp, "relay", '[dns]\nnameservers = ["127.0.0.1:9"]\ntimeout = 1\n')
    lines = []
    for local in ("alice", "postmaster"):
        (mt.root / "mail" / "example.test" / local / "new").mkdir(parents=True)
        lines.append(ref.users_line(f"{local}@example.test"))
    (mt.root / "users").write_text("".join(lines))
    return mt.start()


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    pf = ref.Postfix()
    try:
        pf.start()
    except (RuntimeError, TimeoutError, OSError) as e:
        pf.stop()
        pytest.skip(f"the private Postfix would not start: {e}")
    try:
        mt = mailtools_mx(tmp_path_factory.mktemp("mt-smtp"))
    except Exception:
        pf.stop()
        raise
    yield pf, mt
    mt.stop()
    pf.stop()


def _table(ids, a, b) -> str:
    rows = []
    for i, (x, y) in enumerate(zip(a, b)):
        mark = "  " if same(x, y) else "!!"
        rows.append(f"{mark} #{i} postfix: {x[2]!r:70}  mailtools: {y[2]!r}")
    return "\n".join(rows)


@pytest.mark.parametrize("case", list(CASES))
def test_same_answers(servers, case):
    pf, mt = servers
    want = converse(pf.port, CASES[case])
    got = converse(mt.port, CASES[case])
    assert len(want) == len(got)
    allowed = ALLOWED.get(case, {})
    for i, (w, g) in enumerate(zip(want, got)):
        if i in allowed:
            _, ref_shape, mt_shape = allowed[i]
            assert (shape(w), shape(g)) == (ref_shape, mt_shape), (
                f"allowed difference changed at #{i}:\n{_table(case, want, got)}")
            continue
        assert same(w, g), f"{case}: reply #{i} differs:\n{_table(case, want, got)}"



def test_bare_postmaster_lands_in_the_postmaster_maildir(servers):
    """RFC 5321 4.5.1: RCPT TO:<postmaster> is accepted (both sides, above) and on mailtools the
    message reaches postmaster@ the first local domain. (Postfix qualifies it with $myorigin,
    which this reference instance has no mailbox for: where it goes is local policy.)"""
    _, mt = servers
    steps = [(EHLO, 1), (FROM, 1), (b"RCPT TO:<postmaster>\r\n", 1), (b"DATA\r\n", 1), (MSG, 1)]
    new = mt.root / "mail" / "example.test" / "postmaster" / "new"
    before = len(os.listdir(new))
    assert [shape(r) for r in converse(mt.port, steps)] == ["2xx", "2xx", "2xx", "2xx", "3xx", "2xx"]
    assert len(os.listdir(new)) == before + 1


def _stored_body(new: Path, marker: bytes) -> bytes | None:
    """The body of the one message in new/ that carries marker (other cases deliver too)."""
    found = [p.read_bytes() for p in new.iterdir() if marker in p.read_bytes()]
    assert len(found) <= 1, found
    return found[0].split(b"\n\n", 1)[1] if found else None


def test_stored_body_is_the_same(servers):
    """The bytes a Maildir reader sees: dot-unstuffed (RFC 5321 4.5.2), the body unchanged,
    stored with LF line ends by both (virtual(8) and mailtools)."""
    pf, mt = servers
    body = (b"plain line\r\n..one leading dot\r\n...two leading dots\r\n.\tdot tab\r\n"
            b"trailing spaces   \r\n\r\n\r\nlast line")
    marker = f"<stored.{os.getpid()}.{time.time()}@example.test>".encode()
    msg = b"Subject: stored\r\nMessage-ID: " + marker + b"\r\n\r\n" + body + b"\r\n.\r\n"
    steps = [(EHLO, 1), (FROM, 1), (TO, 1), (b"DATA\r\n", 1), (msg, 1)]
    pf_new, mt_new = pf.maildir("alice") / "new", mt.root / "mail" / "example.test" / "alice" / "new"
    assert shape(converse(pf.port, steps)[-1]) == "2xx"
    assert shape(converse(mt.port, steps)[-1]) == "2xx"
    deadline = time.monotonic() + 60  # Postfix delivers after its 250, through its queue
    while _stored_body(pf_new, marker) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    want = _stored_body(pf_new, marker)
    got = _stored_body(mt_new, marker)
    assert want is not None and want == got
    assert want.startswith(b"plain line\n.one leading dot\n..two leading dots\n")


# --- submission: AUTH (RFC 4954) against Postfix's submission smtpd with Dovecot SASL ----------
def _b64(text: str) -> bytes:
    import base64

    return base64.b64encode(text.encode())


PLAIN = b"AUTH PLAIN " + _b64(f"\0{ref.USER}\0{ref.PASSWORD}") + b"\r\n"
# the authenticated user's own address (mailtools checks ownership; Postfix here does not)
SUB_FROM = f"MAIL FROM:<{ref.USER}>\r\n".encode()
SUB_CASES: dict[str, list] = {
    "auth-plain": [(EHLO, 1), (PLAIN, 1), (b"NOOP\r\n", 1)],
    "auth-plain-wrong-password": [(EHLO, 1), (b"AUTH PLAIN " + _b64(f"\0{ref.USER}\0wrong") + b"\r\n", 1)],
    "auth-plain-unknown-user": [(EHLO, 1), (b"AUTH PLAIN " + _b64("\0nobody@example.test\0x") + b"\r\n", 1)],
    "auth-plain-bad-base64": [(EHLO, 1), (b"AUTH PLAIN !!!notbase64\r\n", 1), (b"NOOP\r\n", 1)],
    "auth-plain-challenge": [(EHLO, 1), (b"AUTH PLAIN\r\n", 1), (_b64(f"\0{ref.USER}\0{ref.PASSWORD}") + b"\r\n", 1)],
    "auth-cancel": [(EHLO, 1), (b"AUTH PLAIN\r\n", 1), (b"*\r\n", 1), (b"NOOP\r\n", 1)],
    "auth-login": [(EHLO, 1), (b"AUTH LOGIN\r\n", 1), (_b64(ref.USER) + b"\r\n", 1),
                   (_b64(ref.PASSWORD) + b"\r\n", 1)],
    "auth-login-initial": [(EHLO, 1), (b"AUTH LOGIN " + _b64(ref.USER) + b"\r\n", 1), (_b64(ref.PASSWORD) + b"\r\n", 1)],
    "auth-unknown-mechanism": [(EHLO, 1), (b"AUTH X-FROB\r\n", 1), (b"NOOP\r\n", 1)],
    "auth-no-mechanism": [(EHLO, 1), (b"AUTH\r\n", 1)],
    "auth-before-ehlo": [(PLAIN, 1)],
    "auth-twice": [(EHLO, 1), (PLAIN, 1), (PLAIN, 1)],
    "auth-during-mail": [(EHLO, 1), (PLAIN, 1), (SUB_FROM, 1), (PLAIN, 1)],
    "auth-lowercase": [(EHLO, 1), (PLAIN.replace(b"AUTH PLAIN", b"auth plain"), 1)],
    "auth-other-authzid": [(EHLO, 1), (b"AUTH PLAIN " + _b64(f"bob@example.test\0{ref.USER}\0{ref.PASSWORD}") + b"\r\n", 1)],
    "mail-without-auth": [(EHLO, 1), (SUB_FROM, 1), (TO, 1)],
    "submit-after-auth": [(EHLO, 1), (PLAIN, 1), (SUB_FROM, 1), (TO, 1),
                          (b"DATA\r\n", 1), (MSG, 1), (b"QUIT\r\n", 1), ("CLOSED", 0)],
    "pipelined-auth-and-mail": [(EHLO, 1), (PLAIN + SUB_FROM + TO, 3)],
}

SUB_ALLOWED: dict[str, dict[int, tuple]] = {
    # RFC 4954 6: "530 5.7.0 Authentication required" for MAIL before AUTH; Postfix delays its
    # refusal to RCPT (smtpd_delay_reject) and answers 554 5.7.1 there, where mailtools has no
    # transaction (503 5.5.1).
    "mail-without-auth": {2: ("RFC 4954 6", "2xx", "5xx 5.7"), 3: ("RFC 5321 4.1.4", "5xx 5.7", "5xx 5.5")},
    # RFC 4954 4: "If the server cannot BASE64 decode any client response, it MUST reject the
    # AUTH command with a 501 reply (and an enhanced status code of 5.5.2)"; Postfix says 535.
    "auth-plain-bad-base64": {2: ("RFC 4954 4", "5xx 5.7", "5xx 5.5")},
    # RFC 4954 4: an unsupported mechanism is rejected "with a 504 reply"; Postfix says 535.
    "auth-unknown-mechanism": {2: ("RFC 4954 4", "5xx 5.7", "5xx 5.5")},
    # RFC 4954 3 / RFC 5321 4.1.1.1: AUTH is an extension the server offers in its EHLO reply;
    # mailtools wants EHLO first (503 5.5.1), Postfix takes AUTH at any time.
    "auth-before-ehlo": {1: ("RFC 4954 3, RFC 5321 4.1.1.1", "2xx", "5xx 5.5")},
}


@pytest.fixture(scope="module")
def submission(tmp_path_factory):
    why = ref.unavailable_dovecot()
    if why:
        pytest.skip(why)
    dv = ref.Dovecot()
    try:
        dv.start()
    except (RuntimeError, TimeoutError, OSError) as e:
        dv.stop()
        pytest.skip(f"the private Dovecot would not start: {e}")
    pf = ref.Postfix(sasl_path=str(dv.auth_socket))
    try:
        pf.start()
    except (RuntimeError, TimeoutError, OSError) as e:
        pf.stop()
        dv.stop()
        pytest.skip(f"the private Postfix would not start: {e}")
    mt = ref.Mailtools(tmp_path_factory.mktemp("mt-submit"), "submit", "[auth]\nfail_delay = 0\n")
    (mt.root / "users").write_text(ref.users_line())
    try:
        mt.start()
        yield pf.submission_port, mt.port
    finally:
        mt.stop()
        pf.stop()
        dv.stop()


@pytest.mark.parametrize("case", list(SUB_CASES))
def test_submission_same_answers(submission, case):
    pf_port, mt_port = submission
    want = converse(pf_port, SUB_CASES[case])
    got = converse(mt_port, SUB_CASES[case])
    assert len(want) == len(got)
    allowed = SUB_ALLOWED.get(case, {})
    for i, (w, g) in enumerate(zip(want, got)):
        if i in allowed:
            assert (shape(w), shape(g)) == allowed[i][1:], f"allowed difference changed at #{i}:\n{_table(case, want, got)}"
            continue
        assert same(w, g), f"{case}: reply #{i} differs:\n{_table(case, want, got)}"
