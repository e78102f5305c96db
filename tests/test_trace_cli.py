"""The real `mailtools trace-headers` program: a message piped in or named, mbox input, what
the user sees in a pipe, JSON lines, exit codes, and the terminal view (under a pty)."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import time
from pathlib import Path

import pytest

from conftest import mailtools_cmd

FIX = Path(__file__).parent / "fixtures" / "trace"


def test_pipe_in_plain_text(run):
    p = run("trace-headers", input=(FIX / "postfix.eml").read_bytes())
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode()
    lines = out.splitlines()
    assert "message-id: <20261128095959.1A2B3C4D5E@mail.example.org>" in lines
    assert "auth: mx.example.net: spf=pass dkim=pass dmarc=pass" in lines
    hops = [l for l in lines if l.startswith("hop ")]
    assert len(hops) == 4
    assert hops[2].startswith("hop 3  2026-11-28T10:00:05Z  +4s  from mail.example.org [192.0.2.1]  by mx.example.net")
    assert "tls TLSv1.3 TLS_AES_256_GCM_SHA384" in hops[2]
    assert lines[-1] == "total: 8s over 4 hops"
    assert "\x1b[" not in out  # no colour or table in a pipe
    assert p.stderr == b""


def test_dash_reads_stdin_and_json_is_one_line(run):
    p = run("trace-headers", "--json", "-", input=(FIX / "exim.eml").read_bytes())
    assert p.returncode == 0
    lines = p.stdout.decode().splitlines()
    assert len(lines) == 1
    r = json.loads(lines[0])
    assert [h["by_host"] for h in r["hops"]] == ["mail.example.com", "mail.example.com", "mx.example.net"]
    assert r["hops"][2]["tls"] == {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"}
    assert r["total_transit_s"] == 4


def test_mbox_one_json_object_per_message(run):
    p = run("trace-headers", "--json", FIX / "three.mbox")
    assert p.returncode == 0, p.stderr
    reports = [json.loads(l) for l in p.stdout.decode().splitlines()]
    assert [r["message"] for r in reports] == [1, 2, 3]
    assert [len(r["hops"]) for r in reports] == [3, 0, 2]
    assert reports[0]["warnings"][0]["kind"] == "negative-delay"
    assert reports[1]["warnings"][0]["kind"] == "no-received"


def test_mbox_plain_numbers_messages(run):
    p = run("trace-headers", FIX / "three.mbox")
    out = p.stdout.decode()
    assert p.returncode == 0
    assert [l for l in out.splitlines() if l.startswith("message: ")] == ["message: 1", "message: 2", "message: 3"]
    assert "warning: negative-delay (hop 2): hop 2 is dated 120 s before hop 1 (clock skew?)" in out
    assert "warning: no-received: the message has no Received field" in out


def test_missing_file_is_66(run):
    p = run("trace-headers", "/nonexistent/message.eml")
    assert p.returncode == 66
    assert p.stderr.decode() == "mailtools trace-headers: /nonexistent/message.eml: no such file\n"
    assert p.stdout == b""


def test_directory_is_66(run, tmp_path):
    p = run("trace-headers", tmp_path)
    assert p.returncode == 66
    assert "is a directory" in p.stderr.decode()


@pytest.mark.parametrize("data", [b"", b"\x89PNG\r\n\x1a\n\x00\x00binary", b"\nonly a body\n", b"no colon here\n"])
def test_not_a_message_is_65(run, data):
    p = run("trace-headers", input=data)
    assert p.returncode == 65
    assert p.stderr.decode().startswith("mailtools trace-headers: ")
    assert "not a message" in p.stderr.decode()
    assert p.stdout == b""


def test_bad_message_in_mbox_stops_without_all_and_not_with_it(run, tmp_path):
    box = tmp_path / "bad.mbox"
    good = (FIX / "iis-smtpsvc.eml").read_bytes()
    box.write_bytes(b"From a@example.test Thu Nov 28 10:00:00 2026\n" + good + b"\n"
                    b"From b@example.test Thu Nov 28 10:00:00 2026\n\x00\x01 garbage\n\n"
                    b"From c@example.test Thu Nov 28 10:00:00 2026\n" + good + b"\n")
    p = run("trace-headers", "--json", box)
    assert p.returncode == 65
    assert len(p.stdout.splitlines()) == 1  # the first report, then the stop
    assert "message 2" in p.stderr.decode() and "--all" in p.stderr.decode()
    p = run("trace-headers", "--json", "--all", box)
    assert p.returncode == 65  # still says something was wrong, after reporting everything
    reports = [json.loads(l) for l in p.stdout.splitlines()]
    assert [r["message"] for r in reports] == [1, 2, 3]
    assert reports[1]["warnings"][0]["kind"] == "not-a-message"
    assert len(reports[2]["hops"]) == 2


def test_usage_errors_are_64(run):
    assert run("trace-headers", "--no-such-option").returncode == 64
    assert run("trace-headers", "a.eml", "b.eml").returncode == 64


def test_help_lists_options(run):
    p = run("trace-headers", "--help")
    assert p.returncode == 0
    for opt in ("--json", "--all"):
        assert opt in p.stdout.decode()


def test_closed_pipe_is_not_an_error(tmp_path):
    box = tmp_path / "big.mbox"
    msg = (FIX / "postfix.eml").read_bytes()
    box.write_bytes(b"".join(b"From a@example.test Thu Nov 28 10:00:00 2026\n" + msg + b"\n" for _ in range(3000)))
    p1 = subprocess.Popen([*mailtools_cmd(), "trace-headers", str(box)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p2 = subprocess.run(["head", "-n", "2"], stdin=p1.stdout, capture_output=True)
    p1.stdout.close()
    assert p1.wait(timeout=60) == 0
    assert p1.stderr.read() == b""
    assert p2.stdout.decode().splitlines() == ["message: 1", "message-id: <20261128095959.1A2B3C4D5E@mail.example.org>"]


def _drain(master, proc, timeout=60) -> bytes:
    """Everything written to the pty's master side until the process ends."""
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([master], [], [], 0.2)
        if r:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    proc.wait(timeout=10)
    os.close(master)
    return b"".join(chunks)


