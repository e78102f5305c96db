"""Bulk `mx-lookup -` over worker processes (mailtools.mxsplit): the same output, in input
order, with the same exit status as one process; a worker that fails fails the run."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys

import pytest

import support_dns
from mailtools import mx, mxsplit
from mailtools.core import dns as mxdns
from mailtools.core.exitcodes import MailtoolsError

ZONE = dict(
    mx={f"d{i}.test": [(10, f"mx.d{i}.test")] for i in range(300)} | {"two.test": [(20, "b.two.test"), (10, "a.two.test")]},
    hosts={f"mx.d{i}.test": [f"192.0.2.{i % 250 + 1}", f"2001:db8::{i:x}"] for i in range(300)}
    | {"a.two.test": ["192.0.2.251"], "aonly.test": ["192.0.2.252"]},
    null_mx=["nullmx.test"],
    empty=["nothing.test"],
)
# every kind of line: MX, implicit, null MX, NXDOMAIN, no address, not a domain, comment, blank
KINDS = ["two.test", "aonly.test", "nullmx.test", "nx{i}.test", "nothing.test", "bad name {i}", "# comment", ""]


@pytest.fixture(scope="module")
def dns():
    server = support_dns.start_dnsmasq(**ZONE)
    yield server
    server.stop()


def workload(n: int) -> bytes:
    lines = []
    for i in range(n):
        lines.append(f"d{i % 300}.test" if i % 3 else KINDS[i // 3 % len(KINDS)].format(i=i))
    return ("\n".join(lines) + "\n").encode()


def mailtools(args, data, *, one_core=False, env=None):
    cmd = [sys.executable, "-m", "mailtools", "mx-lookup", *args, "-"]
    if one_core:  # one CPU: workers() is 1, the one-process path
        cmd = ["taskset", "-c", str(min(os.sched_getaffinity(0))), *cmd]
    return subprocess.run(cmd, input=data, capture_output=True, timeout=120, env=env)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 or not shutil.which("taskset"), reason="needs 2 cores and taskset")
@pytest.mark.parametrize("fmt", [[], ["--json"]])
def test_workers_write_what_one_process_writes(dns, home, fmt):
    data = workload(3 * mxsplit.SPLIT_MIN)
    args = ["--nameserver", dns.nameserver, "--timeout", "5", *fmt]
    split = mailtools(args, data)
    one = mailtools(args, data, one_core=True)
    assert split.stdout == one.stdout and split.stderr == one.stderr
    assert split.returncode == one.returncode == 68  # worst of 0, 64 (bad name), 68 (nxdomain)
    lines = split.stdout.decode().splitlines()
    assert lines[0] == "two.test 10 a.two.test 192.0.2.251" if not fmt else '"input":"two.test"' in lines[0]
    assert split.stderr.decode().count("'bad name ") == data.count(b"bad name ")


def test_large_stdin_splits_small_stdin_does_not(dns, home, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(mxsplit, "workers", lambda: 2)
    monkeypatch.setattr(mxsplit, "run", lambda start, eof, *a, **kw: calls.append((len(start), eof, kw["workers"])) or 0)
    big = workload(mxsplit.SPLIT_MIN)
    monkeypatch.setattr(mxsplit, "read_start", lambda: (big, True))
    assert mx.run(["-"], nameservers=[dns.nameserver]) == 0 and calls == [(len(big), True, 2)]
    # a few names: looked up here, from what was read already
    monkeypatch.setattr(mxsplit, "read_start", lambda: (b"two.test\nnx1.test\n", True))
    assert mx.run(["-"], nameservers=[dns.nameserver]) == 68 and len(calls) == 1
    assert capsys.readouterr().out.splitlines() == ["two.test 10 a.two.test 192.0.2.251", "two.test 20 b.two.test -", "nx1.test nxdomain"]
    assert not mxsplit.worth_splitting(b"x\n" * (mxsplit.SPLIT_MIN - 1))
    # --concurrency 1 is one query in flight in all: one process, stdin never read ahead
    monkeypatch.setattr(mxsplit, "read_start", lambda: pytest.fail("read ahead"))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"two.test\n")))
    assert mx.run(["-"], nameservers=[dns.nameserver], concurrency=1) == 0 and len(calls) == 1
    assert capsys.readouterr().out.splitlines() == ["two.test 10 a.two.test 192.0.2.251", "two.test 20 b.two.test -"]


def _split(dns, data: bytes, *, keep_open: bool = False) -> int:
    """mxsplit.run on `data` written to its stdin in pieces by another process (which, with
    keep_open, then keeps stdin open until the run is over)."""
    r, w = os.pipe()
    hold_r, hold_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.close(hold_w)
        for i in range(0, len(data), 7000):
            os.write(w, data[i : i + 7000])
        if keep_open:
            os.read(hold_r, 1)  # until the test closes hold_w
        os._exit(0)
    os.close(w)
    os.close(hold_r)
    try:
        resolver = mxdns.make_resolver([dns.nameserver], 5)
        return mxsplit.run(b"", False, resolver, json_mode=False, concurrency=50, workers=2, stdin_fd=r)
    finally:
        os.close(hold_w)
        os.close(r)
        os.waitpid(pid, 0)


def test_order_and_worst_status_in_process(dns, home, capfd):
    data = b"".join(f"d{i % 300}.test\n".encode() for i in range(2500)) + b"nx.test\n" + b"d1.test\n"
    assert _split(dns, data) == 68
    out = capfd.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == [f"d{i % 300}.test" for i in range(2500)] + ["nx.test", "d1.test"]
    assert out[-1] == "d1.test 10 mx.d1.test 192.0.2.2 2001:db8::1"


@pytest.mark.parametrize("how", ["raises", "killed"])
def test_a_failed_worker_fails_the_run(dns, home, capfd, monkeypatch, how):
    real = mxsplit._worker

    def flaky(down, up, resolver, json_mode, concurrency):
        if how == "raises":
            raise RuntimeError("boom")
        os.kill(os.getpid(), signal.SIGKILL)
        real(down, up, resolver, json_mode, concurrency)

    monkeypatch.setattr(mxsplit, "_worker", flaky)
    with pytest.raises(MailtoolsError) as info:
        _split(dns, b"d1.test\n" * 3000)
    assert info.value.code == 70 and "worker process" in str(info.value)
    err = capfd.readouterr().err
    assert ("worker: RuntimeError: boom" in err) == (how == "raises")


def test_a_worker_failing_mid_run_ends_the_run_while_stdin_is_still_open(dns, home, capfd, monkeypatch):
    """A bug inside a worker's lookups ends the run with status 70 while stdin is still open
    (nobody waits for its end); the batches before the failed one are written."""
    real = mxdns.start_lookup

    def buggy(domain, *args, **kwargs):
        if domain == "d7.test":
            raise RuntimeError("bug")
        return real(domain, *args, **kwargs)

    monkeypatch.setattr(mxdns, "start_lookup", buggy)
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("the run waited for the end of stdin"))
    signal.alarm(60)  # a guard against a hang, not a measure of speed
    try:
        with pytest.raises(MailtoolsError) as info:
            _split(dns, b"d1.test\n" * 2000 + b"d7.test\n" + b"d1.test\n" * 2000, keep_open=True)
    finally:
        signal.alarm(0)
    assert info.value.code == 70
    captured = capfd.readouterr()
    assert "worker: RuntimeError: bug" in captured.err
    assert captured.out.count("d1.test 10 mx.d1.test") == 7 * mxsplit.BATCH  # the batches before it, only
