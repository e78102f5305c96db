"""relay: unit and property tests of the pieces (no network beyond a loopback fake server)."""

from __future__ import annotations

import asyncio
import email
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailtools.relay import client
from mailtools.relay.bounce import Failure, build_dsn
from mailtools.relay.runner import _origin, _split_hostport


def unstuff(wire: bytes) -> bytes:
    """What a receiving server reconstructs (RFC 5321 4.5.2)."""
    assert wire.endswith(b"\r\n.\r\n") or wire == b".\r\n"
    body = wire[:-3]
    lines = body.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


@given(st.binary(max_size=400) | st.text(alphabet="a.\r\n ", max_size=200).map(str.encode))
@settings(max_examples=300, deadline=None)
def test_prepare_data_transparency_and_line_ends(data):
    wire = client.prepare_data(data)
    # no bare CR or LF ever leaves
    assert b"\n" not in wire.replace(b"\r\n", b"")
    assert b"\r" not in wire.replace(b"\r\n", b"")
    # the end marker appears exactly once, at the end
    assert wire.endswith(b".\r\n")
    assert (b"\r\n" + wire).find(b"\r\n.\r\n") == len(wire) - 3
    # the content survives, with normalised line ends
    norm = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if norm and not norm.endswith(b"\r\n"):
        norm += b"\r\n"
    assert unstuff(wire) == norm


def test_reply_properties():
    r = client.Reply(250, ["2.0.0 Ok: queued as X"])
    assert r.ok and r.status == "2.0.0" and r.text == "250 2.0.0 Ok: queued as X"
    assert client.Reply(451, ["try later"]).status == "4.0.0"
    assert client.Reply(550, ["5.1.1 no such user"]).status == "5.1.1"
    assert client.Reply(421, [""]).temporary and not client.Reply(554, [""]).temporary


def test_needs_smtputf8():
    assert client.needs_smtputf8("a@b.test", ["jörg@x.test"])
    assert not client.needs_smtputf8("", ["a@x.test"])


def test_split_hostport():
    assert _split_hostport("smtp.example.net:587") == ("smtp.example.net", 587)
    assert _split_hostport("[2001:db8::1]:465") == ("2001:db8::1", 465)
    assert _split_hostport("relay.example.net") == ("relay.example.net", 25)


def test_origin_from_top_received():
    data = (b"Received: from client.example.test (client.example.test [192.0.2.7])\r\n"
            b"\tby mx.example.test (mailtools) with ESMTPSA id 1; Sat, 28 Nov 2026 10:00:00 +0000\r\n"
            b"Received: from older\r\n\r\nbody\r\n")
    assert _origin(data) == "from client.example.test (client.example.test [192.0.2.7])\r\n\t"
    assert _origin(b"Subject: x\n\nReceived: from body.test\n") == ""


def test_dsn_structure_and_headers_only():
    original = b"From: a@example.test\r\nSubject: the original\r\nMessage-ID: <m1@example.test>\r\n\r\nsecret body\r\n"
    raw = build_dsn(reporting_mta="mx.example.test", qid="ABC123", sender="a@example.test", arrival=0,
                    failures=[Failure("b@remote.test", "5.1.1", "host mx said: 550 5.1.1 no", "mx.remote.test")],
                    original=original)
    assert b"\n" not in raw.replace(b"\r\n", b"")
    m = email.message_from_bytes(raw)
    assert m["To"] == "<a@example.test>" and m["Auto-Submitted"] == "auto-replied"
    assert m.get_content_type() == "multipart/report"
    human, status, headers = m.get_payload()
    assert "<b@remote.test>: host mx said" in human.get_payload()
    per = status.get_payload()
    fields = "".join(p.as_string() for p in per)
    assert "Reporting-MTA: dns; mx.example.test" in fields and "Status: 5.1.1" in fields
    assert "Final-Recipient: rfc822; b@remote.test" in fields and "Action: failed" in fields
    assert "Subject: the original" in headers.as_string() and "secret body" not in headers.as_string()


def test_dsn_for_utf8_recipient_uses_global_delivery_status():
    raw = build_dsn(reporting_mta="h", qid="Q", sender="a@example.test", arrival=0,
                    failures=[Failure("jörg@remote.test", "5.6.7", "no SMTPUTF8")], original=b"Subject: x\r\n\r\n")
    assert b"message/global-delivery-status" in raw and "utf-8; jörg@remote.test".encode() in raw


