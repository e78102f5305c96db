"""Bcc is removed whole from the queued message (RFC 5322 3.6.3), also when its folded list has
a line of white space only (obs-FWS). Before, that line ended the removal early: the rest of
the hidden list stayed in the message, under the field before Bcc, for every recipient to see."""

from __future__ import annotations

from mailtools.core.queue import Queue


def test_sendmail_t_removes_a_bcc_folded_over_a_blank_continuation_line(home, run):
    msg = (b"To: a@example.test\nBcc: hidden1@example.test,\n \n hidden2@example.test\n"
           b"Subject: x\n\nbody\n")
    r = run("submit", "-t", "-i", input=msg)
    assert r.returncode == 0, r.stderr
    q = Queue(home / "queue")
    (entry,) = q.entries()
    assert sorted(x.address for x in entry.recipients) == [
        "a@example.test", "hidden1@example.test", "hidden2@example.test"]
    stored = q.read_message(entry)
    assert b"hidden" not in stored, stored
    assert b"\nTo: a@example.test\n" in stored and b"\nSubject: x\n" in stored
