"""Every server installs its SIGTERM handler before it binds: a stop sent the moment the port
answers (a service manager stopping a service it has just started) is a clean exit 0, never
death by the signal."""

from __future__ import annotations

import signal
import socket
import subprocess
import time

import pytest

from conftest import free_port, mailtools_cmd


@pytest.mark.parametrize("command", [["imap-serve"], ["pop3-serve"], ["relay"],
                                     ["submit", "--workers", "1"], ["submit", "--workers", "2"]])
def test_sigterm_as_soon_as_the_port_answers_is_a_clean_stop(home, command):
    port = free_port()
    proc = subprocess.Popen([*mailtools_cmd(), *command, "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:  # as fast as it goes: the first accepted connection
            assert proc.poll() is None and time.monotonic() < deadline, "the server never listened"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.0005)
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=30)[1].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
