"""core/prefork: a worker started while the parent holds connections a leaving worker handed
back (read in the same wake-up as its "leaving", which starts the replacement) must not keep
copies of them. Before, the new worker inherited those descriptors and kept them open for its
whole life: the worker that served such a connection closed it, yet the client never saw the
connection end (no FIN after the server's last reply, a 421 or a timeout).

The parent is stopped (SIGSTOP) while the leaving worker says it leaves and hands its
connection back, so the parent reads both in one wake-up, as a busy parent does."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading

from support_net import free_port, wait_for

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
            if leaving:  # reads nothing until told: what the parent sends it waits in the channel
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
                while True:  # until everything in the channel went back to the parent
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


def test_a_connection_handed_back_is_closed_for_the_client_once_served(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    port = free_port()
    go = tmp_path / "go"
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "marker"), str(go), str(port)],
                            stdout=subprocess.PIPE, text=True)
    clients = []
    try:
        lines = []  # the parent's and workers' output, read by a thread (a wait can end)
        threading.Thread(target=lambda: lines.extend(line.strip() for line in proc.stdout),
                         daemon=True).start()

        def read_until(pred):
            wait_for(lambda: any(pred(line) for line in lines), what=f"a line in {lines}")

        read_until(lambda line: line == "listening")
        # one connection per worker (the least busy one takes the next)
        clients = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(2)]
        read_until(lambda line: line.startswith("waiting "))
        greeted = []
        for c in clients:  # the other worker's client is greeted; the leaving one's is not yet
            c.setblocking(False)
        wait_for(lambda: _try_greeting(clients, greeted), what="the other worker's greeting")
        (waiting,) = [c for c in clients if c not in greeted]
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            go.touch()
            read_until(lambda line: line == "handed back")
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        waiting.setblocking(True)
        waiting.settimeout(10)
        data = b""
        while not data.endswith(b"\n"):
            chunk = waiting.recv(100)
            assert chunk, data
            data += chunk
        assert data.startswith(b"hello from ")
        try:
            end = waiting.recv(100)
        except socket.timeout:
            end = "(still open after 10 s)"
        assert end == b"", end  # served and closed: the client sees the end
    finally:
        for c in clients:
            c.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


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
