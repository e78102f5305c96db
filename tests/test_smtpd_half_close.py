"""A client that sends its whole pipelined session and then half-closes (shutdown(SHUT_WR): a
script piping into nc) is answered for everything it sent, as Postfix answers it, and only then
closed. Before, the server closed at the client's EOF whenever a blocking step (AUTH's hash,
DATA's fsync) held the rest back: the client got no reply after EHLO and nothing was queued,
or, with the EOF during DATA's step, the message was queued and the client never saw its 250
(and a sender that retries would send it twice)."""

from __future__ import annotations

import base64
import socket
import subprocess

import pytest

from conftest import free_port, mailtools_cmd, stop_proc, wait_port
from mailtools.core.auth import Users
from mailtools.core.queue import Queue


@pytest.mark.parametrize("quit_", [True, False])
def test_pipelined_session_then_half_close_is_answered_in_full(home, quit_):
    Users(home / "users").add("alice@example.test", "secret", scheme="BLF-CRYPT")
    port = free_port()
    with open(home / "msa.log", "wb") as log:
        proc = subprocess.Popen([*mailtools_cmd(), "submit", "--listen", f"127.0.0.1:{port}",
                                 "--workers", "1"], stderr=log)
    try:
        wait_port(port, proc=proc)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"EHLO client.example.test\r\n"
                      b"AUTH PLAIN " + base64.b64encode(b"\0alice@example.test\0secret") + b"\r\n"
                      b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
                      b"Subject: half-close\r\n\r\nhello\r\n.\r\n" + (b"QUIT\r\n" if quit_ else b""))
            s.shutdown(socket.SHUT_WR)
            out = b""
            while chunk := s.recv(65536):
                out += chunk
    finally:
        stop_proc(proc, timeout=30)
    codes = [line[:4] for line in out.split(b"\r\n") if line[3:4] == b" "]
    want = [b"220 ", b"250 ", b"235 ", b"250 ", b"250 ", b"354 ", b"250 "] + ([b"221 "] if quit_ else [])
    assert codes == want, (out, (home / "msa.log").read_text())
    assert len(Queue(home / "queue").entries()) == 1
