"""Several worker processes behind one set of listening sockets, for a server that wants more
than one core's worth of Python (one process is one GIL). Used by `submit --listen`, and by
`serve` for its submission listeners (in a child process of its own, which it stops by closing
the pipe given as `stop_fd`); `relay --listen` can take it as it is.

The parent binds every listener, forks N workers and then only accepts: each new connection
is handed to the worker with the fewest open connections, as a file descriptor over a
socketpair (SCM_RIGHTS, one SOCK_SEQPACKET message per connection: one byte naming the
listener, plus the descriptor). A worker says "one of mine closed" with a one-byte message back.

Why the parent accepts, rather than every worker accepting on the shared socket or binding its
own with SO_REUSEPORT (see also Node's cluster module, which defaults to the same for the same
reason):
- balance: an asyncio worker woken on a shared socket accepts every connection waiting, so a
  burst of ten lands on one worker; SO_REUSEPORT spreads by a hash of the client's address,
  so ten connections split 7/3 or 8/2 about a third of the time. Long SMTP sessions make
  either imbalance last. Fewest-connections-first keeps the workers even.
- a worker killed with connections still in its own accept queue (SO_REUSEPORT) loses them;
  here they wait in the parent's one backlog while the worker is restarted.
- nothing to re-bind on restart, port 0 means one port, and no other process of the same user
  can join the port with SO_REUSEPORT and take a share of the connections.
The cost is one accept and one sendmsg per connection in the parent, not per message.

Signals to the parent: SIGTERM/SIGINT close the listeners and are forwarded as SIGTERM, the
workers drain (finish the command in hand, 421 to idle sessions) and the parent exits 0 once
every worker has exited (a second signal is forwarded as SIGQUIT: the workers then exit at
once). Workers ignore SIGINT and take any number of SIGTERMs as one: a terminal's Ctrl-C, or
systemd's SIGTERM to every process of the service, reaches the workers too, and would otherwise
count twice in every worker. SIGHUP runs the parent's `on_hup` (reload what a restarted worker
would start with) and is forwarded. A worker that dies is restarted at once, or after a growing
pause (1 s, doubling to 30 s) when it keeps dying within a second of its start; the others keep
serving meanwhile. A worker SIGTERMed on its own (not through the parent) says so over its
channel before it drains: once the parent has read that, it gives it no more connections,
starts another in its place at once and acknowledges. A connection the parent handed over in
the instant between (sent before it read the worker's message) comes back to it with its
descriptor and goes to another worker; the leaving one exits only after the acknowledgement, so
nothing sent to it is left unread. Workers are forks of the
parent: import what they run before run(), so a restarted one runs the same code as its
siblings even after the files changed on disk.

    def worker_main(channel: Channel) -> int: ...       # runs in the child, returns its exit code
    sup = Supervisor([(sock, 0), (tls_sock, 1)], 4, worker_main, log=print)
    sys.exit(sup.run())
"""

from __future__ import annotations

import errno
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from typing import Callable

from mailtools.core.listen import parse_listen

