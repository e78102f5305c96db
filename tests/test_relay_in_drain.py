"""`relay --listen` stopped while a session's DATA step is under way: the step finishes and
its reply goes out before the process exits (then 421 4.3.2). The DATA step here waits on the
sender domain's DNS check, which this test's own DNS server answers (NXDOMAIN: deliver) only
after the SIGTERM. Before, the server answered nobody once its queue runner had stopped: the
message was in the Maildir but the client saw the connection close without a reply, and a
sending MTA delivers it again later (a duplicate)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading

from conftest import free_port, mailtools_cmd, wait_port
from support_net import wait_for


class SlowDNS:
    """A UDP DNS server that holds every query until release(), then answers NXDOMAIN."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.queries: list = []
        self.released = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        import dns.message
        import dns.rcode

        while True:
            try:
                data, addr = self.sock.recvfrom(4096)
            except OSError:
                return
            self.queries.append(data)
            self.released.wait(60)
            reply = dns.message.make_response(dns.message.from_wire(data))
            reply.set_rcode(dns.rcode.NXDOMAIN)
            try:
                self.sock.sendto(reply.to_wire(), addr)
            except OSError:
                return

    def close(self):
        self.released.set()
        self.sock.close()


def test_a_message_whose_data_step_is_under_way_at_sigterm_gets_its_reply(tmp_path):
    from mailtools.core.auth import Users

    dns = SlowDNS()
    root = tmp_path / "root"
    root.mkdir()
    port = free_port()
    cfgfile = tmp_path / "mailtools.toml"
    cfgfile.write_text(
        f'hostname = "mx.example.test"\nroot = "{root}"\nlocal_domains = ["example.test"]\n'
        f'[dns]\nnameservers = ["127.0.0.1:{dns.port}"]\ntimeout = 20\n'
        f'[relay]\nlisten = ["127.0.0.1:{port}"]\n')
    Users(root / "users").add("bob@example.test", "secret-pw-1")
    log = tmp_path / "relay.log"
    logf = open(log, "wb")
    proc = subprocess.Popen([*mailtools_cmd(), "relay", "--listen", f"127.0.0.1:{port}"],
                            env={**os.environ, "MAILTOOLS_CONFIG": str(cfgfile)},
                            stdout=logf, stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc=proc)
        c = socket.create_connection(("127.0.0.1", port), timeout=60)
        f = c.makefile("rb")
        assert f.readline().startswith(b"220")
        c.sendall(b"EHLO client.example.test\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        c.sendall(b"MAIL FROM:<alice@sender.invalid>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        assert [f.readline()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
        c.sendall(b"Subject: in flight\r\n\r\nhello\r\n.\r\n")
        wait_for(lambda: dns.queries, what="the DATA step's DNS query")  # the step is under way
        proc.send_signal(signal.SIGTERM)
        # the queue runner stops at once: the signal was taken while the step waits on DNS
        wait_for(lambda: b"daemon stopped" in log.read_bytes(), what="relay to take the signal")
        dns.released.set()
        replies = f.read()  # to the server's close
        c.close()
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        dns.close()
        logf.close()
    delivered = list((root / "mail" / "example.test" / "bob" / "new").iterdir())
    assert len(delivered) == 1
    assert replies.startswith(b"250 "), replies  # the client knows: it will not send it again