def _pty_run(args, env_extra=None):
    """Run with stdout and stderr on a pseudo-terminal; return everything it wrote."""
    master, slave = pty.openpty()
    env = dict(os.environ, COLUMNS="160", LINES="50", TERM="xterm-256color", **(env_extra or {}))
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([*mailtools_cmd(), *map(str, args)], stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave, env=env)
    os.close(slave)
    out = _drain(master, proc)
    return proc.returncode, out.decode("utf-8", "replace")


def test_terminal_shows_a_table_with_the_slowest_hop(tmp_path):
    rc, out = _pty_run(["trace-headers", FIX / "clock-skew.eml"])
    assert rc == 0
    assert "┃" in out or "│" in out  # a rich table
    for col in ("Hop", "From", "IP", "By", "TLS", "Delay"):
        assert col in out
    assert "+7m00s" in out and "-2m00s" in out
    assert "█" * 20 in out  # the slowest hop has the full bar
    assert "\x1b[1;31m" in out or "\x1b[31;1m" in out  # ... and is highlighted (bold red)
    assert "negative-delay" in out


def test_progress_bar_on_a_terminal_for_a_big_mbox(tmp_path):
    box = tmp_path / "big.mbox"
    msg = (FIX / "long-chain.eml").read_bytes()
    one = b"From a@example.test Thu Nov 28 10:00:00 2026\n" + msg + b"\n"
    box.write_bytes(one * (2_500_000 // len(one)))
    out_file = tmp_path / "out.jsonl"
    master, slave = pty.openpty()
    env = dict(os.environ, COLUMNS="120", TERM="xterm-256color")
    with open(out_file, "wb") as out:
        proc = subprocess.Popen([*mailtools_cmd(), "trace-headers", "--json", "--all", str(box)],
                                stdout=out, stderr=slave, env=env)
        os.close(slave)
        seen = _drain(master, proc)
    assert proc.returncode == 0
    assert b"tracing" in seen and b"messages" in seen  # the bar, on stderr (a terminal)
    assert len(out_file.read_bytes().splitlines()) == 2_500_000 // len(one)  # stdout: only JSON
