"""core/prefork on its own, with a toy worker: the hand-back of connections a leaving worker
was sent before the parent read that it leaves (the race test_submit_workers can only provoke
by chance)."""

import signal
import socket
import subprocess
import sys
import textwrap

from support_net import free_port

# The parent, run as its own process: two workers; the first to start (it takes a lock file)
# reads nothing for a second, so what the parent sends it meanwhile waits in its channel, then
# says it leaves and exits as soon as the parent has acknowledged. The others greet every
# connection with their PID.
PARENT = textwrap.dedent("""
    import asyncio, os, socket, sys
    from mailtools.core import prefork

    marker, port = sys.argv[1], sys.argv[2]

    def worker_main(channel):
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            leaving = True
        except FileExistsError:
            leaving = False

        async def main():
            loop = asyncio.get_running_loop()
            stop = asyncio.Event()
            released = getattr(channel, "released", asyncio.sleep)  # (a prefork without it)
            if leaving:
                await asyncio.sleep(1.0)
                print(f"leaving {os.getpid()}", flush=True)
            def on_connection(conn, index):
                conn.setblocking(True)
                conn.sendall(f"hello from {os.getpid()}\\n".encode())
                conn.close()
                channel.closed()
            channel.attach(loop, on_connection, stop.set)
            if leaving:
                channel.detach()
                await released()
                return 0
            loop.add_signal_handler(15, stop.set)
            await stop.wait()
            channel.detach()
            await released()
            return 0
        return asyncio.run(main())

    socks = prefork.bind(f"127.0.0.1:{port}")
    print("listening", flush=True)
    sys.exit(prefork.Supervisor([(s, 0) for s in socks], 2, worker_main,
                                log=lambda m: print(m, flush=True)).run())
""")


def test_a_connection_sent_to_a_worker_that_then_leaves_is_served_by_another(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "marker"), str(port)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "listening\n"
        clients = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(2)]
        # ties take turns: one of the two went to the leaving worker, unread in its channel
        greetings = []
        for c in clients:
            try:
                greetings.append(c.recv(100).decode())
            except socket.timeout:
                greetings.append("(none within 30 s)")
            c.close()
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    leaving = next(line.split()[1] for line in out.splitlines() if line.startswith("leaving "))
    assert all(g.startswith("hello from ") for g in greetings), (greetings, out)
    assert not any(g.split()[2] == leaving for g in greetings), (greetings, out)
    assert f"worker {leaving} is stopping on its own; starting another" in out
    assert f"worker {leaving} done (exit 0)" in out
    assert proc.returncode == 0