class FakeServer:
    """A loopback SMTP server that answers from a script, for client edge cases."""

    def __init__(self, greeting: bytes, replies: dict):
        self.greeting, self.replies, self.seen = greeting, replies, []

    async def handle(self, reader, writer):
        writer.write(self.greeting)
        while True:
            line = await reader.readline()
            if not line:
                break
            self.seen.append(line)
            verb = line.split(b" ")[0].split(b":")[0].strip().upper()
            out = self.replies.get(verb)
            if out is None:
                continue
            writer.write(out)
            await writer.drain()
            if verb == b"QUIT":
                break
        writer.close()


async def _open(server: FakeServer, **kw):
    srv = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    conn = client.SMTPConnection(client.ClientConfig(helo="me.example.test", tls="none",
                                                     timeouts=client.Timeouts(2, 2, 2), **kw))
    try:
        await conn.open("fake", "127.0.0.1", port)
        return conn, srv
    except Exception:
        srv.close()
        raise


def test_helo_fallback_and_endless_reply_capped():
    async def go():
        fs = FakeServer(b"220 old server\r\n", {b"EHLO": b"502 what\r\n", b"HELO": b"250 hi\r\n"})
        conn, srv = await _open(fs)
        assert not conn.esmtp and conn.extensions == {}
        conn.close()
        srv.close()
        endless = b"220-" + b"x" * (client.MAX_REPLY_LINE * 2) + b"\r\n220 ok\r\n"
        fs2 = FakeServer(endless, {})
        with pytest.raises(client.ConnectionLost, match="too long"):
            await _open(fs2)

    asyncio.run(go())


@pytest.mark.parametrize("code", ["\u00b250", "\u0662\u0665\u0660"])  # '²50', Arabic-Indic 250
def test_a_reply_code_of_non_ascii_digits_is_malformed(code):
    # str.isdigit() takes them: '²50' then raised ValueError out of int(), and Arabic-Indic
    # digits were read as the code 250
    async def go():
        with pytest.raises(client.ConnectionLost, match="malformed reply"):
            await _open(FakeServer(code.encode() + b" hello\r\n", {}))

    asyncio.run(go())


def test_greeting_554_is_permanent_and_timeout_is_connection_lost():
    async def go():
        with pytest.raises(client.SMTPClientError) as exc:
            await _open(FakeServer(b"554 go away\r\n", {}))
        assert exc.value.permanent and exc.value.reply.code == 554
        with pytest.raises(client.ConnectionLost, match="timeout"):
            await _open(FakeServer(b"", {}))

    asyncio.run(go())


def test_pipelined_transaction_in_two_writes_per_recipient_outcomes():
    async def go():
        replies = {
            b"EHLO": b"250-fake\r\n250-PIPELINING\r\n250 SIZE 100000\r\n",
            b"MAIL": b"250 2.1.0 ok\r\n", b"RCPT": b"250 2.1.5 ok\r\n", b"DATA": b"354 go\r\n",
            b".": b"250 2.0.0 queued\r\n", b"QUIT": b"221 bye\r\n",
        }
        fs = FakeServer(b"220 fake ESMTP\r\n", replies)
        conn, srv = await _open(fs)
        res = await conn.send("a@example.test", ["b@x.test", "c@x.test"], client.prepare_data(b"Subject: s\n\nbody\n"))
        assert [res.outcome(i).code for i in range(2)] == [250, 250]
        await conn.quit()
        srv.close()
        lines = [ln for ln in fs.seen if not ln.startswith(b"EHLO")]
        assert lines[0].startswith(b"MAIL FROM:<a@example.test> SIZE=")
        return lines

    asyncio.run(go())


class HoldDotServer(FakeServer):
    """Answers a message's final '.' only when the next line has come or a second has passed,
    and notes whether that next line was already the next MAIL FROM: the client announced the
    next message without waiting for the answer."""

    def __init__(self, replies: dict):
        super().__init__(b"220 fake ESMTP\r\n", replies)
        self.mail_before_dot_reply = 0

    async def handle(self, reader, writer):
        writer.write(self.greeting)
        held = False
        while True:
            try:
                line = await asyncio.wait_for(reader.readline(), 1.0 if held else 10.0)
            except asyncio.TimeoutError:
                line = None
            if held:
                if line is not None and line.startswith(b"MAIL FROM:"):
                    self.mail_before_dot_reply += 1
                writer.write(self.replies[b"."])
                held = False
            if line is None:
                continue
            if not line:
                break
            self.seen.append(line)
            if line == b".\r\n":
                held = True
                continue
            verb = line.split(b" ")[0].split(b":")[0].strip().upper()
            out = self.replies.get(verb)
            if out is not None:
                writer.write(out)
                await writer.drain()
                if verb == b"QUIT":
                    break
        writer.close()