BACKLOG = 256
_CLOSED = b"c"  # worker -> parent: one connection ended
_DRAINING = b"d"  # worker -> parent: it stops (a SIGTERM of its own): no more connections for it
_RETURNED = b"r"  # worker -> parent, + listener index and the descriptor: one it got after "d"
_ACK = b"a"  # parent -> worker: "d" read, nothing more comes
_RESTART_PAUSE_MAX = 30.0
_ACCEPT_PAUSE = 0.1
_QUICK_DEATH = 1.0  # a worker that dies sooner than this after its start is restarted after a pause
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def usable_cpus() -> int:
    """The CPUs this process may run on (a container's or taskset's share, not the host's
    count, which os.cpu_count() gives): how many worker processes are worth forking."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def bind(spec: str) -> list[socket.socket]:
    """Listening sockets for one HOST:PORT (every address of a host name; both families for an
    empty host, as asyncio's create_server does). OSError when one cannot be bound."""
    host, port = parse_listen(spec)
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    out: list[socket.socket] = []
    seen = set()
    try:
        for family, kind, proto, _, addr in infos:
            if (family, addr[:2]) in seen:
                continue
            seen.add((family, addr[:2]))
            sock = socket.socket(family, kind, proto)
            out.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(out) > 1:  # one ephemeral port for every address
                addr = (addr[0], out[0].getsockname()[1], *addr[2:])
            sock.bind(addr)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in out:
            sock.close()
        raise
    return out


def hold_signals() -> None:
    """Block SIGTERM, SIGINT and SIGHUP until Supervisor.run() has its handlers: call it before
    binding, so a signal sent as soon as the port answers is handled, not fatal."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)


class Channel:
    """A worker's end of its socketpair: connections arrive here, closes go back."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        sock.setblocking(False)
        self._loop = None
        self._returning = False  # after detach(): hand every connection back to the parent
        self._released = None  # set when the parent has read detach()'s message (or is gone)

    def attach(self, loop, on_connection: Callable[[socket.socket, int], None],
               on_parent_gone: Callable[[], None]) -> None:
        """Call on_connection(sock, listener_index) for every connection the parent hands over,
        on_parent_gone() when the parent is gone (the channel reached its end). Call it once
        the loop has its SIGTERM and SIGHUP handlers: it unblocks the signals the worker was
        started with blocked (one sent meanwhile is delivered now, not lost). SIGINT is
        ignored in workers (the parent turns it into SIGTERM)."""
        import asyncio

        self._loop = loop
        self._released = asyncio.Event()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)

        def readable() -> None:
            while True:
                try:
                    data, fds, _flags, _addr = socket.recv_fds(self.sock, 16, 4)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    data, fds = b"", []
                if not data and not fds:
                    self._stop_reading()
                    if not self._returning:
                        on_parent_gone()
                    return
                if data == _ACK and not fds:
                    if self._returning:
                        self._stop_reading()
                        return
                    continue
                for k, fd in enumerate(fds):
                    conn = socket.socket(fileno=fd)
                    if k or not data:  # never more than one per message; refuse extras
                        conn.close()
                        self.closed()
                    elif self._returning:
                        self._hand_back(conn, data[0])
                    else:
                        conn.setblocking(False)
                        on_connection(conn, data[0])

        loop.add_reader(self.sock.fileno(), readable)

    def detach(self) -> None:
        """Stop taking connections: the parent is told, and gives new ones to the other workers
        (and starts a new worker once this one has exited, unless it is stopping itself).
        A connection the parent sent before it read that comes back to it unserved, to go to
        another worker: await released() before exiting."""
        try:
            self.sock.send(_DRAINING)
        except OSError:
            self._stop_reading()  # the parent is gone
            return
        self._returning = True

    async def released(self, timeout: float = 30.0) -> None:
        """Wait until the parent has read detach()'s message (or is gone), handing back what it
        sent meanwhile: after this, nothing more comes down the channel."""
        import asyncio

        if self._released is None or self._released.is_set():
            return
        try:
            await asyncio.wait_for(self._released.wait(), timeout)
        except asyncio.TimeoutError:
            self._stop_reading()

    def _hand_back(self, conn: socket.socket, index: int) -> None:
        try:
            socket.send_fds(self.sock, [_RETURNED + bytes((index,))], [conn.fileno()])
        except OSError:
            self.closed()  # the parent is gone or its end is full: the client sees a close
        finally:
            conn.close()

    def _stop_reading(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._loop = None
        if self._released is not None:
            self._released.set()

    def closed(self) -> None:
        """One connection this worker was given has ended."""
        try:
            self.sock.send(_CLOSED)
        except OSError:
            pass  # the parent is gone or busy: its count is only for balancing


class _Worker:
    __slots__ = ("pid", "chan", "started", "conns", "draining")

    def __init__(self, pid: int, chan: socket.socket):
        self.pid = pid
        self.chan = chan
        self.started = time.monotonic()
        self.conns = 0
        self.draining = False


class Supervisor:
    """The parent: `listeners` is a list of (listening socket, index given to the worker)."""

    def __init__(self, listeners: list[tuple[socket.socket, int]], workers: int,
                 worker_main: Callable[[Channel], int], *, log: Callable[[str], None],
                 on_hup: Callable[[], None] | None = None, stop_fd: int | None = None):
        if workers < 1:
            raise ValueError("at least one worker")
        self.listeners = listeners
        self.count = workers
        self.worker_main = worker_main
        self.log = log
        self.on_hup = on_hup
        self.stop_fd = stop_fd  # readable (its writer closed): drain, as the first SIGTERM
        self.workers: dict[int, _Worker] = {}
        self.stopping = 0  # stop signals received
        self._sel: selectors.BaseSelector | None = None
        self._wake_r = self._wake_w = -1
        self._signals: list[int] = []
        self._accepting = False
        self._rr = 0
        self._pause = 0.0  # the current restart pause after quick deaths
        self._restart_at: list[float] = []  # when the missing workers are due
        self._accept_pause = 0.0  # after EMFILE and the like: no accept() before this time
        self._returned: list[tuple[socket.socket, int]] = []  # handed back by leaving workers

    # --- the parent's loop -------------------------------------------------------------------
    def run(self) -> int:
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        if self.stop_fd is not None:
            self._sel.register(self.stop_fd, selectors.EVENT_READ, "stop")
        old_wakeup = signal.set_wakeup_fd(self._wake_w)
        old_handlers = {sig: signal.signal(sig, self._on_signal) for sig in (*_FORWARDED, signal.SIGCHLD)}
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)  # see hold_signals()
        try:
            for _ in range(self.count):
                self._spawn()
            self._set_accepting()
            while self.workers or not self.stopping:
                self._step()
            self.log("stopped")
            return 0
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            for w in self.workers.values():  # only when the loop itself failed
                _kill(w.pid, signal.SIGTERM)
            self._close_listeners()
            for conn, _ in self._returned:
                conn.close()
            self._sel.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _step(self) -> None:
        due = [*self._restart_at] if not self.stopping else []
        if not self._accepting and self._accept_pause > time.monotonic():
            due.append(self._accept_pause)
        timeout = max(0.0, min(due) - time.monotonic()) if due else None
        ready = []  # listeners: accepted last, once every worker's news is in
        for key, _ in self._sel.select(timeout):
            if key.data == "wake":
                try:
                    while os.read(self._wake_r, 512):
                        pass
                except (BlockingIOError, InterruptedError):
                    pass
            elif key.data == "stop":
                # The process that started us stops (or is gone): one drain, however many
                # SIGTERMs also come (systemd signals every process of the service).
                self._sel.unregister(self.stop_fd)
                if not self.stopping:
                    self._signals.append(signal.SIGTERM)
            elif isinstance(key.data, _Worker):
                self._from_worker(key.data)
            else:
                ready.append(key)
        signals, self._signals = self._signals, []
        for sig in signals:
            self._handle_signal(sig)
        self._reap()
        now = time.monotonic()
        while self._restart_at and not self.stopping and min(self._restart_at) <= now:
            self._restart_at.remove(min(self._restart_at))
            self._spawn()
        self._set_accepting()
        if self._returned:
            self._redispatch()
        # Connections after the rest: a worker that said it is leaving in this same wake-up
        # gets none (one sent to it would wait unread in its channel until it exited), its
        # replacement is started, and after a stop they stay for the listeners' close.
        if self._accepting:
            for key in ready:
                self._accept(key.fileobj, key.data)

    def _on_signal(self, sig, frame) -> None:
        self._signals.append(sig)  # handled by the loop (the wakeup fd ends its select)

    def _handle_signal(self, sig: int) -> None:
        if sig == signal.SIGCHLD:
            return  # _reap() runs after every step
        if sig == signal.SIGHUP:
            if self.stopping:
                return
            if self.on_hup is not None:
                try:
                    self.on_hup()
                except Exception as exc:  # noqa: BLE001 - keep running with what we had
                    self.log(f"warning: reload failed: {exc}")
        else:
            self.stopping += 1
            if self.stopping == 1:
                self.log(f"{signal.Signals(sig).name}: draining {len(self.workers)} worker(s)")
                self._restart_at.clear()
                self._close_listeners()
        # The first stop is a SIGTERM (drain), a second one SIGQUIT (exit now): a worker may get
        # its own SIGTERM too (systemd signals every process of the service), and two SIGTERMs
        # must still mean one drain.
        fwd = signal.SIGHUP if sig == signal.SIGHUP else signal.SIGTERM if self.stopping < 2 else signal.SIGQUIT
        for w in self.workers.values():
            _kill(w.pid, fwd)

    # --- connections -----------------------------------------------------------------------
    def _set_accepting(self) -> None:
        """Watch the listeners only while some worker can take a connection: otherwise new
        connections wait in the kernel's backlog."""
        want = (any(not w.draining for w in self.workers.values()) and not self.stopping
                and time.monotonic() >= self._accept_pause)
        if want == self._accepting:
            return
        for sock, index in self.listeners:
            if want:
                self._sel.register(sock, selectors.EVENT_READ, index)
            else:
                self._sel.unregister(sock)
        self._accepting = want

    def _accept(self, sock: socket.socket, index: int) -> None:
        for _ in range(64):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # The listener stays readable: pause rather than spin on it.
                    self.log(f"warning: accept: {exc.strerror}; pausing for {_ACCEPT_PAUSE} s")
                    self._accept_pause = time.monotonic() + _ACCEPT_PAUSE
                    return
                continue  # ECONNABORTED and the like: that client is gone
            try:
                self._dispatch(conn, index)
            finally:
                conn.close()  # the worker has its own descriptor now

    def _dispatch(self, conn: socket.socket, index: int) -> None:
        order = sorted((w for w in self.workers.values() if not w.draining), key=lambda w: w.conns)
        if len(order) > 1 and order[0].conns == order[1].conns:  # ties: take turns
            least = [w for w in order if w.conns == order[0].conns]
            self._rr += 1
            k = self._rr % len(least)
            order = least[k:] + least[:k] + order[len(least):]
        for w in order:
            try:
                socket.send_fds(w.chan, [bytes((index,))], [conn.fileno()])
            except OSError:
                continue  # dead or stuck: the next one
            w.conns += 1
            return
        # nobody could take it: the client sees the connection close and tries again

    def _from_worker(self, w: _Worker) -> None:
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(w.chan, 16, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, fds = b"", []
            if not data and not fds:  # the worker is gone; _reap() restarts it
                try:
                    self._sel.unregister(w.chan)
                except (KeyError, ValueError):
                    pass  # seen already
                return
            if data[:1] == _RETURNED and fds:  # sent before it said it leaves: to another one
                if w.conns > 0:
                    w.conns -= 1
                conn = socket.socket(fileno=fds.pop())
                if len(data) == 2:
                    self._returned.append((conn, data[1]))
                else:
                    conn.close()
            elif data == _CLOSED and w.conns > 0:
                w.conns -= 1
            elif data == _DRAINING and not w.draining:
                w.draining = True
                try:
                    w.chan.send(_ACK)  # after every connection sent to it: they come back
                except OSError:
                    pass  # gone: _reap() sees it
                if not self.stopping:  # stopped on its own: a new one takes its place now
                    self.log(f"warning: worker {w.pid} is stopping on its own; starting another")
                    self._restart_at.append(time.monotonic())
            for fd in fds:
                os.close(fd)

    def _redispatch(self) -> None:
        """Connections a leaving worker handed back: to the others (its replacement is started
        by now), or closed when none is left (stopping)."""
        returned, self._returned = self._returned, []
        for conn, index in returned:
            try:
                if not self.stopping:
                    self._dispatch(conn, index)
            finally:
                conn.close()

    # --- workers ---------------------------------------------------------------------------
    def _spawn(self) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = fork_child(lambda: self._child(theirs, mine), self.log, "worker")
        theirs.close()
        mine.setblocking(False)
        w = _Worker(pid, mine)
        self.workers[pid] = w
        self._sel.register(mine, selectors.EVENT_READ, w)
        self.log(f"worker {pid} started")

    def _child(self, chan: socket.socket, parent_end: socket.socket) -> int:
        signal.set_wakeup_fd(-1)
        for sig in (*_FORWARDED, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_IGN if sig == signal.SIGINT else signal.SIG_DFL)
        # Nothing of the parent's: the listeners (the parent accepts), the other workers'
        # channels, connections handed back, the selector and its wakeup pipe.
        # The selector's epoll instance is shared with the parent: close it first, and
        # never unregister from it here (that would unregister in the parent too).
        self._sel.close()
        parent_end.close()
        for w in self.workers.values():
            w.chan.close()
        for sock, _ in self.listeners:
            sock.close()
        # connections a leaving worker handed back, read in the wake-up that starts this one:
        # a copy kept here would hold each open (no end for its client) after it was served
        for conn, _ in self._returned:
            conn.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        if self.stop_fd is not None:
            os.close(self.stop_fd)
        # SIGTERM/SIGINT/SIGHUP stay blocked until worker_main has its handlers and calls
        # Channel.attach()
        return self.worker_main(Channel(chan))

    def _reap(self) -> None:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            w = self.workers.pop(pid, None)
            if w is None:
                continue
            self._from_worker(w)  # what it sent last (a connection handed back) is still read
            try:
                self._sel.unregister(w.chan)
            except (KeyError, ValueError):
                pass
            w.chan.close()
            how = (f"killed by {signal.Signals(-os.waitstatus_to_exitcode(status)).name}"
                   if os.WIFSIGNALED(status) else f"exit {os.waitstatus_to_exitcode(status)}")
            if self.stopping or w.draining:  # (a drained one was replaced when it said so)
                self.log(f"worker {pid} done ({how})")
                continue
            lived = time.monotonic() - w.started
            self._pause = 0.0 if lived >= _QUICK_DEATH else min(max(self._pause * 2, 1.0), _RESTART_PAUSE_MAX)
            self.log(f"warning: worker {pid} {how}; restarting it"
                     + (f" in {self._pause:.0f} s" if self._pause else ""))
            self._restart_at.append(time.monotonic() + self._pause)

    def _close_listeners(self) -> None:
        if self._accepting and self._sel is not None:
            for sock, _ in self.listeners:
                self._sel.unregister(sock)
            self._accepting = False
        for sock, _ in self.listeners:
            sock.close()


def fork_child(body: Callable[[], int], log: Callable[[str], None], what: str) -> int:
    """Fork. The child runs body() and exits with what it returns (70, EX_SOFTWARE, when it
    raises; a SystemExit's code), its stdout and stderr flushed; the parent gets the child's
    PID. SIGTERM, SIGINT and SIGHUP are blocked across the fork, and stay blocked in the child
    until it unblocks them with its own handlers in place: a signal sent meanwhile waits, rather
    than being lost to the parent's handler (and the parent waiting forever for that child)."""
    sys.stdout.flush()
    sys.stderr.flush()
    signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
    try:
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                code = body()
            except BaseException as exc:  # noqa: BLE001 - whatever happens, the child exits here
                if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    log(f"warning: {what} failed: {type(exc).__name__}: {exc}")
                    traceback.print_exc()
                elif isinstance(exc, SystemExit) and isinstance(exc.code, int):
                    code = exc.code
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
    return pid


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
