"""Numbers a client or a command line gives are ASCII digits: '²' passes str.isdigit() but not
int(). Before, `MAIL FROM:<...> SIZE=²` raised out of the SMTP session (sendmail -bs exited 70
with 'internal error', the server dropped the connection without a reply) and `--workers ²`
was an internal error (70) instead of a usage error (64)."""

from __future__ import annotations

from conftest import submit_pipelined

SESSION = "EHLO localhost\r\nMAIL FROM:<alice@example.test> SIZE=\u00b2\r\nNOOP\r\nQUIT\r\n".encode()


def test_sendmail_bs_answers_a_size_in_other_digits_with_501(home, run):
    r = run("submit", "-bs", input=SESSION)
    codes = [line[:4] for line in r.stdout.split(b"\r\n") if line[3:4] == b" "]
    assert codes == [b"220 ", b"250 ", b"501 ", b"250 ", b"221 "], (r.stdout, r.stderr)
    assert r.returncode == 0


def test_submission_server_answers_a_size_in_other_digits_with_501(home):
    out = submit_pipelined(home, SESSION.split(b"\r\n", 1)[1])  # (its own EHLO, then AUTH)
    codes = [line[:4] for line in out.split(b"\r\n") if line[3:4] == b" "]
    assert codes == [b"220 ", b"250 ", b"235 ", b"501 ", b"250 ", b"221 "], out


def test_workers_in_other_digits_is_a_usage_error(home, run):
    r = run("submit", "--listen", "127.0.0.1:0", "--workers", "\u00b2")
    assert r.returncode == 64, r.stderr