PIPELINING_REPLIES = {
    b"EHLO": b"250-fake\r\n250-PIPELINING\r\n250 SIZE 100000\r\n",
    b"MAIL": b"250 2.1.0 ok\r\n", b"RCPT": b"250 2.1.5 ok\r\n", b"DATA": b"354 go\r\n",
    b".": b"250 2.0.0 queued\r\n", b"QUIT": b"221 bye\r\n", b"RSET": b"250 2.0.0 ok\r\n",
}


def test_next_envelope_rides_behind_the_content():
    async def go():
        fs = HoldDotServer(PIPELINING_REPLIES)
        conn, srv = await _open(fs)
        p1, p2, p3 = (client.prepare_data(b"Subject: %d\n\nbody\n" % i) for i in (1, 2, 3))
        r1 = await conn.send("a@example.test", ["b@x.test"], p1, then=("a@example.test", ["c@x.test"], p2, False, False))
        assert r1.outcome(0).code == 250 and conn.announced
        r2 = await conn.send("a@example.test", ["c@x.test"], p2)  # its envelope is on the wire
        assert r2.outcome(0).code == 250 and not conn.announced
        r3 = await conn.send("a@example.test", ["d@x.test"], p3)
        assert r3.outcome(0).code == 250
        await conn.quit()
        srv.close()
        return fs

    fs = asyncio.run(go())
    assert fs.mail_before_dot_reply == 1  # message 2 announced behind 1; 3 was not
    mails = [ln for ln in fs.seen if ln.startswith((b"MAIL", b"RCPT", b"DATA", b"RSET"))]
    assert [ln.split(b" SIZE=")[0].strip() for ln in mails] == [
        b"MAIL FROM:<a@example.test>", b"RCPT TO:<b@x.test>", b"DATA",
        b"MAIL FROM:<a@example.test>", b"RCPT TO:<c@x.test>", b"DATA",
        b"MAIL FROM:<a@example.test>", b"RCPT TO:<d@x.test>", b"DATA"]  # no RSET, no second envelope


def test_announced_message_must_follow_and_quit_hangs_up():
    async def go():
        fs = FakeServer(b"220 fake ESMTP\r\n", PIPELINING_REPLIES)
        conn, srv = await _open(fs)
        p1, p2 = (client.prepare_data(b"Subject: %d\n\nbody\n" % i) for i in (1, 2))
        await conn.send("a@example.test", ["b@x.test"], p1, then=("a@example.test", ["c@x.test"], p2, False, False))
        with pytest.raises(RuntimeError):
            await conn.send("a@example.test", ["other@x.test"], p2)
        await conn.quit()  # a transaction without content is open: no QUIT (it would be content)
        assert not conn.alive
        await asyncio.sleep(0.2)
        srv.close()
        return fs

    fs = asyncio.run(go())
    assert not any(ln.startswith(b"QUIT") for ln in fs.seen)
    assert fs.seen.count(b".\r\n") == 1


def test_claim_asks_want_before_the_rename_and_again_only_after_a_change(tmp_path):
    from mailtools.core.queue import Queue

    q = Queue(tmp_path / "q")
    a = q.enqueue("s@example.test", ["r@x.test"], b"Subject: a\n\nbody\n")
    asked = []
    assert q.claim(a, want=lambda e: asked.append(e.id) or False) is None
    assert asked == [a] and q.ids("new") == [a] and q.ids("active") == []  # no rename
    asked.clear()
    e = q.claim(a, want=lambda e: asked.append(e.recipients[0].state) or True)
    assert e is not None and asked == ["queued"]  # unchanged envelope: asked (and parsed) once
    assert e.state_dir == "active" and q.ids("active") == [a] and e.claimed_by
    e.recipients[0].state = "sent"
    assert q.release(e)

    b = q.enqueue("s@example.test", ["r@x.test"], b"Subject: b\n\nbody\n")

    def racing(entry):
        # another runner delivers it between our read and our rename: its envelope changes
        if not asked:
            runner = Queue(q.path)
            other = runner.claim(b)
            other.recipients[0].state = "deferred"  # tried, and not due for an hour
            other.recipients[0].next_attempt = time.time() + 3600
            runner.update(other)
            assert runner.release(other)
        asked.append(entry.recipients[0].state)
        return entry.recipients[0].state == "queued"

    asked.clear()
    assert q.claim(b, want=racing) is None
    assert asked == ["queued", "deferred"]  # asked again on the changed envelope, and refused
    assert q.ids("active") == [] and q.ids("new") == [b]  # given back
    assert q.claim(b) is not None  # the plain claim() is unchanged
