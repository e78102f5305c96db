"""The small tools piped into each other, as a shell script or cron would use them (mblaze's
t/ style): user add -> sendmail -> mailq -> relay --once -> Maildir -> trace-headers."""

from __future__ import annotations

import json


def test_sendmail_queue_relay_deliver_trace(home, run):
    r = run("user", "add", "--password-stdin", "alice@example.test", input=b"pw-alice\n")
    assert r.returncode == 0, r.stderr
    msg = b"From: root@example.test\nTo: Alice@Example.TEST\nSubject: pipeline\n\nbody line\n"
    r = run("submit", "-i", "-f", "root@example.test", "Alice@Example.TEST", input=msg)
    assert r.returncode == 0, r.stderr
    r = run("submit", "-bp", "--json")
    (entry,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert entry["sender"] == "root@example.test"
    assert [x["state"] for x in entry["recipients"]] == ["queued"]
    r = run("relay", "--once")
    assert r.returncode == 0, r.stderr
    # Alice@ and alice@ are one mailbox (lower-cased like Dovecot's %Lu)
    new = home / "mail" / "example.test" / "alice" / "new"
    (path,) = list(new.iterdir())
    data = path.read_bytes()
    assert b"Subject: pipeline" in data and b"body line" in data
    assert not (home / "mail" / "example.test" / "Alice").exists()
    r = run("submit", "-bp", "--json")
    assert r.stdout.strip() == b""
    r = run("trace-headers", "--json", path)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["hops"], report
    assert all(h["timestamp"] for h in report["hops"])


def test_deliver_to_differently_cased_address_finds_the_user(home, run):
    r = run("user", "add", "--password-stdin", "bob@example.test", input=b"pw\n")
    assert r.returncode == 0, r.stderr
    r = run("deliver", "-f", "x@example.test", "BOB@example.test", input=b"Subject: hi\n\nyo\n")
    assert r.returncode == 0, r.stderr
    assert len(list((home / "mail" / "example.test" / "bob" / "new").iterdir())) == 1
    r = run("deliver", "nobody@example.test", input=b"Subject: hi\n\nyo\n")
    assert r.returncode == 67


def test_local_delivery_follows_plus_extensions_for_relay_and_deliver(home, run):
    from mailtools.core import config
    from mailtools.core.local import BOUNCED, SENT, deliver_local, mailbox_owner

    r = run("user", "add", "--password-stdin", "carol@example.test", input=b"pw\n")
    assert r.returncode == 0, r.stderr
    cfg = config.load(reload=True)
    assert mailbox_owner(cfg, "carol+lists@example.test") == "carol@example.test"
    assert mailbox_owner(cfg, "carol@elsewhere.test") is None  # not a local domain
    state, status, _ = deliver_local(cfg, "x@remote.test", "carol+lists@example.test", b"Subject: a\r\n\r\nb\r\n")
    assert (state, status) == (SENT, "2.0.0")
    (path,) = list((home / "mail" / "example.test" / "carol" / "new").iterdir())
    assert path.read_bytes().startswith(b"Return-Path: <x@remote.test>\nDelivered-To: carol+lists@example.test\n")
    assert deliver_local(cfg, "x@remote.test", "dave@example.test", b"x\n")[0] == BOUNCED
