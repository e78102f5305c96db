"""core/prefork on its own, with a toy worker: the hand-back of connections a leaving worker was
sent before the parent read that it leaves (the race test_submit_workers can only provoke by
chance), and what the parent does with them."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading

from support_net import free_port, wait_for

# The parent, run as its own process, with two workers. The first to start (it takes a lock
# file) reads nothing until the test creates the file `go`, so what the parent sends it
# meanwhile waits in its channel; then it says it leaves, waits until its channel is empty
# (everything in it went back to the parent), and exits once the parent has acknowledged. The
# other greets every connection with its PID and closes it.
PARENT = textwrap.dedent("""
    import asyncio, os, socket, sys
    from mailtools.core import prefork

    marker, go, port = sys.argv[1], sys.argv[2], sys.argv[3]

    def worker_main(channel):
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            leaving = True
        except FileExistsError:
            leaving = False

        async def main():
            loop = asyncio.get_running_loop()
            stop = asyncio.Event()
            if leaving:
                print(f"waiting {os.getpid()}", flush=True)
                while not os.path.exists(go):
                    await asyncio.sleep(0.02)
            def on_connection(conn, index):
                conn.setblocking(True)
                conn.sendall(f"hello from {os.getpid()}\\n".encode())
                conn.close()
                channel.closed()
            channel.attach(loop, on_connection, stop.set)
            if leaving:
                channel.detach()
                while True:
                    try:
                        channel.sock.recv(16, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        break
                    await asyncio.sleep(0.01)
                print("handed back", flush=True)
                await channel.released()
                return 0
            loop.add_signal_handler(15, stop.set)
            await stop.wait()
            channel.detach()
            await channel.released()
            return 0
        return asyncio.run(main())

    socks = prefork.bind(f"127.0.0.1:{port}")
    print("listening", flush=True)
    sys.exit(prefork.Supervisor([(s, 0) for s in socks], 2, worker_main,
                                log=lambda m: print(m, flush=True)).run())
""")


class ToyParent:
    """The parent above, its output read by a thread (a wait on it can end), and two clients:
    one greeted by the staying worker, `waiting` unread in the leaving worker's channel."""

    def __init__(self, tmp_path):
        script = tmp_path / "parent.py"
        script.write_text(PARENT)
        self.port = free_port()
        self.go = tmp_path / "go"
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "marker"), str(self.go), str(self.port)],
            stdout=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(line.strip() for line in self.proc.stdout),
                         daemon=True).start()
        self.clients = []
        self.read_until(lambda line: line == "listening")
        # one connection per worker (the least busy one takes the next)
        self.clients = [socket.create_connection(("127.0.0.1", self.port), timeout=30) for _ in range(2)]
        self.read_until(lambda line: line.startswith("waiting "))
        self.leaving = next(line.split()[1] for line in self.lines if line.startswith("waiting "))
        greeted = []
        for c in self.clients:
            c.setblocking(False)
        wait_for(lambda: _try_greeting(self.clients, greeted), what="the staying worker's greeting")
        (self.waiting,) = [c for c in self.clients if c not in greeted]
        self.waiting.setblocking(True)
        self.waiting.settimeout(30)

    def read_until(self, pred) -> None:
        wait_for(lambda: any(pred(line) for line in self.lines), what=f"a line in {self.lines}")

    def greeting(self) -> bytes:
        data = b""
        while not data.endswith(b"\n"):
            chunk = self.waiting.recv(100)
            assert chunk, data
            data += chunk
        return data

    def stop(self) -> str:
        for c in self.clients:
            c.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return "\n".join(self.lines)


def _try_greeting(clients, greeted):
    for c in clients:
        if c in greeted:
            continue
        try:
            if c.recv(100).startswith(b"hello from "):
                greeted.append(c)
        except BlockingIOError:
            pass
    return greeted


def test_a_connection_sent_to_a_worker_that_then_leaves_is_served_by_another(tmp_path):
    p = ToyParent(tmp_path)
    try:
        p.go.touch()
        greeting = p.greeting().decode()
        p.read_until(lambda line: line == f"worker {p.leaving} done (exit 0)")
    finally:
        out = p.stop()
    assert greeting.startswith("hello from ") and greeting.split()[2] != p.leaving, (greeting, out)
    assert f"worker {p.leaving} is stopping on its own; starting another" in out
    assert p.proc.returncode == 0


def test_a_connection_handed_back_is_closed_for_the_client_once_served(tmp_path):
    # The parent reads the leaving worker's "leaving" and its handed-back connection in one
    # wake-up (it is stopped while both come, as a busy parent is), so the replacement worker
    # starts while the parent holds that connection: it must not keep a copy of it, or the
    # client never sees the end after the other worker served and closed it.
    p = ToyParent(tmp_path)
    try:
        os.kill(p.proc.pid, signal.SIGSTOP)
        try:
            p.go.touch()
            p.read_until(lambda line: line == "handed back")
        finally:
            os.kill(p.proc.pid, signal.SIGCONT)
        assert p.greeting().startswith(b"hello from ")
        p.waiting.settimeout(10)
        try:
            end = p.waiting.recv(100)
        except socket.timeout:
            end = "(still open after 10 s)"
        assert end == b"", end  # served and closed: the client sees the end
    finally:
        p.stop()
