"""Loopback helpers shared by the tests, the reference servers (support_*.py) and the
benchmarks in tests/bench/ (which put tests/ on sys.path): a free port, waiting for a listener,
stopping a daemon by PID or a child server, and polling for a state another process must
reach (never a fixed sleep: a loaded machine is slow by any amount)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time


def _port_range() -> range:
    """Ports for test servers: outside the kernel's ephemeral range, from which every client
    connection takes its local port (a port that bind(0) found free could be some test's
    client end by the time the server binds it: 'address already in use')."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = map(int, f.read().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(10000, low) if low - 10000 >= 2000 else range(high + 1, 65536)


_handed_out: set[int] = set()
_next = [0]


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, never one handed out before in this process, and outside the
    ephemeral range (see _port_range)."""
    ports = _port_range()
    if not _next[0]:
        _next[0] = ports.start + (os.getpid() * 7919) % len(ports)  # processes start apart
    for _ in range(len(ports)):
        port = _next[0]
        _next[0] = port + 1 if port + 1 < ports.stop else ports.start
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port for a test server")


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = 30.0, proc=None) -> None:
    """Wait until something accepts connections on host:port (or the process died). The
    generous default is for a process starting on a loaded machine; a dead one fails at once."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def wait_for(predicate, timeout: float = 30.0, what: str = "", interval: float = 0.05):
    """Poll predicate() until it returns something true, and return that; fail the test after
    timeout seconds (generous: a state another process must reach can take long under load;
    a test that waits here only costs that time when it fails)."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what or predicate}"
        time.sleep(interval)


def stop_pid(pid: int | None, timeout: float = 10.0) -> None:
    """SIGTERM a daemon (not our child: Postfix's master, Dovecot) and wait until it is gone."""
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.05)
    except ProcessLookupError:
        pass


def stop_proc(proc, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
    """Signal our child server (SIGTERM: its clean stop), wait for it, SIGKILL it when it does
    not stop in time; its exit status (negative: the signal that ended it)."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def bytecode_env(env: dict, cache: str | os.PathLike) -> dict:
    """env for running mailtools with byte code, as an installed package runs (pip compiles on
    install). Where PYTHONDONTWRITEBYTECODE is set (some sandboxes) each process would compile
    mailtools from source, and a server's lazy import inside a measured window would count it.
    The code is compiled now into a private cache (PYTHONPYCACHEPREFIX: the work tree stays
    clean)."""
    import mailtools

    env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = os.fspath(cache)
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.dirname(mailtools.__file__)],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    return env


class Helper:
    """A helper daemon a test started as its child (`proc`, with its files in `workdir`):
    stop() ends it (SIGTERM, then SIGKILL after 5 s) and removes the directory; with-able."""

    proc: subprocess.Popen
    workdir: str | None = None

    def stop(self) -> None:
        stop_proc(self.proc, signal.SIGTERM, 5)
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
